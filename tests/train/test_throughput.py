import json
import os

import pytest

from tests.train.test_train_e2e import base_args, data_files, losses  # noqa: F401 (fixture)
from tuneforge.train.sampler import TokenBudgetBatchSampler
from tuneforge.train.throughput import (
    attention_flops, body_parameters, dense_flops_per_token, head_flops_per_supervised_token, mfu,
)


def test_mfu_on_a_hand_computed_case():
    # 1M parameters, 10k of them LoRA: frozen weights cost 4 FLOPs per token each, trained ones 6.
    per_token = dense_flops_per_token(1_000_000, 10_000, full=False)
    assert per_token == 4 * 990_000 + 6 * 10_000 == 4_020_000
    assert dense_flops_per_token(1_000_000, 1_000_000, full=True) == 6_000_000
    # Two examples of 10 and 20 tokens, 2 layers, hidden 8: 6 * 2 * 8 * (100 + 400).
    attn = attention_flops([10, 20], layers=2, hidden=8)
    assert attn == 48_000
    # The LM head (vocab 100, hidden 8) counts only at supervised positions: 4 x 100 x 8 when frozen.
    assert head_flops_per_supervised_token(100, 8, head_trained=False) == 3_200
    assert head_flops_per_supervised_token(100, 8, head_trained=True) == 4_800
    # 30 tokens in 0.5 s on a 1 GFLOP/s machine.
    assert mfu(30 * per_token + attn, 0.5, 1e9) == pytest.approx((120_600_000 + 48_000) / 0.5 / 1e9)


def test_token_budget_batches_respect_the_budget():
    lengths = [10, 50, 30, 70, 20, 200, 40]
    sampler = TokenBudgetBatchSampler(lengths, budget=100, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert sum(lengths[i] for i in b) <= 100 or len(b) == 1
    sampler.set_epoch(1)
    assert sorted(i for b in sampler for i in b) == list(range(7))


def test_token_budget_training_runs_and_logs_throughput(tiny_model_dir, data_files, tmp_path, monkeypatch):
    from tuneforge.train.runner import run_train

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "budget")
    results = run_train(base_args(tiny_model_dir, data_files["sft"], out, token_budget=64, max_steps=4))
    records = [json.loads(line) for line in open(os.path.join(out, "trainer_log.jsonl"))]
    assert len(losses(out)) == 4
    assert all(r["tokens_per_s"] > 0 and r["supervised_tokens_per_s"] > 0 and 0 < r["mfu"] for r in records)
    assert results["train_supervised_tokens"] < results["train_tokens"]
    assert results["train_mfu"] > 0 and results["train_supervised_tokens_per_second"] > 0


def test_gradient_checkpointing_only_when_memory_needs_it():
    from types import SimpleNamespace

    from tuneforge.train.common import needs_gradient_checkpointing

    smollm2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    assert not needs_gradient_checkpointing(smollm2, 4 * 512, 20 * 2**30)  # ~2.5 GB of 20 GB
    assert needs_gradient_checkpointing(smollm2, 16 * 4096, 20 * 2**30)  # ~81 GB


def test_gradient_checkpointing_trains_with_lora(tiny_model_dir, data_files, tmp_path, monkeypatch):
    from tuneforge.train.runner import run_train

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    a, b = str(tmp_path / "gc"), str(tmp_path / "nogc")
    run_train(base_args(tiny_model_dir, data_files["sft"], a, gradient_checkpointing=True, max_steps=3))
    run_train(base_args(tiny_model_dir, data_files["sft"], b, gradient_checkpointing=False, max_steps=3))
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)


def test_body_parameters_leave_out_embeddings_and_head(chatml_tok):
    from tests.tiny import tiny_llama

    model = tiny_llama(chatml_tok)
    total, trainable = body_parameters(model)
    embed = model.get_input_embeddings().weight.numel() + model.lm_head.weight.numel()
    assert total == sum(p.numel() for p in model.parameters()) - embed == trainable


def test_peak_is_measured_once_per_machine_and_dtype(tmp_path, monkeypatch):
    import torch

    from tuneforge.train import throughput

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []
    monkeypatch.setattr(throughput, "measure_peak_flops", lambda **kw: calls.append(kw) or 1e9 * (len(calls)))
    assert throughput.machine_peak_flops() == 1e9
    assert throughput.machine_peak_flops("bfloat16") == 2e9  # its own entry: bf16 has its own peak
    assert throughput.machine_peak_flops() == 1e9 and throughput.machine_peak_flops("bfloat16") == 2e9
    assert [c["dtype"] for c in calls] == [torch.float32, torch.bfloat16]


def test_measured_peak_is_positive_in_each_dtype():
    import torch

    from tuneforge.train.throughput import measure_peak_flops

    for dtype in (torch.float32, torch.bfloat16):
        assert measure_peak_flops(size=64, repeats=1, dtype=dtype) > 0


def test_checkpointing_policy_keeps_the_last_layer_and_gradients_unchanged(chatml_tok):
    import copy

    import torch
    from transformers import TrainingArguments

    from tests.tiny import tiny_llama
    from tuneforge.train.callbacks import CheckpointingPolicy

    plain = tiny_llama(chatml_tok, layers=3)
    model = copy.deepcopy(plain)
    model.gradient_checkpointing_enable()
    args = TrainingArguments(output_dir="unused", gradient_checkpointing=True, use_cpu=True, report_to="none")
    CheckpointingPolicy().on_train_begin(args, None, None, model=model)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, True, False]
    ids = torch.arange(5, 45).unsqueeze(0)
    for m in (plain, model):
        m.train()
        m(input_ids=ids, labels=ids).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_end_of_run_mfu_counts_the_steps_after_the_last_log(tiny_model_dir, data_files, tmp_path, monkeypatch):
    from tuneforge.train.runner import run_train

    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    every = run_train(base_args(tiny_model_dir, data_files["sft"], str(tmp_path / "a"), max_steps=3, logging_steps=1))
    none = run_train(base_args(tiny_model_dir, data_files["sft"], str(tmp_path / "b"), max_steps=3, logging_steps=5))
    # The same work either way: FLOPs = MFU x runtime x peak.
    assert none["train_mfu"] > 0
    assert none["train_mfu"] * none["train_runtime"] == pytest.approx(every["train_mfu"] * every["train_runtime"], rel=0.05)
