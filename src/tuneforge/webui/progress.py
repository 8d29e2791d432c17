"""What a training folder says about its run, for the board: read from the files `tuneforge train` writes,
so a run started from the command line shows the same as one the board started.

- trainer_log.jsonl (train/callbacks.py; LLaMA-Factory's field names are read too): the step, the total,
  the times and the curves. It is read incrementally by a ProgressReader, and a last line still being
  written is left for the next read.
- the run lock (train/run_lock.py): whether a process is running into the folder now, and which.
- checkpoint-N folders: the latest complete one, which `resume_from_checkpoint: true` continues.
- running_log.txt (written by the board's jobs): its last lines.

Nothing here imports torch or transformers, and nothing is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ..train.run_lock import in_use

TRAINER_LOG = "trainer_log.jsonl"
RUNNING_LOG = "running_log.txt"
RESULTS = "all_results.json"
# Curves besides loss and eval_loss: the stages' reward, accuracy, margin and score metrics (and eval_ ones).
CURVE_PATTERN = re.compile(r"reward|accurac|margin|score")
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Progress:
    output_dir: str
    status: str = "empty"  # running | finished | stopped (ended before its last step) | empty
    current_step: int = 0
    total_steps: int | None = None
    percent: float | None = None
    epoch: float | None = None
    elapsed: str = ""  # "H:MM:SS" at the last logged step
    remaining: str = ""
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # name -> [(step, value)]
    last_record: dict = field(default_factory=dict)
    in_use: dict | None = None  # run_lock.in_use: pid, host, started, command
    checkpoint: str | None = None  # latest complete checkpoint folder
    log_tail: str = ""


class ProgressReader:
    """Reads an output folder's progress again and again, parsing only what trainer_log.jsonl gained since
    the last read. One per folder being watched (per page or user; it holds no shared state)."""

    def __init__(self, output_dir: str, tail_lines: int = 40):
        self.output_dir = output_dir
        self.tail_lines = tail_lines
        self._reset()

    def _reset(self) -> None:
        self._file_id = None
        self._offset = 0
        self._series: dict[str, list[tuple[int, float]]] = {}
        self._last: dict = {}
        self._max_step = 0

    def read(self) -> Progress:
        self._read_new_records()
        out = self.output_dir
        progress = Progress(output_dir=out, series={k: list(v) for k, v in self._series.items()},
                            last_record=dict(self._last))
        self._fill_from_record(progress, self._last)
        progress.in_use = in_use(out)
        progress.checkpoint = latest_checkpoint(out)
        progress.status = _status(out, progress)
        if progress.status == "finished" and progress.total_steps:
            progress.remaining = format_seconds(0)
        progress.log_tail = read_tail(os.path.join(out, RUNNING_LOG), self.tail_lines)
        return progress

    def _read_new_records(self) -> None:
        path = os.path.join(self.output_dir, TRAINER_LOG)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if self._file_id != (st.st_dev, st.st_ino) or st.st_size < self._offset:
                    self._reset()  # a new run replaced the log
                    self._file_id = (st.st_dev, st.st_ino)
                f.seek(self._offset)
                data = f.read()
        except OSError:
            self._reset()
            return
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        self._offset += end
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self._add(record)

    def _add(self, record: dict) -> None:
        step = _step_of(record)
        if step is None:
            return
        if step < self._max_step:
            # A run resumed from an earlier checkpoint logs those steps again: its records replace the later ones.
            for name in list(self._series):
                self._series[name] = [p for p in self._series[name] if p[0] < step]
                if not self._series[name]:
                    del self._series[name]
        self._max_step = step
        for key, value in record.items():
            if (key in ("loss", "eval_loss") or CURVE_PATTERN.search(key)) and _is_number(value):
                self._series.setdefault(key, []).append((step, float(value)))
        self._last = {**self._last, **record} if _step_of(self._last) == step else dict(record)

    @staticmethod
    def _fill_from_record(progress: Progress, record: dict) -> None:
        if not record:
            return
        progress.current_step = _step_of(record) or 0
        total = record.get("total_steps")
        progress.total_steps = int(total) if _is_number(total) and total > 0 else None
        if progress.total_steps:
            progress.percent = round(100.0 * progress.current_step / progress.total_steps, 2)
        elif _is_number(record.get("percentage")):
            progress.percent = float(record["percentage"])
        progress.epoch = record.get("epoch") if _is_number(record.get("epoch")) else None
        progress.elapsed = _time_text(record, "elapsed_s", "elapsed_time")
        progress.remaining = _time_text(record, "eta_s", "remaining_time")


def read_progress(output_dir: str, tail_lines: int = 40) -> Progress:
    """The progress of the run in output_dir (see Progress), read from its files in one go."""
    return ProgressReader(output_dir, tail_lines).read()


def latest_checkpoint(output_dir: str) -> str | None:
    """The path of the highest-numbered complete checkpoint-N folder (its trainer_state.json written), or None."""
    try:
        names = os.listdir(output_dir)
    except OSError:
        return None
    found = []
    for name in names:
        m = CHECKPOINT_PATTERN.match(name)
        if m and os.path.isfile(os.path.join(output_dir, name, "trainer_state.json")):
            found.append((int(m.group(1)), name))
    return os.path.join(output_dir, max(found)[1]) if found else None


def read_tail(path: str, n_lines: int = 40, max_bytes: int = 256 * 1024) -> str:
    """The last n_lines of a log file as a terminal would show them (a progress bar's carriage-return
    updates collapse to the latest); "" when the file does not exist yet. Reads at most max_bytes."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(size - start)
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if start > 0:
        lines = lines[1:]  # cut inside a line
    if lines and lines[-1] == "":
        lines.pop()
    shown = [_as_displayed(line) for line in lines]
    return "\n".join(shown[-n_lines:] if n_lines > 0 else [])


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _as_displayed(line: str) -> str:
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


def _status(out: str, progress: Progress) -> str:
    if progress.in_use is not None:
        return "running"
    log, results = os.path.join(out, TRAINER_LOG), os.path.join(out, RESULTS)
    if os.path.isfile(results) and (not os.path.isfile(log) or os.path.getmtime(results) >= os.path.getmtime(log)):
        return "finished"
    if os.path.isfile(log) or progress.checkpoint:
        return "stopped"
    return "empty"


def _step_of(record: dict) -> int | None:
    step = record.get("step", record.get("current_steps"))
    return int(step) if _is_number(step) else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _time_text(record: dict, seconds_key: str, text_key: str) -> str:
    if _is_number(record.get(seconds_key)):
        return format_seconds(record[seconds_key])
    value = record.get(text_key)
    return value if isinstance(value, str) else ""
