"""FLOPs per token and MFU, estimated in the open.

Dense FLOPs per trained token: 6N when every weight is trained (2N forward, 2N for activation gradients,
2N for weight gradients) and 4N when the base weights are frozen (adapters add their own 6 x their
parameters), N counting the decoder's matrices only: the input embedding is a lookup, and the LM head runs
only at supervised positions, so it is counted per supervised token (4 or 6 x vocab x hidden). Attention adds, per example of length s, 6 * layers * hidden * s^2 (forward QK^T and AV with a
causal mask is 2 * layers * hidden * s^2, tripled for the backward pass).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger("tuneforge")


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


def measure_peak_flops(size: int = 1024, repeats: int = 10, device: str = "cpu", dtype=None, warmup: int = 2) -> float:
    """Achieved GEMM FLOP/s on `device` in `dtype` (float32 unless given), at this process's thread count: the
    fastest of `repeats` timed size^3 matrix products after `warmup` untimed ones. The fastest, not the mean,
    because a busy moment can only slow a product down."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    b = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(max(warmup, 1)):
        a @ b
    sync()
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    if seconds <= 0 or peak_flops_per_s <= 0:
        return 0.0
    return flops / seconds / peak_flops_per_s


# The peak cache: {"format": 2, "peaks": {key: entry}}, one entry per device, compute dtype and (on the CPU)
# thread count. A file in another format (format 1 was {key: flops}, and could hold a peak measured by
# several processes at once) is measured anew and replaced.
CACHE_FORMAT = 2
LOCK_TIMEOUT_S = 900.0


def peak_cache_path() -> Path:
    return Path(os.environ.get("TUNEFORGE_CACHE", Path.home() / ".cache" / "tuneforge")) / "peak_flops.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device() -> tuple[str, str]:
    """("cuda", GPU name) where there is a GPU, else ("cpu", CPU name and core count)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name()
    return "cpu", f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} cores)"


def peak_key(device: str, name: str, dtype_name: str, threads: int | None) -> str:
    return f"{device}|{name}|{dtype_name}" + (f"|{threads} threads" if device == "cpu" else "")


def read_peaks(path: Path | None = None) -> dict[str, dict]:
    """The cached entries (empty when the file is missing, unreadable or in another format)."""
    try:
        data = json.loads((path or peak_cache_path()).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("peaks"), dict):
        return {}
    return {k: v for k, v in data["peaks"].items()
            if isinstance(v, dict) and isinstance(v.get("flops"), (int, float)) and v["flops"] > 0}


def _write_peaks(path: Path, peaks: dict[str, dict]) -> None:
    """Written to a temporary file beside it, then renamed over it: a reader sees the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": CACHE_FORMAT, "peaks": peaks}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _measure_entry(device: str, name: str, dtype_name: str, threads: int | None) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if device == "cuda":
        size, repeats = 8192, 10
        flops = measure_peak_flops(size=size, repeats=repeats, device="cuda", dtype=dtype)
    else:
        size, repeats = 1024, 10
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            flops = measure_peak_flops(size=size, repeats=repeats, device="cpu", dtype=dtype)
        finally:
            torch.set_num_threads(before)
    return {
        "flops": float(flops), "device": device, "name": name, "dtype": dtype_name, "threads": threads,
        "size": size, "repeats": repeats, "load": None if load is None else round(load, 2),
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def peak_entry(dtype_name: str = "float32", threads: int | None = None, remeasure: bool = False,
               path: Path | None = None) -> dict:
    """The cached peak entry of this machine (the GPU where there is one, else the CPU at `threads` threads,
    this process's count unless given) in `dtype_name`, measured when absent or when `remeasure`.

    Measured once per machine by one process: under a file lock beside the cache, re-read after taking it,
    so that DDP ranks or jobs asking at once wait for the first one's figure instead of each timing GEMMs
    while the others compete for the same cores."""
    import torch

    device, name = _device()
    if device == "cpu":
        threads = threads or torch.get_num_threads()
    else:
        threads = None
    key = peak_key(device, name, dtype_name, threads)
    path = path or peak_cache_path()
    if not remeasure and key in (peaks := read_peaks(path)):
        return peaks[key]
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except (OSError, Timeout) as e:
        logger.warning("peak FLOP/s: cannot lock %s (%s); measuring without the cache", path, e)
        return _measure_entry(device, name, dtype_name, threads)
    try:
        if not remeasure and key in (peaks := read_peaks(path)):
            return peaks[key]  # another process measured it while this one waited
        entry = _measure_entry(device, name, dtype_name, threads)
        peaks = read_peaks(path)
        peaks[key] = entry
        try:
            _write_peaks(path, peaks)
        except OSError as e:
            logger.warning("peak FLOP/s: cannot write %s (%s)", path, e)
        logger.info("peak FLOP/s: %s %s%s: %s (cached in %s)", name, dtype_name,
                    f", {threads} threads" if threads else "", format_flops(entry["flops"]), path)
        return entry
    finally:
        lock.release()


def machine_peak_flops(dtype_name: str = "float32", threads: int | None = None, remeasure: bool = False) -> float:
    """The GEMM peak of this machine in the compute dtype: the GPU where there is one, else the CPU at this
    process's thread count (under torchrun each DDP rank runs OMP_NUM_THREADS=1 unless set, and the rank's
    own count is the one measured and looked up). See peak_entry."""
    return float(peak_entry(dtype_name, threads, remeasure)["flops"])


def machine_peaks(path: Path | None = None) -> dict[str, dict]:
    """The cached entries for this machine's device (a GPU's, or this CPU's), by key."""
    device, name = _device()
    return {k: v for k, v in read_peaks(path).items() if v.get("device") == device and v.get("name") == name}


def format_flops(flops: float) -> str:
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.1f} {unit}"
    return f"{flops:.0f} FLOP/s"
