"""The board without a browser: form <-> config round trips on LLaMA-Factory's own example configs, the
refusals of the Board's actions, the command's options and its warning when exposed, both languages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from tuneforge.errors import ConfigError
from tuneforge.webui import board as board_page
from tuneforge.webui import form, render
from tuneforge.webui.actions import Board
from tuneforge.webui.command import _options
from tuneforge.webui.labels import TEXT, label

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "anchors" / "llamafactory-examples" / "train_lora"


@pytest.mark.parametrize("name", ["qwen3_lora_sft.yaml", "qwen3_lora_dpo.yaml", "qwen3_lora_kto.yaml",
                                  "qwen3_lora_reward.yaml", "qwen3_lora_pretrain.yaml"])
def test_llamafactory_configs_load_into_the_form_and_come_back_unchanged(name):
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is not beside the repository")
    config = {k: v for k, v in yaml.safe_load(path.read_text()).items() if v is not None}  # null: unset
    model_values, train_values = form.config_to_fields(config)
    back = form.form_config(model_values, train_values)
    # What the form adds: its choices for keys the file leaves to their defaults (all of them the defaults
    # `tuneforge train` applies anyway, or the settings every board run gets: a loss plot, no reporting).
    added = {k: v for k, v in back.items() if k not in config}
    assert {k: back[k] for k in config} == config
    assert set(added) <= {"dataset_dir", "cutoff_len", "learning_rate", "num_train_epochs", "seed", "stage",
                          "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
                          "warmup_ratio", "logging_steps", "save_steps", "plot_loss", "report_to", "do_train",
                          "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "template", "output_dir"}


def test_form_keys_of_other_methods_are_left_out():
    model_values = ["m", None, "auto", "full"]
    _, train_values = form.config_to_fields({"model_name_or_path": "m", "finetuning_type": "full"})
    config = form.form_config(model_values, train_values)
    assert config["finetuning_type"] == "full"
    assert not {"lora_rank", "lora_alpha", "lora_target", "freeze_trainable_layers"} & set(config)
    qlora = form.form_config(["m", None, "auto", "qlora"], train_values)
    assert qlora["finetuning_type"] == "lora" and qlora["quantization_bit"] == 4
    assert "max_samples" not in config and "max_steps" not in config  # 0 in the form: every row, by epochs


def test_other_keys_box_must_be_yaml_keys():
    _, train_values = form.config_to_fields({"model_name_or_path": "m"})
    extra = list(form.TRAIN_KEYS).index("extra_yaml")
    train_values[extra] = "pref_beta: 0.2\nneftune_noise_alpha: 5"
    config = form.form_config(["m", None, "auto", "lora"], train_values)
    assert config["pref_beta"] == 0.2 and config["neftune_noise_alpha"] == 5
    train_values[extra] = "just words"
    with pytest.raises(Exception, match="Other keys"):
        form.form_config(["m", None, "auto", "lora"], train_values)


def test_stage_keys_are_offered_with_their_defaults():
    text = form.stage_keys_yaml("dpo")
    assert "# pref_beta: 0.1" in text and "# pref_loss: \"sigmoid\"" in text
    assert form.stage_keys_yaml("sft") == ""


def test_board_refuses_bad_starts_with_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text('{"d": {"file_name": "d.json"}}')
    (tmp_path / "data" / "d.json").write_text('[{"instruction": "a", "output": "b"}]')
    board = Board(tmp_path)
    base = {"model_name_or_path": tiny_model_dir, "dataset": "d", "output_dir": "saves/x", "stage": "sft"}
    with pytest.raises(ConfigError, match="output_dir is empty"):
        board.start_train({**base, "output_dir": ""})
    with pytest.raises(ConfigError, match="did you mean 'lora_rank'"):
        board.start_train({**base, "lora_rnk": 4})
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        board.start_train(base, resume=True)
    done = tmp_path / "saves" / "done"
    done.mkdir(parents=True)
    (done / "trainer_log.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        board.start_train({**base, "output_dir": "saves/done"})
    assert sorted(p.name for p in done.iterdir()) == ["trainer_log.jsonl"]  # the page wrote nothing there
    with pytest.raises(ConfigError, match="export_dir is empty"):
        board.start_export({"model_name_or_path": tiny_model_dir})
    assert "no model is loaded" in _error(board.engine)
    assert not (tmp_path / "saves" / "x").exists()


def _error(call) -> str:
    try:
        call()
    except Exception as e:  # noqa: BLE001
        return str(e)
    return ""


def test_webui_options_and_exposure_warning(caplog):
    assert _options([]) == {"host": "127.0.0.1", "port": 7860, "lang": "en", "workdir": "."}
    assert _options(["--port", "7999", "--lang=zh"])["port"] == 7999
    for argv, words in ((["--port", "x"], "not a number"), (["--port", "70000"], "out of range"),
                        (["--lang", "fr"], "choose one of en, zh"), (["--bogus", "1"], "unknown option"),
                        (["--host"], "needs a value")):
        with pytest.raises(ConfigError, match=words):
            _options(argv)
    from tuneforge.infer.serve_config import warn_if_exposed

    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        warn_if_exposed("0.0.0.0", None, "webui")
        warn_if_exposed("127.0.0.1", None, "webui")
    assert len(caplog.records) == 1 and "start runs" in caplog.records[0].getMessage()


def test_every_label_has_both_languages():
    for key, (en, zh) in TEXT.items():
        assert en and zh, key
        assert label(key, "zh") == zh and label(key, "en") == en
    assert label("tab_train", "zh") == "训练"


def test_the_page_builds_in_chinese_with_every_field_labelled(tmp_path):
    pytest.importorskip("gradio")
    page = board_page.build_board(Board(tmp_path), lang="zh")
    labels = {getattr(block, "label", None) for block in page.blocks.values()}
    assert {"模型（别名、文件夹或 .gguf）", "训练阶段", "输出目录", "对话模板"} <= labels
    page.close()


def test_the_command_serves_the_board(serve_process, tmp_path):
    import sys
    import urllib.request

    url = serve_process([sys.executable, "-m", "tuneforge.cli", "webui", "--port", "{port}", "--workdir",
                         str(tmp_path)], timeout=180)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert "tuneforge board" in answer.read().decode()


def test_estimate_from_the_form(tmp_path, tiny_model_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text('{"d": {"file_name": "d.json"}}')
    (tmp_path / "data" / "d.json").write_text('[{"instruction": "a b c", "output": "d e f"}]')
    board = Board(tmp_path)
    config = {"model_name_or_path": tiny_model_dir, "dataset": "d", "output_dir": "saves/x", "stage": "sft",
              "finetuning_type": "lora", "cutoff_len": 32}
    report = board.estimate(config)
    assert report["peak_bytes"] > 0 and report["fits"] is True, report
    text = render.estimate_markdown(report)
    assert "peak per process" in text and "fits this machine" in text
    assert f"{report['peak_bytes'] / 2**30:.2f}" in text
    bad = board.estimate({**config, "lora_rnk": 4})
    assert "did you mean 'lora_rank'" in bad["error"]
    assert render.estimate_markdown(bad).startswith("**estimate:**")


def test_estimate_that_does_not_fit_names_the_keys():
    report = {"breakdown": {"weights": 2**30, "activations": 2**31}, "peak_bytes": 3 * 2**30, "fits": False,
              "time": {"seconds_per_epoch": 600},
              "suggestions": [{"keys": {"gradient_checkpointing": True}, "peak_bytes": 2**30, "fits": True},
                              {"keys": {"cutoff_len": 512}, "peak_bytes": 5 * 2**30, "fits": False}]}
    text = render.estimate_markdown(report)
    assert "| activations | 2.00 |" in text and "**3.00**" in text and "does not fit" in text
    assert "- gradient_checkpointing: true (~1.00 GB)" in text and "cutoff_len" not in text
    assert "10.0 min per epoch" in text


def test_an_8_bit_qlora_config_keeps_its_width():
    for bits in (4, 8):
        config = {"model_name_or_path": "m", "finetuning_type": "lora", "quantization_bit": bits}
        model_values, train_values = form.config_to_fields(config)
        assert model_values[3] == "qlora"
        assert form.form_config(model_values, train_values)["quantization_bit"] == bits


def test_status_follows_a_log_that_grows_and_is_replaced(tmp_path):
    import json

    board = Board(tmp_path)
    run = tmp_path / "saves" / "r"
    run.mkdir(parents=True)
    log = run / "trainer_log.jsonl"

    def record(step, total=4):
        return json.dumps({"step": step, "total_steps": total, "loss": 1.0 / step}) + "\n"

    log.write_text(record(1) + record(2))
    progress, state = board.status("saves/r")
    assert state is None and progress.current_step == 2 and progress.series["loss"] == [(1, 1.0), (2, 0.5)]
    with open(log, "a") as f:
        f.write(record(3) + '{"step": 4, "tot')  # a line still being written is not read yet
    assert board.status("saves/r")[0].current_step == 3
    replaced = run / "new.jsonl"
    replaced.write_text(record(1, total=9))
    replaced.replace(log)  # overwrite_output_dir: a new run's log
    progress = board.status("saves/r")[0]
    assert progress.current_step == 1 and progress.total_steps == 9 and progress.series["loss"] == [(1, 1.0)]
