"""FLOPs per token and MFU, estimated in the open.

Dense FLOPs per trained token: 6N when every weight is trained (2N forward, 2N for activation gradients,
2N for weight gradients) and 4N when the base weights are frozen (adapters add their own 6 x their
parameters), N counting the decoder's matrices only: the input embedding is a lookup, and the LM head runs
only at supervised positions, so it is counted per supervised token (4 or 6 x vocab x hidden). Attention adds, per example of length s, 6 * layers * hidden * s^2 (forward QK^T and AV with a
causal mask is 2 * layers * hidden * s^2, tripled for the backward pass).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path


def dense_flops_per_token(total_params: int, trainable_params: int, full: bool) -> float:
    if full:
        return 6.0 * total_params
    return 4.0 * (total_params - trainable_params) + 6.0 * trainable_params


def head_flops_per_supervised_token(vocab: int, hidden: int, head_trained: bool) -> float:
    return (6.0 if head_trained else 4.0) * vocab * hidden


def body_parameters(model) -> tuple[int, int]:
    """(total, trainable) parameters without the input embedding and the LM head."""
    from ..models.adapters import base_model, param_numel

    base = base_model(model)
    skip = {id(p) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in skip]
    return sum(map(param_numel, params)), sum(param_numel(p) for p in params if p.requires_grad)


def attention_flops(example_lengths: list[int], layers: int, hidden: int, passes: int = 3) -> float:
    """passes: 3 for a trained sequence (forward and backward), 1 for a forward-only one."""
    return 2.0 * passes * layers * hidden * sum(s * s for s in example_lengths)


@dataclass
class FlopModel:
    """FLOPs of a step from what it ran: tokens trained on (forward and backward), supervised positions
    (the LM head), and tokens run forward only (a reference model's pass: 2N per token, 2 x vocab x hidden
    per supervised position)."""

    per_token: float  # dense FLOPs per trained token
    per_supervised: float  # LM head FLOPs per trained supervised position
    forward_per_token: float
    forward_per_supervised: float
    layers: int
    hidden: int

    def dense(self, tokens: int, supervised: int, forward_tokens: int = 0, forward_supervised: int = 0) -> float:
        """The matrix products, from token counts."""
        return (tokens * self.per_token + supervised * self.per_supervised
                + forward_tokens * self.forward_per_token + forward_supervised * self.forward_per_supervised)

    def attention(self, lengths: list[int], forward_lengths: list[int] = ()) -> float:
        """Attention, from each sequence's length."""
        return (attention_flops(lengths, self.layers, self.hidden)
                + attention_flops(list(forward_lengths), self.layers, self.hidden, passes=1))


def measure_peak_flops(size: int = 1024, repeats: int = 3, device: str = "cpu", dtype=None) -> float:
    """Achieved GEMM FLOP/s on `device` in `dtype` (float32 unless given): the best of a few size^3 matrix
    products."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    b = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    if seconds <= 0 or peak_flops_per_s <= 0:
        return 0.0
    return flops / seconds / peak_flops_per_s


def machine_peak_flops(dtype_name: str = "float32") -> float:
    """measure_peak_flops once per machine (the GPU where there is one, else the CPU and its thread count)
    and compute dtype, remembered under ~/.cache/tuneforge."""
    import torch

    if torch.cuda.is_available():
        key = f"cuda-{torch.cuda.get_device_name()}-{dtype_name}"
        measure = lambda: measure_peak_flops(8192, 5, "cuda", getattr(torch, dtype_name))  # noqa: E731
    else:
        key = f"{platform.machine()}-{platform.processor() or 'cpu'}-{os.cpu_count()}-{torch.get_num_threads()}"
        if dtype_name != "float32":
            key += f"-{dtype_name}"
        measure = lambda: measure_peak_flops(dtype=getattr(torch, dtype_name))  # noqa: E731
    path = Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge")) / "peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(known))
        except OSError:
            pass
    return float(known[key])
