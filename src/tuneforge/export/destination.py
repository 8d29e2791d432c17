"""Writing an export folder so that a failed, interrupted or concurrent export leaves nothing half written.

Everything is written into a hidden sibling folder; only a complete export is renamed into place. An existing
`export_dir` is replaced only when it is an earlier export holding nothing but what that export wrote (the
marker file lists it), so an export never deletes a user's files. A lock beside the folder keeps two exports
from writing the same folder at once; scratch folders of exports that were killed are swept away under it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError

MARKER = "tuneforge_export.json"


def check_destination(export_dir: str) -> Path:
    """The resolved export folder; an ExportError when it exists and holds something an export did not write."""
    path = Path(export_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ExportError(f"export_dir: {export_dir} is a file; give a folder path")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not (path / MARKER).is_file():
        raise ExportError(f"export_dir: {export_dir} already holds files that are not a tuneforge export; "
                          "choose a new or empty folder (nothing was written)")
    written = set(json.loads((path / MARKER).read_text()).get("files", [])) | {MARKER}
    extra = sorted(set(os.listdir(path)) - written)
    if extra:
        raise ExportError(f"export_dir: {export_dir} is an earlier export, but {', '.join(extra[:3])} was added to it "
                          "since; move that out or choose another folder (re-exporting replaces the folder)")
    return path


@contextmanager
def _terminate_as_exit():
    """SIGTERM (kill, timeout, a scheduler) unwinds like Ctrl-C, so the scratch folder is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def staged_folder(path: Path, description: dict):
    """Yields a scratch folder beside `path`; on success it replaces `path`, on failure it is removed."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ExportError(f"export_dir: another export is writing {path} right now; wait for it or choose another "
                          "folder") from None
    try:
        for stale in path.parent.glob(f".{path.name}.partial-*"):  # left by an export that was killed
            shutil.rmtree(stale, ignore_errors=True)
        scratch = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        with _terminate_as_exit():
            try:
                yield scratch
                files = sorted(os.listdir(scratch))
                record = {**description, "files": files, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                (scratch / MARKER).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
                _replace(path, scratch)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def _replace(path: Path, scratch: Path) -> None:
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
    try:
        scratch.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)  # the earlier export stays where it was
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
