"""What this machine offers and what a training process costs on it before any model: memory available
(RAM, or the GPU's), the framework's resident size (measured once, in a fresh process, and remembered), and
the measured GEMM peak that time estimates divide by."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# A fresh interpreter imports what `tuneforge train` imports and runs one LoRA-style training step of a
# 2-layer model (autograd, AdamW, thread pools, oneDNN), then reports its high-water mark.
_BASELINE_SCRIPT = """
import re, warnings
warnings.filterwarnings("ignore")
import torch, transformers, peft, datasets, accelerate
from transformers import LlamaConfig, LlamaForCausalLM, Trainer
config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
model = LlamaForCausalLM(config)
optimizer = torch.optim.AdamW(model.parameters())
ids = torch.randint(0, 512, (1, 256))
for _ in range(2):
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
status = open("/proc/self/status").read()
print("HWM", int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) * 1024)
"""
FALLBACK_BASELINE = 500 * 2**20  # measured here (2 cores, torch 2.13 CPU, transformers 5.24): 499.7 MB


@dataclass
class Machine:
    device: str  # cpu | cuda
    name: str
    available_bytes: int  # memory a new run can use now (RAM, or the free memory of one GPU)
    total_bytes: int


def cache_path(name: str) -> Path:
    return Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge")) / name


def this_machine(include_process: bool = False) -> Machine:
    """This machine's memory. include_process: count this process's own resident size as available (the
    training process asking about itself already holds part of what the estimate counts)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        if include_process:
            free += torch.cuda.memory_reserved()
        return Machine("cuda", torch.cuda.get_device_name(), int(free), int(total))
    memory = psutil.virtual_memory()
    available = memory.available + (psutil.Process().memory_info().rss if include_process else 0)
    return Machine("cpu", f"{platform.machine()} CPU, {os.cpu_count()} cores", int(available), int(memory.total))


def _versions_key() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [platform.machine(), f"py{sys.version_info[0]}.{sys.version_info[1]}"]
    for package in ("torch", "transformers", "peft", "datasets", "accelerate"):
        try:
            parts.append(f"{package}{version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package}-")
    return "-".join(parts)


def measure_baseline(tries: int = 2) -> int:
    """Resident bytes of a fresh process that imported the training stack and ran one small step: the
    smallest of `tries` processes (a busy moment can only add to it)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    found = []
    for _ in range(tries):
        try:
            out = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT], capture_output=True, text=True, env=env,
                                 timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found += [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("HWM ")]
    return min(found) if found else FALLBACK_BASELINE


def framework_baseline(remeasure: bool = False) -> tuple[int, str]:
    """(bytes, how they were obtained): measured once per machine and package versions, under a lock so two
    processes asking at once measure once, and remembered in ~/.cache/tuneforge/estimate_baseline.json."""
    from filelock import FileLock

    path, key = cache_path("estimate_baseline.json"), _versions_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return FALLBACK_BASELINE, "not measured (cache folder not writable); 500 MB measured on the dev machine"
    with FileLock(str(path) + ".lock", timeout=600):
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if remeasure or key not in known:
            known[key] = measure_baseline()
            try:
                path.write_text(json.dumps(known, indent=1))
            except OSError:
                pass
    return int(known[key]), f"measured on this machine ({path})"


def peak_flops(compute_dtype: str, override_tflops: float | None = None) -> float:
    """FLOP/s the time estimate divides by: peak_tflops when set, else the machine's measured GEMM peak."""
    if override_tflops:
        return override_tflops * 1e12
    from ..train.throughput import machine_peak_flops

    return float(machine_peak_flops(compute_dtype))
