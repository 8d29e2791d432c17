"""`tuneforge env`: what a bug report needs."""

from __future__ import annotations

import importlib.metadata
import os
import platform


def print_env() -> None:
    import torch

    from . import __version__

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
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
