"""Two CPU processes (gloo) under torchrun give the same losses as one process with the doubled batch."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.train.test_train_e2e import base_args, data_files, losses  # noqa: F401 (fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv, env):
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", *argv], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_process_ddp_equals_one_process_double_batch(tiny_model_dir, data_files, tmp_path):
    env = dict(os.environ, TUNEFORGE_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run(base_args(tiny_model_dir, data_files["sft"], one, per_device_train_batch_size=4, max_steps=4), env)
    proc = _run(base_args(tiny_model_dir, data_files["sft"], two, per_device_train_batch_size=2, max_steps=4,
                          nproc_per_node=2, master_port=_free_port()), env)
    assert len(losses(two)) == 4
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    results = json.load(open(os.path.join(two, "all_results.json")))
    assert results["train_tokens"] == json.load(open(os.path.join(one, "all_results.json")))["train_tokens"]
    assert "[done]" in proc.stdout


def test_two_process_reward_model_equals_one_process(tiny_model_dir, tmp_path):
    """The value head is used outside the model's forward; DDP must still average its gradients, and the
    logged accuracy is summed over both processes."""
    from tests.train.preference_data import separable_pairs, write
    from tests.train.test_preference_stages import pref_args, records

    env = dict(os.environ, TUNEFORGE_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    pairs = write(tmp_path, "pairs.json", separable_pairs(16))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = dict(stage="rm", max_steps=4, learning_rate=1e-2)
    _run(pref_args(tiny_model_dir, pairs, one, per_device_train_batch_size=4, **common), env)
    _run(pref_args(tiny_model_dir, pairs, two, per_device_train_batch_size=2, nproc_per_node=2,
                   master_port=_free_port(), **common), env)
    for key in ("loss", "accuracy", "scores/chosen"):
        assert [r[key] for r in records(two)] == pytest.approx([r[key] for r in records(one)], abs=1e-5), key
    assert len({r["loss"] for r in records(one)}) == 4


def test_two_process_ppo_equals_one_process(tmp_path):
    """Each process samples its own prompts; advantage whitening, score normalisation and the adaptive KL
    coefficient use statistics of both processes' buffers, so greedy PPO on two processes trains exactly as
    one process with both buffers."""
    from tests.tiny import save_tiny_model
    from tests.train.rl_data import favoured_token_pairs, prompt_rows, write
    from tests.train.test_preference_stages import column
    from transformers import AutoTokenizer

    env = dict(os.environ, TUNEFORGE_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    model = save_tiny_model(tmp_path / "tiny", initializer_range=0.2)
    pairs = write(tmp_path, "pairs.json", favoured_token_pairs(AutoTokenizer.from_pretrained(model), 16))
    prompts = write(tmp_path, "prompts.json", prompt_rows(16))
    rm = str(tmp_path / "rm")
    _run(base_args(model, pairs, rm, stage="rm", max_steps=3, learning_rate=0.05), env)
    # float32 sampling: bfloat16 products differ with the batch size, enough to flip a greedy token
    common = dict(stage="ppo", reward_model=rm, do_sample=False, rollout_dtype="float32", max_new_tokens=6,
                  max_steps=4, ppo_epochs=2,
                  ppo_target=0.5, ppo_score_norm=True, ppo_whiten_rewards=True, learning_rate=0.02)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run(base_args(model, prompts, one, per_device_train_batch_size=4, **common), env)
    _run(base_args(model, prompts, two, per_device_train_batch_size=2, nproc_per_node=2, master_port=_free_port(),
                   **common), env)
    for key in ("loss", "reward", "kl_coef", "value_loss", "policy_loss"):
        assert column(two, key) == pytest.approx(column(one, key), abs=1e-5), key
    assert len(set(column(one, "loss"))) == 4 and column(one, "kl_coef")[0] != column(one, "kl_coef")[1]
