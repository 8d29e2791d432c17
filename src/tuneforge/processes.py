"""Small process facts shared by training and the board, importable without torch: the exit code of a run
stopped on request, and killing a process with everything it started."""

from __future__ import annotations

STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; resume_from_checkpoint continues it


def kill_tree(pid: int) -> None:
    """SIGKILL to a process and all its descendants, found before any is killed (torchrun's workers and
    DataLoader workers sit in process groups or sessions of their own, out of reach of a group kill)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
