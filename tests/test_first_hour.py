"""The first hour of a new user: --help, instant config errors, no key accepted and ignored, the last step
logged."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.cli import COMMANDS_WITH_HELP, main
from tuneforge.config import args as arg_groups
from tuneforge.config.parser import build_args, read_sources
from tuneforge.errors import ConfigError

SRC = Path(__file__).parents[1] / "src" / "tuneforge"


@pytest.mark.parametrize("command", COMMANDS_WITH_HELP)
def test_every_command_answers_help(command, capsys):
    for flag in ("--help", "-h"):
        assert main([command, flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: tuneforge {command}") and "examples:" in out
        if command not in ("env", "version"):
            assert "Config reference" in out and re.search(r"^  \w+ +\S+ +\S", out, re.M)


def test_config_errors_arrive_without_torch(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"forge_identity": {"file_name": "x.json"},
                                                                     "alpaca_en_demo": {"file_name": "x.json"}}))
    (tmp_path / "data" / "x.json").write_text("[]")
    probe = ("import sys; from tuneforge.cli import main; code = main(sys.argv[1:]); "
             "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(code)")
    cases = [(["learning_rat=1e-4"], "did you mean 'learning_rate'"),
             (["dataset=alpaca_en_dem"], "known names: alpaca_en_demo"),
             (["dataset=missing/file.json"], "not found"),
             (["cutoff_len=1"], "cutoff_len"),
             (["finetuning_type=qlora"], "finetuning_type"),
             (["loraplus_lr_ratio=16"], "LoRA+")]
    for extra, words in cases:
        argv = ["train", "model_name_or_path=m", "dataset=forge_identity", f"dataset_dir={tmp_path / 'data'}",
                f"output_dir={tmp_path / 'out'}", *extra]
        run = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and words in run.stderr, (extra, run.stderr)
        assert run.stdout.strip().endswith("NO-TORCH"), extra
        assert len(run.stderr.strip().splitlines()) == 1


def test_unknown_dataset_suggests_the_closest_names_not_all_of_them(tmp_path):
    names = {f"dataset_{i}": {"file_name": "x.json"} for i in range(100)} | {"alpaca_en_demo": {"file_name": "x.json"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(names))
    (tmp_path / "x.json").write_text("[]")
    from tuneforge.data.registry import resolve_specs
    from tuneforge.errors import DataError

    with pytest.raises(DataError) as caught:
        resolve_specs("alpaca_en", str(tmp_path))
    message = str(caught.value)
    assert "did you mean 'alpaca_en_demo'" in message and "dataset_57" not in message and "101 names there" in message


def _attribute_read(name: str) -> bool:
    pattern = re.compile(rf"\.{name}\b|[\"']{name}[\"']")
    skip = {"config/args.py", "config/reference.py", "help.py", "config/training_fields.json"}
    for path in SRC.rglob("*.py"):
        if str(path.relative_to(SRC)) not in skip and pattern.search(path.read_text(encoding="utf-8")):
            return True
    return False


def test_every_key_of_the_reference_is_read_or_refused():
    from tuneforge.config.unread_keys import REFUSED, WARNED

    unread = []
    for cls in (arg_groups.ModelArgs, arg_groups.DataArgs, arg_groups.FinetuneArgs, arg_groups.PreferenceArgs,
                arg_groups.RLArgs, arg_groups.GenerateArgs, arg_groups.ServeArgs, arg_groups.ExportArgs):
        for field in dataclasses.fields(cls):
            if field.name not in REFUSED and field.name not in WARNED and not _attribute_read(field.name):
                unread.append(field.name)
    assert unread == []


@pytest.mark.parametrize("setting, words", [
    ("buffer_size=100", "shuffle"), ("tool_format=qwen", "own family"), ("eval_on_each_dataset=true", "one loss"),
    ("loraplus_lr_ratio=16", "LoRA+"), ("rope_scaling=linear", "config.json"), ("infer_backend=vllm", "huggingface"),
    ("ignore_pad_token_for_loss=false", "never trained"), ("use_llama_pro=true", "does not have"),
])
def test_keys_tuneforge_does_not_act_on_are_refused(setting, words):
    with pytest.raises(ConfigError, match=words):
        build_args(read_sources(["model_name_or_path=m", setting]), with_training=False)
    build_args(read_sources(["model_name_or_path=m", "infer_backend=huggingface", "use_llama_pro=false",
                             "ignore_pad_token_for_loss=true"]), with_training=False)


def test_ignored_and_meaningless_keys_are_warned_about(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        build_args(read_sources(["model_name_or_path=m", "print_param_status=true", "low_cpu_mem_usage=false"]),
                   with_training=False)
    assert "print_param_status" in caplog.text and "low_cpu_mem_usage" in caplog.text


def test_stored_training_keys_match_the_installed_transformers():
    import transformers

    from tuneforge.config import training_fields

    stored = json.loads(training_fields.TABLE.read_text())
    if stored["transformers"] != transformers.__version__:
        pytest.skip(f"table made with transformers {stored['transformers']}; regenerate with "
                    "`python -m tuneforge.config.training_fields --update`")
    assert stored["fields"] == training_fields.installed_fields()


def test_the_last_step_is_logged_and_plotted_when_logging_steps_exceeds_the_run(tiny_model_dir, tmp_path):
    from tests.train.test_train_e2e import base_args
    from tuneforge.train.runner import run_train

    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"instruction": "Who are you?", "output": "I am Forge."}] * 8))
    out = tmp_path / "run"
    run_train(base_args(tiny_model_dir, str(data), str(out), max_steps=3, logging_steps=10, plot_loss=True))
    records = [json.loads(line) for line in open(out / "trainer_log.jsonl")]
    assert [r["step"] for r in records if "loss" in r] == [3]
    assert os.path.exists(out / "training_loss.png")
