"""`tuneforge env`: what a bug report needs, and the GEMM peak that MFU divides by.

`tuneforge env --remeasure` times the peak(s) again (on a quiet machine: the figure is the fastest of
several products, so anything else running can only lower it)."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform


def parse_env_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tuneforge env", description="Versions, hardware and the GEMM peak.")
    parser.add_argument("--remeasure", action="store_true",
                        help="time this machine's GEMM peak(s) again and replace the cached figures")
    return parser.parse_args(argv or [])


def peak_rows(remeasure: bool = False) -> list[tuple[str, str]]:
    """The float32 peak at this process's thread count (measured if not cached), then every other peak cached
    for this machine (another dtype, another thread count such as a DDP rank's one); all of them timed again
    when `remeasure`."""
    from .train.throughput import format_flops, machine_peaks, peak_entry

    own = peak_entry("float32", remeasure=remeasure)
    entries = [own]
    for e in machine_peaks().values():
        if (e["dtype"], e.get("threads")) != (own["dtype"], own.get("threads")):
            entries.append(peak_entry(e["dtype"], e.get("threads"), remeasure=True) if remeasure else e)
    entries.sort(key=lambda e: (e["dtype"], e.get("threads") or 0))
    cores = os.cpu_count() or 1
    rows = []
    for e in entries:
        threads = e.get("threads")
        label = f"gemm peak {e['dtype']}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")
        note = f"measured {e.get('measured', '?')}"
        load = e.get("load")
        if threads and load is not None and load > max(cores - threads, 0) + 0.5:
            note += f"; load was {load:.1f} on {cores} cores, so it may be low: re-measure when quiet"
        rows.append((label, f"{format_flops(e['flops'])} ({note})"))
    return rows


def print_env(argv: list[str] | None = None) -> int:
    import torch

    from . import __version__

    args = parse_env_args(argv)
    rows = [("tuneforge", __version__), ("python", platform.python_version()), ("platform", platform.platform())]
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "bitsandbytes", "gguf"):
        try:
            rows.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    rows.append(("cpu cores", str(os.cpu_count())))
    rows.append(("torch threads", str(torch.get_num_threads())))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"gpu {i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB"))
    else:
        rows.append(("gpu", "none (training runs on the CPU)"))
    try:
        import psutil

        rows.append(("memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"))
    except ImportError:
        pass
    rows += peak_rows(args.remeasure)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0
