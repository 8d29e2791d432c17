"""End-to-end `tuneforge train` runs on a tiny model: every method, golden losses, invariances, resume."""

import json
import os
import shutil

import pytest

from tuneforge.cli import main
from tuneforge.train.runner import run_train

ROWS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forge, an assistant built with tuneforge."},
    {"instruction": "你是谁？", "input": "", "output": "我是 Forge。"},
    {"instruction": "Say hello", "input": "", "output": "Hello! How are you today?"},
    {"instruction": "Translate", "input": "good morning", "output": "bonjour"},
    {"instruction": "Add", "input": "2 and 2", "output": "4"},
    {"instruction": "Name a fox", "input": "", "output": "The quick brown fox."},
    {"instruction": "Write code", "input": "", "output": "def add(a, b):\n    return a + b"},
    {"instruction": "Weather?", "input": "Paris", "output": "It is sunny in Paris."},
]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    sft = d / "sft.json"
    sft.write_text(json.dumps(ROWS, ensure_ascii=False))
    pt = d / "pt.jsonl"
    pt.write_text("".join(json.dumps({"text": r["instruction"] + " " + r["output"]}) + "\n" for r in ROWS * 3))
    return {"sft": str(sft), "pt": str(pt)}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


def base_args(model_dir, data, out, **over):
    cfg = {
        "model_name_or_path": model_dir, "stage": "sft", "finetuning_type": "lora", "dataset": data,
        "template": "auto", "cutoff_len": 64, "output_dir": out, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1, "learning_rate": 5e-3, "max_steps": 6, "logging_steps": 1,
        "save_strategy": "no", "report_to": "none", "seed": 7, "lora_rank": 4, "peak_tflops": 0.05,
        "dataloader_num_workers": 0, "overwrite_output_dir": True,
    }
    cfg.update(over)
    return [f"{k}={v}" for k, v in cfg.items()]


def losses(out):
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.parametrize("method", [
    {"finetuning_type": "lora"},
    {"finetuning_type": "freeze", "freeze_trainable_layers": 1},
    {"finetuning_type": "full", "learning_rate": 2e-3},
    {"finetuning_type": "lora", "quantization_bit": 4},
])
def test_sft_methods_learn_and_write_outputs(tiny_model_dir, data_files, tmp_path, method):
    out = str(tmp_path / "run")
    results = run_train(base_args(tiny_model_dir, data_files["sft"], out, max_steps=10, plot_loss=True, **method))
    curve = losses(out)
    assert len(curve) == 10 and all(l == l for l in curve)
    assert curve[-1] < curve[0]
    weights = "adapter_model.safetensors" if method["finetuning_type"] == "lora" else "model.safetensors"
    for name in (weights, "tokenizer.json", "generation_config.json", "all_results.json", "training_loss.png"):
        assert os.path.exists(os.path.join(out, name)), name
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    assert results["train_tokens"] > 0


def test_pt_lora(tiny_model_dir, data_files, tmp_path):
    out = str(tmp_path / "pt")
    run_train(base_args(tiny_model_dir, data_files["pt"], out, stage="pt", max_steps=8))
    curve = losses(out)
    assert curve[-1] < curve[0]


def test_golden_losses(tiny_model_dir, data_files, tmp_path):
    out = str(tmp_path / "golden")
    run_train(base_args(tiny_model_dir, data_files["sft"], out, max_steps=3))
    assert losses(out) == pytest.approx(GOLDEN, abs=2e-4)


# Pinned from a seeded run (seed 7, tiny Llama of tests/tiny.py); a change here means the loss, the data
# order, the masking or the tokenization changed.
GOLDEN = [6.023836, 5.982405, 5.983551]


@pytest.mark.parametrize("padding_free", [True, False])
def test_batch_times_accumulation_invariance(tiny_model_dir, data_files, tmp_path, padding_free):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = dict(max_steps=4, padding_free=padding_free, learning_rate=1e-2)
    run_train(base_args(tiny_model_dir, data_files["sft"], a, per_device_train_batch_size=4, **common))
    run_train(base_args(tiny_model_dir, data_files["sft"], b, per_device_train_batch_size=1,
                        gradient_accumulation_steps=4, **common))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)


def test_padding_free_equals_padded_per_step(tiny_model_dir, data_files, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_train(base_args(tiny_model_dir, data_files["sft"], a, padding_free=True))
    run_train(base_args(tiny_model_dir, data_files["sft"], b, padding_free=False))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)


@pytest.mark.parametrize("resume", ["path", "true"])
def test_resume_continues_with_same_losses(tiny_model_dir, data_files, tmp_path, resume):
    full = str(tmp_path / "full")
    run_train(base_args(tiny_model_dir, data_files["sft"], full, per_device_train_batch_size=2, save_strategy="steps",
                        save_steps=3))
    resumed = str(tmp_path / "resumed")
    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoint-6"))
    os.remove(os.path.join(resumed, "trainer_log.jsonl"))
    run_train(base_args(tiny_model_dir, data_files["sft"], resumed, per_device_train_batch_size=2,
                        save_strategy="steps", save_steps=3, overwrite_output_dir=False,
                        resume_from_checkpoint=os.path.join(resumed, "checkpoint-3") if resume == "path" else "true"))
    assert losses(resumed) == pytest.approx(losses(full)[3:], abs=1e-5)


def test_existing_run_is_refused(tiny_model_dir, data_files, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *base_args(tiny_model_dir, data_files["sft"], out, max_steps=1)]) == 0
    code = main(["train", *base_args(tiny_model_dir, data_files["sft"], out, max_steps=1, overwrite_output_dir=False)])
    err = capsys.readouterr().err
    assert code == 1 and "overwrite_output_dir=true" in err and "resume_from_checkpoint=true" in err


@pytest.mark.parametrize("extra,message", [
    ({"lora_rnak": 8}, "did you mean 'lora_rank'"),
    ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit"),
    ({"fp16": True}, "fp16=false"),
    ({"deepspeed": "ds.json"}, "deepspeed=null"),
    ({"nproc_per_node": 2, "lora_rnak": 8}, "did you mean 'lora_rank'"),  # before torchrun, not per worker
    ({"stage": "ppo"}, "stage ppo needs reward_model"),
    ({"stage": "dppo"}, "unknown stage 'dppo'; choose one of pt, sft, rm, dpo, kto, ppo, grpo"),
    ({"learning_rate": "fast"}, "learning_rate"),
])
def test_cli_errors_are_one_line(tiny_model_dir, data_files, tmp_path, capsys, extra, message):
    code = main(["train", *base_args(tiny_model_dir, data_files["sft"], str(tmp_path / "x"), **extra)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1 and err.startswith("error:")
