"""Evaluation, the NaN guard, LLaMA-Factory's example configs, group_by_length, env/version."""

import json
import os

import pytest

from tests.train.test_train_e2e import base_args, data_files, losses  # noqa: F401 (fixture)
from tuneforge.cli import main
from tuneforge.train.runner import run_train

ANCHORS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "anchors")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


def test_eval_loss_perplexity_and_plots(tiny_model_dir, data_files, tmp_path):
    out = str(tmp_path / "eval")
    results = run_train(base_args(tiny_model_dir, data_files["sft"], out, val_size=0.25, eval_strategy="steps",
                                  eval_steps=3, plot_loss=True, per_device_eval_batch_size=2))
    records = [json.loads(line) for line in open(os.path.join(out, "trainer_log.jsonl"))]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(r["eval_perplexity"] == pytest.approx(2.718281828 ** r["eval_loss"], rel=1e-3) for r in evals)
    assert results["eval_perplexity"] > 1
    for name in ("training_loss.png", "eval_loss.png", "all_results.json", "eval_results.json"):
        assert os.path.exists(os.path.join(out, name)), name
    train_records = [r for r in records if "loss" in r]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "supervised_tokens_per_s", "mfu",
                "elapsed_s", "eta_s"):
        assert key in train_records[0], key


def test_non_finite_loss_stops_with_message_and_keeps_checkpoint(tiny_model_dir, data_files, tmp_path, monkeypatch,
                                                                 capsys):
    import torch

    from tuneforge.train import trainer as trainer_module

    real = trainer_module.supervised_loss_sum
    calls = {"n": 0}

    def poisoned(model, inputs, chunk_size, workspace=None):
        calls["n"] += 1
        loss, n = real(model, inputs, chunk_size, workspace)
        return (loss * torch.tensor(float("nan")) if calls["n"] >= 4 else loss), n

    monkeypatch.setattr(trainer_module, "supervised_loss_sum", poisoned)
    out = str(tmp_path / "nan")
    code = main(["train", *base_args(tiny_model_dir, data_files["sft"], out, save_strategy="steps", save_steps=2)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "loss became nan at step 4" in errors[0]
    assert "Traceback" not in err
    assert os.path.isdir(os.path.join(out, "checkpoint-2"))
    assert not os.path.exists(os.path.join(out, "checkpoint-4"))


@pytest.mark.skipif(not os.path.isdir(ANCHORS), reason="../shared/anchors is not beside this clone")
@pytest.mark.parametrize("config,over", [
    ("train_lora/qwen3_lora_sft.yaml", {}),
    ("train_lora/qwen3_lora_pretrain.yaml", {}),
    ("train_full/qwen3_full_sft.yaml", {"deepspeed": "null"}),
    ("train_lora/qwen3_lora_dpo.yaml", {}),
    ("train_lora/qwen3_lora_kto.yaml", {}),
    ("train_lora/qwen3_lora_reward.yaml", {}),
])
def test_llamafactory_example_configs_run(tiny_model_dir, tmp_path, config, over):
    """Only the model, template, data folder and hardware keys change (plus max_steps and output_dir, to keep
    the suite short and the clone clean)."""
    out = str(tmp_path / "lf")
    keys = {"model_name_or_path": tiny_model_dir, "template": "auto",
            "dataset_dir": os.path.join(ANCHORS, "llamafactory-data"), "bf16": "false", "max_steps": 2,
            "output_dir": out, "preprocessing_num_workers": 1, "dataloader_num_workers": 0, "max_samples": 40, **over}
    run_train([os.path.join(ANCHORS, "llamafactory-examples", config), *[f"{k}={v}" for k, v in keys.items()]])
    results = json.load(open(os.path.join(out, "all_results.json")))
    assert results["train_loss"] == results["train_loss"] and results["train_tokens"] > 0
    assert os.path.exists(os.path.join(out, "adapter_model.safetensors" if "lora" in config else "model.safetensors"))
    if "reward" in config:
        assert os.path.exists(os.path.join(out, "value_head.safetensors"))


def test_group_by_length_batches_similar_lengths():
    from tuneforge.train.sampler import LengthGroupedSampler

    lengths = [5, 100, 7, 98, 6, 97, 8, 99]
    order = list(LengthGroupedSampler(lengths, batch_size=2, seed=0, group_batches=4))
    assert sorted(order) == list(range(8))
    batches = [order[i : i + 2] for i in range(0, 8, 2)]
    assert all(abs(lengths[a] - lengths[b]) <= 3 for a, b in batches)


def test_env_and_version(capsys):
    from tuneforge import __version__

    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == __version__
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "torch" in out and "cpu cores" in out
