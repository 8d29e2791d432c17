"""Multi-process training: `tuneforge train` re-runs itself under torchrun when asked for more than one
process (nproc_per_node / nnodes keys, or NPROC_PER_NODE / NNODES environment variables as in
LLaMA-Factory), and for DeepSpeed or FSDP on a GPU even with one process.

The relaunching process holds output_dir's run lock (run_lock.py) while torchrun runs, and turns a SIGTERM
or SIGINT it receives into a clean stop of the workers (stop.py).
"""

from __future__ import annotations

import os
import sys
import tempfile

from ..config.parser import read_sources


def launch_settings(argv: list[str]) -> dict | None:
    if os.environ.get("LOCAL_RANK") is not None or os.environ.get("TUNEFORGE_LAUNCHED"):
        return None  # already a worker
    raw = {k: v.value for k, v in read_sources(argv).items()}
    nproc = raw.get("nproc_per_node") or os.environ.get("NPROC_PER_NODE")
    nnodes = raw.get("nnodes") or os.environ.get("NNODES") or 1
    nproc = int(nproc or 1)
    if nproc <= 1 and int(nnodes) <= 1 and not _sharded_on_gpu(raw):
        return None
    return {
        "nproc_per_node": nproc,
        "nnodes": int(nnodes),
        "node_rank": int(raw.get("node_rank") or os.environ.get("NODE_RANK") or os.environ.get("RANK") or 0),
        "master_addr": str(raw.get("master_addr") or os.environ.get("MASTER_ADDR") or "127.0.0.1"),
        "master_port": int(raw.get("master_port") or os.environ.get("MASTER_PORT") or 29500),
    }


def refuse_busy_output_dir(argv: list[str]) -> None:
    """A run into an output_dir another run holds is refused here, before torch loads (seconds on a busy
    machine); the lock itself is taken later, by the process that trains or launches."""
    from . import run_lock

    if not run_lock.should_hold():
        return
    out = read_sources(argv).get("output_dir")
    holder = run_lock.in_use(str(out.value)) if out is not None and out.value else None
    if holder is not None:
        raise run_lock.OutputDirInUse(run_lock.in_use_message(str(out.value), holder))


def _sharded_on_gpu(raw: dict) -> bool:
    """DeepSpeed and FSDP need a process group even for one GPU, which accelerate sets up only under a
    launcher. Without a GPU they are a config error, reported by this process rather than by torchrun."""
    from ..config.validate import fsdp_value

    if not raw.get("deepspeed") and fsdp_value(raw.get("fsdp")) is None:
        return False
    import torch

    return torch.cuda.is_available()


def maybe_relaunch(argv: list[str]) -> int | None:
    """Runs torchrun over this command and returns its exit code, or None to train in this process."""
    refuse_busy_output_dir(argv)
    s = launch_settings(argv)
    if s is None:
        return None
    from . import run_lock
    from .common import check_output_dir, parse_train_args

    # Config mistakes are reported here, once and in one line, rather than by every worker under torchrun.
    from .predict import predicts_only
    from .stop import STOP_REPORT_ENV, STOPPED_EXIT_CODE, run_forwarding_stops

    args = parse_train_args(argv)
    out = args.training.output_dir
    run_lock.acquire(out)  # this process holds output_dir for its workers (they see TUNEFORGE_LAUNCHED)
    try:
        if not predicts_only(args.training):
            check_output_dir(args.training, args.extra.get("overwrite_output_dir", False))
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={s['nproc_per_node']}", f"--nnodes={s['nnodes']}", f"--node_rank={s['node_rank']}",
            f"--master_addr={s['master_addr']}", f"--master_port={s['master_port']}",
            "-m", "tuneforge.cli", "train", *argv,
        ]
        with tempfile.TemporaryDirectory(prefix="tuneforge-launch-") as tmp:
            report = os.path.join(tmp, "stopped")
            env = dict(os.environ, TUNEFORGE_LAUNCHED="1", **{STOP_REPORT_ENV: report})
            code = run_forwarding_stops(cmd, env)  # SIGTERM/SIGINT here: a clean stop of every worker (stop.py)
            return STOPPED_EXIT_CODE if code == 0 and os.path.exists(report) else code
    finally:
        run_lock.release(out)
