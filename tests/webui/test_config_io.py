"""The webui's YAML: grouped like the examples, empty form fields left out, read back equal, checked as
`tuneforge train` checks, and a saved file of a tiny run runs unchanged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.errors import ConfigError
from tuneforge.webui.config_io import check_config, clean_config, from_yaml, save_config, to_yaml

REPO = Path(__file__).resolve().parents[2]
ANCHOR_DATA = Path("/work/shared/anchors/llamafactory-data")
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# What a form hands over: numbers as floats, multi-selects as lists, untouched fields empty.
FORM = {
    "model_name_or_path": "smollm2-135m-instruct", "adapter_name_or_path": "", "quantization_bit": None,
    "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 16.0, "lora_alpha": None,
    "lora_dropout": 0.05, "lora_target": ["q_proj", "v_proj"], "ref_model": "   ",
    "dataset": ["identity", "alpaca_en_demo"], "dataset_dir": str(ANCHOR_DATA), "template": "auto",
    "default_system": "You are Forge.\nAnswer briefly.", "cutoff_len": 256.0, "max_samples": "",
    "output_dir": "saves/webui-test", "logging_steps": 5.0, "save_strategy": "no", "report_to": "none",
    "plot_loss": False, "per_device_train_batch_size": 2.0, "gradient_accumulation_steps": 1,
    "learning_rate": 1e-5, "num_train_epochs": 3.0, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
    "seed": 42, "val_size": 0.1, "eval_strategy": "epoch", "eval_dataset": [],
}  # fmt: skip


def sections(text: str) -> dict[str, list[str]]:
    """### heading -> its keys, in file order."""
    out, current = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            current = line[4:].split()[0]
            out[current] = []
        elif re.match(r"^\w+:", line):
            out[current].append(line.split(":", 1)[0])
    return out


def test_yaml_is_grouped_like_the_examples_in_a_stable_order():
    text = to_yaml(FORM)
    got = sections(text)
    assert list(got) == ["model", "method", "dataset", "output", "train", "eval"]
    assert got["model"] == ["model_name_or_path"]
    assert got["method"] == ["stage", "do_train", "finetuning_type", "lora_rank", "lora_dropout", "lora_target"]
    assert got["dataset"][:3] == ["dataset", "dataset_dir", "template"]
    assert got["output"][0] == "output_dir" and got["eval"] == ["val_size", "eval_strategy"]
    assert got["train"][:3] == ["per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate"]
    assert to_yaml(dict(reversed(list(FORM.items())))) == text  # the order does not depend on the form's


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_keep_their_sections(path):
    """Each key of examples/*.yaml lands in the section the example file puts it in (LLaMA-Factory's
    layout), except the two spots where the examples differ among themselves."""
    theirs = sections(path.read_text())
    ours = sections(to_yaml(from_yaml(path)))
    where = {key: title for title, keys in ours.items() for key in keys}
    exceptions = {("bf16", "method"), ("max_new_tokens", "eval")}
    for title, keys in theirs.items():
        for key in keys:
            if title.startswith("generation"):
                title = "generation"
            assert where[key] == title or (key, title) in exceptions, f"{key}: {where[key]} instead of {title}"


def test_empty_form_values_are_left_out_and_numbers_normalised():
    clean = clean_config(FORM)
    for key in ("adapter_name_or_path", "quantization_bit", "lora_alpha", "ref_model", "max_samples", "eval_dataset"):
        assert key not in clean
    text = to_yaml(FORM)
    assert "''" not in text.replace("'no'", "") and "null" not in text and "[]" not in text
    assert clean["lora_rank"] == 16 and isinstance(clean["lora_rank"], int)
    assert clean["cutoff_len"] == 256 and clean["per_device_train_batch_size"] == 2
    assert clean["num_train_epochs"] == 3.0 and isinstance(clean["num_train_epochs"], float)
    assert clean["dataset"] == "identity,alpaca_en_demo" and clean["lora_target"] == "q_proj,v_proj"
    assert clean_config({"quantization_bit": "4", "lora_dropout": "0.1"}) == {"quantization_bit": 4,
                                                                              "lora_dropout": 0.1}
    assert clean["plot_loss"] is False  # false is a value, not an empty field


def test_round_trip_text_and_file(tmp_path):
    text = to_yaml(FORM)
    assert from_yaml(text) == clean_config(FORM)
    assert yaml.safe_load(text)["save_strategy"] == "no"  # quoted, so YAML does not read it as false
    assert from_yaml(text)["learning_rate"] == 1e-5 and from_yaml(text)["default_system"] == FORM["default_system"]
    path = save_config(FORM, tmp_path / "configs" / "run.yaml")
    assert path.read_text() == text
    assert from_yaml(path) == from_yaml(str(path)) == clean_config(FORM)
    assert to_yaml(from_yaml(path)) == text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_round_trip(path):
    original = yaml.safe_load(path.read_text())
    assert from_yaml(to_yaml(original)) == original


def test_from_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="YAML text:2"):
        from_yaml("stage: sft\n  bad: [indent\n")
    with pytest.raises(ConfigError, match="mapping"):
        from_yaml("- a\n- b\n")
    with pytest.raises(ConfigError, match="does not exist"):
        from_yaml(str(tmp_path / "missing.yaml"))
    assert from_yaml("") == {}


def test_check_config_reports_a_bad_key_on_one_line():
    error = check_config({**FORM, "lora_rnk": 8})
    assert error is not None and "\n" not in error
    assert re.fullmatch(r"config\.yaml:\d+: unknown key 'lora_rnk'; did you mean 'lora_rank'\?", error), error
    assert "tuneforge-webui-" not in error  # the temporary file's folder is not shown


def test_check_config_reports_values_and_datasets():
    assert "quantization_bit" in check_config({**FORM, "quantization_bit": 3})
    error = check_config({**FORM, "dataset": "no_such_dataset"})
    assert "no_such_dataset" in error and "\n" not in error
    assert "unknown stage 'ft'" in check_config({**FORM, "stage": "ft"})
    assert check_config({k: v for k, v in FORM.items() if k != "model_name_or_path"}).startswith(
        "model_name_or_path is not set")


def test_form_config_with_empty_fields_passes_the_check():
    assert check_config(FORM) is None
    assert check_config({**FORM, "dataset": ["forge_identity"], "dataset_dir": str(REPO / "data")}) is None


def test_saved_tiny_run_passes_the_check_and_trains_unchanged(tmp_path, tiny_model_dir):
    config = {
        "model_name_or_path": tiny_model_dir, "adapter_name_or_path": "", "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": 4.0, "lora_alpha": None, "lora_target": "all",
        "dataset": ["identity"], "dataset_dir": str(ANCHOR_DATA), "template": "auto", "cutoff_len": 64.0,
        "max_samples": 8.0, "default_system": "", "output_dir": str(tmp_path / "out"), "logging_steps": 1.0,
        "save_strategy": "no", "report_to": "none", "overwrite_output_dir": True,
        "per_device_train_batch_size": 2.0, "learning_rate": 1e-3, "max_steps": 2.0, "seed": 0,
        "val_size": None, "eval_strategy": "",
    }  # fmt: skip
    path = save_config(config, tmp_path / "tiny.yaml")
    assert check_config(config) is None
    env = {**os.environ, "TUNEFORGE_DATA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (tmp_path / "out" / "adapter_config.json").is_file()
