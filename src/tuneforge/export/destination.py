"""Writing an export folder so that a failed or interrupted export leaves nothing half written.

Everything is written into a hidden sibling folder; only a complete export is renamed into place. An existing
`export_dir` is replaced only when it is an earlier export (it holds the marker file); a folder holding
anything else is refused before any work starts, so an export never deletes a user's files.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import ExportError

MARKER = "tuneforge_export.json"


def check_destination(export_dir: str) -> Path:
    """The resolved export folder; an ExportError when it exists and holds something other than an export."""
    path = Path(export_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ExportError(f"export_dir: {export_dir} is a file; give a folder path")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise ExportError(f"export_dir: {export_dir} already holds files that are not a tuneforge export; "
                          "choose a new or empty folder (nothing was written)")
    return path


@contextmanager
def staged_folder(path: Path, description: dict):
    """Yields a scratch folder beside `path`; on success it replaces `path`, on failure it is removed."""
    scratch = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        yield scratch
        (scratch / MARKER).write_text(json.dumps({**description, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                                 indent=2, ensure_ascii=False) + "\n")
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
        scratch.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
