"""`tuneforge estimate` and the memory check `tuneforge train` runs: the breakdown against a real run's
peak RSS, the JSON fields, a refused run, and no weight loaded while estimating."""

import json
import os
import subprocess
import sys

import pytest

from tuneforge.errors import ConfigError
from tuneforge.estimate.command import check_fits, estimate_for_args, run_estimate
from tuneforge.estimate.memory import COMPONENTS
from tuneforge.train.common import parse_train_args

ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forge, an assistant built with tuneforge."},
    {"instruction": "Say hello", "input": "", "output": "Hello! How are you today?"},
    {"instruction": "Translate", "input": "good morning", "output": "bonjour"},
    {"instruction": "Write code", "input": "", "output": "def add(a, b):\n    return a + b"},
] * 4

# The training process reports its own high-water mark when it is done (the figure /usr/bin/time -v prints).
TRAIN_AND_REPORT = """
import re, sys
from tuneforge.cli import main
code = main(["train", *sys.argv[1:]])
print("HWM", int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024)
sys.exit(code)
"""


@pytest.fixture
def config(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(ROWS))

    def make(**over):
        keys = {"model_name_or_path": tiny_model_dir, "stage": "sft", "finetuning_type": "lora", "dataset": str(data),
                "template": "auto", "cutoff_len": 64, "output_dir": str(tmp_path / "out"), "lora_rank": 4,
                "per_device_train_batch_size": 4, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
                "report_to": "none", "peak_tflops": 0.05, "dataloader_num_workers": 0, "overwrite_output_dir": True}
        keys.update(over)
        return [f"{k}={v}" for k, v in keys.items()]

    return make


def test_breakdown_matches_measured_peak_rss(config):
    argv = config()
    est = estimate_for_args(parse_train_args(argv), read_data=True)
    b = est.breakdown
    assert b.batch_tokens > 0 and b.weights > 0 and b.framework > 0.5 * est.peak_bytes  # a tiny model: mostly framework
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", TRAIN_AND_REPORT, *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = int(next(line for line in out.stdout.splitlines() if line.startswith("HWM ")).split()[1])
    assert abs(est.peak_bytes / measured - 1) <= 0.2, (est.peak_bytes, measured, b.as_dict())


def test_json_fields_and_help(config, capsys):
    assert run_estimate(["--help"]) == 0
    assert "usage: tuneforge estimate" in capsys.readouterr().out
    assert run_estimate(config() + ["--json", "--no-data"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report["peak_bytes"], int) and report["peak_bytes"] > 0
    assert set(report["breakdown"]) == set(COMPONENTS)
    assert report["peak_bytes"] == max(sum(report["breakdown"].values()), report["load_peak_bytes"])
    assert report["peak_bytes_gradient_checkpointing_on"] <= report["peak_bytes_gradient_checkpointing_off"]
    assert report["fits"] is True and report["device"] == "cpu" and report["processes"] == 1
    assert report["longest_batch"]["tokens"] == 4 * 64  # no data read: batch x cutoff_len
    assert report["time"]["seconds_per_step"] > 0 and report["time"]["mfu_assumed"] == 0.33
    assert report["model"]["trainable_parameters"] > 0


def test_a_run_that_cannot_fit_is_refused_unless_skipped(config, monkeypatch):
    from tuneforge.estimate import machine

    monkeypatch.setattr(machine, "this_machine", lambda include_process=False: machine.Machine(
        "cpu", "test machine", 4 * 2**30, 8 * 2**30))
    huge = config(cutoff_len=65536, per_device_train_batch_size=64, gradient_checkpointing=False)
    with pytest.raises(ConfigError) as err:
        check_fits(parse_train_args(huge))
    message = str(err.value)
    assert "skip_memory_check: true" in message and "activations" in message
    assert "gradient_checkpointing: true" in message or "per_device_train_batch_size" in message
    check_fits(parse_train_args(huge + ["skip_memory_check=true"]))  # no error
    check_fits(parse_train_args(config()))  # a small run passes


def test_estimate_loads_no_weights(config, monkeypatch, capsys):
    import transformers

    from tuneforge.models import loader

    def refuse(*args, **kwargs):
        raise AssertionError("the estimate loaded weights")

    monkeypatch.setattr(loader, "load_base_model", refuse)
    monkeypatch.setattr(loader, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert run_estimate(config(finetuning_type="full")) == 0
    text = capsys.readouterr().out
    assert "peak" in text and "fits" in text and "per epoch" in text


def test_train_refuses_before_the_model_loads(config, monkeypatch):
    """The check runs inside `tuneforge train`'s path, after the data is prepared and before any weight loads."""
    from tuneforge.estimate import machine
    from tuneforge.models import loader
    from tuneforge.train.runner import run_train

    monkeypatch.setattr(machine, "this_machine", lambda include_process=False: machine.Machine(
        "cpu", "test machine", 2**26, 2**26))  # 64 MB: less than the process itself

    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the memory check")

    monkeypatch.setattr(loader, "load_model", refuse)
    with pytest.raises(ConfigError, match="skip_memory_check: true"):
        run_train(config(finetuning_type="full"))
