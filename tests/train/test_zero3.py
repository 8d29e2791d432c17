"""Our code under real DeepSpeed ZeRO-3 partitioning, on the CPU (one gloo process; see zero3_worker.py).

accelerate runs DeepSpeed only on GPUs, so the Trainer's own DeepSpeed glue is not exercised here; what is:
loading a partitioned model through load_model (embedding rows and parameter counts read from the true
sizes, not the empty local tensors), the sharded loss path (logits at supervised positions, computed inside
the model's forward) giving the same loss and gradients as the chunked path, and the ready configs in
examples/deepspeed passing DeepSpeed's validation once the Trainer's "auto" values are filled.
"""

import json
import os
import socket
import subprocess
import sys

import pytest


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_zero3_partitioned_model_gives_the_same_loss_and_gradients(tiny_model_dir, tmp_path, finetuning_type):
    env = dict(os.environ, MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "tests.train.zero3_worker", tiny_model_dir, str(tmp_path / "out"),
                           finetuning_type], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["partitioned"] and result["zero_stage"] == 3
    plain_loss, zero3_loss = result["loss"]
    assert zero3_loss == pytest.approx(plain_loss, rel=1e-6)
    assert result["supervised"][0] == result["supervised"][1] == 12
    plain_counts, zero3_counts = result["counts"]
    assert zero3_counts == plain_counts and plain_counts[0][1] > 0
    assert result["grad_names"] and result["grad_diff"] < 1e-5 * max(1.0, result["grad_scale"])
    assert result["configs"] == {"ds_z2_config.json": 2, "ds_z2_offload_config.json": 2,
                                 "ds_z3_config.json": 3, "ds_z3_offload_config.json": 3}


@pytest.mark.parametrize("finetuning_type,kind", [("lora", "dpo"), ("full", "orpo"), ("lora", "rm")])
def test_zero3_preference_objectives_match_the_unsharded_path(tiny_model_dir, tmp_path, finetuning_type, kind):
    """dpo with the adapters-off reference, orpo (no reference) on full weights, and the reward model's value
    head, each under real ZeRO-3 partitioning, against the same objective without DeepSpeed."""
    env = dict(os.environ, MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "tests.train.zero3_preference_worker", tiny_model_dir,
                           str(tmp_path / "out"), finetuning_type, kind], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["zero_stage"] == 3
    plain_loss, zero3_loss = result["loss"]
    assert zero3_loss == pytest.approx(plain_loss, rel=1e-5)
    assert result["grad_names"] and result["grad_scale"] > 0
    assert result["grad_diff"] < 1e-5 * max(1.0, result["grad_scale"])
