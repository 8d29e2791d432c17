"""The board's running commands: `tuneforge train CONFIG.yaml` (or export, ...) as subprocesses it can
watch, stop and read the output of.

A Job is one subprocess, started in a session of its own (a terminal's Ctrl-C or the board's own shutdown
does not reach it), with stdout and stderr merged and appended to a log file: `<output_dir>/running_log.txt`
for a training run, as LLaMA-Factory names it. Stopping sends SIGTERM to the `tuneforge` process only, which
stops training cleanly after the current step with a checkpoint (train/stop.py; signalling its whole group
would also hit DataLoader workers, whose death by a signal fails the run); after the timeout, the process
and all its descendants are killed.

States: running, finished (exit code 0), stopped (exit code 75: stopped on request with a checkpoint to
resume from; or ended otherwise after the board asked it to stop), failed (any other exit code).

There is no module-level state: the page owns a JobTable (one per server, or per user).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from ..errors import TuneforgeError
from ..processes import STOPPED_EXIT_CODE, kill_tree
from ..train.run_lock import in_use, in_use_message
from .progress import RUNNING_LOG, read_tail

# Launch-time variables of the process running the board that would confuse the run it starts.
INHERITED_NOT = ("TUNEFORGE_LAUNCHED", "LOCAL_RANK", "RANK", "WORLD_SIZE", "TUNEFORGE_STOP_REPORT")


class JobError(TuneforgeError):
    """A job that cannot be started as asked."""


class Job:
    def __init__(self, argv: list[str], log_path: str, cwd: str | None = None, env: dict | None = None,
                 output_dir: str | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.output_dir = output_dir
        self.started_at = time.time()
        self.stop_requested = False
        log_dir = os.path.dirname(os.path.abspath(log_path))
        os.makedirs(log_dir, exist_ok=True)
        run_env = {k: v for k, v in (os.environ if env is None else env).items() if k not in INHERITED_NOT}
        run_env["PYTHONUNBUFFERED"] = "1"  # the log shows lines as they are printed
        with open(log_path, "ab") as log:
            log.write(f"\n[webui] {time.strftime('%Y-%m-%d %H:%M:%S')} $ {self.command}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=cwd, env=run_env, start_new_session=True)

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        """The exit code, or None while running. Never blocks."""
        return self._proc.poll()

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    @property
    def state(self) -> str:
        code = self.poll()
        if code is None:
            return "running"
        if code == 0:
            return "finished"
        if code == STOPPED_EXIT_CODE or self.stop_requested:
            return "stopped"
        return "failed"

    def describe(self) -> str:
        """One line for the page: the state, and the exit code or signal."""
        code, state = self.poll(), self.state
        if code is None:
            return f"running (pid {self.pid})"
        if code == STOPPED_EXIT_CODE:
            return "stopped; a checkpoint was saved (resume with resume_from_checkpoint=true)"
        if code < 0:
            return f"{state} (killed by {signal.Signals(-code).name})"
        return state if code == 0 else f"{state} (exit code {code})"

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once the process ended, or None when timeout (seconds) passed first."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def request_stop(self) -> None:
        """Asks the run to stop (SIGTERM to the tuneforge process); returns at once."""
        if self.poll() is not None:
            return
        self.stop_requested = True
        try:
            self._proc.send_signal(signal.SIGTERM)  # a no-op once reaped: never a reused pid
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Kills the process and everything it started, at once."""
        self.stop_requested = True
        if self.poll() is not None:
            return
        kill_tree(self.pid)
        if self.poll() is None:  # not reaped yet, so the group id is still its own
            try:
                os.killpg(self.pid, signal.SIGKILL)  # anything left in its group
            except OSError:
                pass
        self.wait(10)

    def stop(self, timeout: float = 60.0) -> str:
        """request_stop, then waits up to timeout seconds for the run to save its checkpoint and exit, then
        kills it. Returns the state."""
        self.request_stop()
        if self.wait(timeout) is None:
            self.kill()
        return self.state

    def tail(self, n_lines: int = 40) -> str:
        """The last n_lines of the log ("" before there is one)."""
        return read_tail(self.log_path, n_lines)


class JobTable:
    """The jobs one board started, by name (a training run's name is its output_dir)."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}

    def start_train(self, config_path: str, output_dir: str, overrides: list[str] = (), cwd: str | None = None,
                    env: dict | None = None, python: str = sys.executable) -> Job:
        """Runs `tuneforge train config_path *overrides`, logging to <output_dir>/running_log.txt. output_dir
        must be the config's. Refused (JobError) while a run, from this board or elsewhere, uses output_dir."""
        key = os.path.abspath(os.path.join(cwd or "", output_dir))
        self.check_free(key)
        argv = [python, "-m", "tuneforge.cli", "train", config_path, *overrides]
        job = Job(argv, os.path.join(key, RUNNING_LOG), cwd=cwd, env=env, output_dir=key)
        self._jobs[key] = job
        return job

    def check_free(self, output_dir: str) -> None:
        """JobError when a run, from this board or elsewhere, uses output_dir (an absolute path)."""
        job = self._jobs.get(output_dir)
        if job is not None and job.poll() is None:
            raise JobError(f"output_dir {output_dir} is in use by a run this page started (pid {job.pid}); "
                           "stop it or pick another output_dir")
        holder = in_use(output_dir)
        if holder is not None:
            raise JobError(in_use_message(output_dir, holder))

    def start(self, name: str, argv: list[str], log_path: str, cwd: str | None = None, env: dict | None = None) -> Job:
        """Any other command (e.g. [sys.executable, "-m", "tuneforge.cli", "export", cfg]) under a name of
        the page's choosing."""
        job = self._jobs.get(name)
        if job is not None and job.poll() is None:
            raise JobError(f"{name} is still running (pid {job.pid}); stop it first")
        job = self._jobs[name] = Job(argv, log_path, cwd=cwd, env=env)
        return job

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name) or self._jobs.get(os.path.abspath(name))

    def items(self) -> list[tuple[str, Job]]:
        return list(self._jobs.items())

    def running(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.poll() is None]

    def stop_all(self, timeout: float = 60.0) -> None:
        """Asks every running job to stop, then waits up to timeout seconds in all before killing the rest
        (the board shutting down)."""
        jobs = self.running()
        for job in jobs:
            job.request_stop()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.wait(max(0.0, deadline - time.monotonic())) is None:
                job.kill()
