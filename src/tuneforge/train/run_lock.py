"""One run per output_dir: `tuneforge train` holds an exclusive OS lock on `<output_dir>/.tuneforge-run.lock`
while it runs, so a second run into the same folder (from the command line or the web board) is refused at
once instead of both writing the same checkpoints and logs.

The lock is a `flock` on the file, not the file's existence: the OS drops it when the process ends, however
it ends (a killed run leaves at most a stale file, which the next run takes over). The file holds who has it
(pid, host, start time, command) for the refusal message and for `in_use`, which the board calls to show
whether a folder is busy. A run that ends normally deletes the file while still holding the lock; a run that
starts checks, after locking, that it locked the file that is still at the path, so the deletion never lets
two runs in.

Under a launcher only one process holds it: the `tuneforge train` that relaunched itself under torchrun
(its workers see TUNEFORGE_LAUNCHED), or global rank 0 of a torchrun a user started.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not kept apart
    fcntl = None

LOCK_FILE = ".tuneforge-run.lock"

# Locks this process holds, by the folder's real path. Kept for the life of the run (the lock lives as long
# as its open file); a second claim of the same folder by the same process (in-process tests) reuses it.
_HELD: dict[str, "RunLock"] = {}


class OutputDirInUse(ConfigError):
    """Another process is running into this output_dir."""


class RunLock:
    def __init__(self, output_dir: str, fd: int | None, info: dict):
        self.output_dir, self.fd, self.info = output_dir, fd, info

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, LOCK_FILE)

    def release(self) -> None:
        """Deletes the lock file (while still holding it) and unlocks. Idempotent."""
        _HELD.pop(_key(self.output_dir), None)
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor of the open file drops the flock


def should_hold() -> bool:
    """Whether this process is the one that holds the lock of its run (see the module's docstring)."""
    if os.environ.get("TUNEFORGE_LAUNCHED"):
        return False  # the process that launched torchrun holds it
    if os.environ.get("LOCAL_RANK") is not None:
        return int(os.environ.get("RANK", "0") or 0) == 0
    return True


def acquire(output_dir: str, command: str | None = None) -> RunLock:
    """Locks output_dir for this process (creating the folder); OutputDirInUse when another process has it."""
    key = _key(output_dir)
    if key in _HELD:
        return _HELD[key]
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command or _command(), "output_dir": os.path.abspath(output_dir)}
    os.makedirs(output_dir, exist_ok=True)
    if fcntl is None:
        lock = _HELD[key] = RunLock(output_dir, None, info)
        return lock
    path = os.path.join(output_dir, LOCK_FILE)
    # in_use() holds a shared lock for an instant while it reads; tries for 0.3 s tell that apart from a run.
    deadline = time.monotonic() + 0.3
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_info(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise OutputDirInUse(in_use_message(output_dir, holder)) from None
        if not _same_file(fd, path):  # the holder deleted it as it released: lock the file now at the path
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        lock = _HELD[key] = RunLock(output_dir, fd, info)
        return lock


def release(output_dir: str) -> None:
    """Releases this process's lock on output_dir, if it holds one."""
    lock = _HELD.get(_key(output_dir))
    if lock is not None:
        lock.release()


def in_use(output_dir: str) -> dict | None:
    """Who runs into output_dir now: {"pid", "host", "started", "command", "output_dir"} (values None when the
    run has not written them yet), or None when no process holds it. Reads only; never creates anything."""
    held = _HELD.get(_key(output_dir))
    if held is not None:
        return dict(held.info)
    if fcntl is None:
        return None
    try:
        fd = os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            info = _read_info(fd)
            return {k: info.get(k) for k in ("pid", "host", "started", "command", "output_dir")}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def in_use_message(output_dir: str, holder: dict) -> str:
    who = f"pid {holder['pid']}" if holder.get("pid") else "another process"
    host = holder.get("host")
    if host and host != socket.gethostname():
        who += f" on {host}"
    if holder.get("started"):
        who += f", started {holder['started']}"
    return f"output_dir {output_dir} is in use by a run ({who}); stop it or pick another output_dir"


def _key(output_dir: str) -> str:
    return os.path.realpath(output_dir)


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_info(fd: int) -> dict:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
        info = json.loads(text.strip() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}  # being written right now


def _command() -> str:
    return shlex.join(["tuneforge", *sys.argv[1:]])
