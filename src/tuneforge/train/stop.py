"""Clean stop: the first SIGTERM or SIGINT (Ctrl-C, the web board's Stop) during training lets the current
optimizer step finish, logs it to trainer_log.jsonl, saves a checkpoint as save_steps would (weights,
optimizer, scheduler, RNG and trainer state), prints

    stopped at step N of M; checkpoint saved to DIR; resume with resume_from_checkpoint=true

and exits with STOPPED_EXIT_CODE. A second signal exits at once (the process dies by that signal), keeping
the checkpoints already saved.

Exit codes of `tuneforge train`: 0 finished; 75 stopped on request with a checkpoint to resume from (75 is
sysexits' EX_TEMPFAIL, "try again later": the run can be continued); 1 an error tuneforge explains in one
line; 130 interrupted before training began; anything else (or death by a signal) a failure.

Under a torchrun relaunch (launch.py) the launching process is the one a user or the board signals: it
forwards one SIGTERM to each worker (torchrun itself is kept out of it, in its own session, or it would
signal the workers a second time). The workers agree at every step end on whether any of them was asked to
stop, so all stop after the same step; they exit 0 so torchrun stays quiet, and rank 0 leaves a note at
TUNEFORGE_STOP_REPORT from which the launching process knows to exit with STOPPED_EXIT_CODE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

from transformers import TrainerCallback

from ..processes import STOPPED_EXIT_CODE, kill_tree

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_REPORT_ENV = "TUNEFORGE_STOP_REPORT"


class TrainingStopped(SystemExit):
    """Raised once training stopped cleanly on a signal; the process exits with its code."""


def _say(text: str) -> None:
    """Writes to stderr without Python's buffered streams, which a signal handler must not re-enter (a
    progress bar may be in the middle of writing)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopOnSignal(TrainerCallback):
    """Turns the first SIGTERM/SIGINT into a stop after the current optimizer step, with a checkpoint."""

    def __init__(self):
        self.signal_name: str | None = None  # the first signal received, once one came
        self.training_over = False  # after the last step: a signal waits for the final save (finish uninstalls)
        self.stopped_at: tuple[int, int] | None = None  # (step, max_steps) once training stopped for it
        self._previous: dict = {}

    def install(self) -> None:
        if self._previous or not _in_main_thread():  # Python takes signals in the main thread only
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            _say(f"\n[stop] second {name}: exiting at once; checkpoints saved earlier are kept\n")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal_name = name
        if int(os.environ.get("RANK", "0") or 0) == 0 and self.training_over:
            _say(f"\n[stop] {name}: training is over; the run finishes writing its outputs, then exits "
                 f"({name} again stops at once)\n")
        elif int(os.environ.get("RANK", "0") or 0) == 0:
            _say(f"\n[stop] {name}: finishing the current optimizer step, then saving a checkpoint and stopping "
                 f"({name} again stops at once)\n")

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            control.should_log = control.should_save = control.should_training_stop = True
            self.stopped_at = (state.global_step, state.max_steps)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.training_over = True  # still installed: a stop now must not cut the final save short

    def _agreed(self, args) -> bool:
        """Whether any process was asked to stop: every process must stop after the same step, or the ones
        still training would wait forever for the others in the next gradient all-reduce."""
        asked = self.signal_name is not None
        if args.world_size <= 1:
            return asked
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return asked
        flag = torch.tensor([1.0 if asked else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def stopper_of(trainer) -> StopOnSignal | None:
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnSignal)), None)


def exit_stopped(trainer, stopper: StopOnSignal) -> None:
    """Prints the stop line (rank 0) and raises TrainingStopped with the exit code (see the module's docstring)."""
    step, total = stopper.stopped_at
    folder = os.path.abspath(os.path.join(trainer.args.output_dir, f"checkpoint-{step}"))
    if trainer.args.process_index == 0:
        line = (f"stopped at step {step} of {total}; checkpoint saved to {folder}; "
                "resume with resume_from_checkpoint=true")
        print(line, flush=True)
        report = os.environ.get(STOP_REPORT_ENV)
        if report:
            with open(report, "w", encoding="utf-8") as f:
                f.write(line + "\n")
    raise TrainingStopped(0 if os.environ.get("TUNEFORGE_LAUNCHED") else STOPPED_EXIT_CODE)


def run_forwarding_stops(cmd: list[str], env: dict) -> int:
    """Runs a launcher (torchrun) and waits for it. The first SIGTERM/SIGINT this process gets is sent on, as
    one SIGTERM, to each of the launcher's workers (to the launcher itself while it has none yet); a second
    kills them all at once. Returns the launcher's exit code, or 128 + the signal when a stop ended it
    otherwise than cleanly."""
    received: list[int] = []
    started: list[subprocess.Popen] = []

    def forward(signum, frame):
        received.append(signum)
        if not started:
            return  # the launcher is not running yet: it is told as soon as it is
        if len(received) == 1:
            _signal_workers(started[0].pid, signal.SIGTERM)
        else:
            _say(f"\n[stop] second {signal.Signals(signum).name}: stopping every process at once\n")
            kill_tree(started[0].pid)

    # Installed before the launcher starts: a stop in between must not kill this process and orphan it.
    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS} if _in_main_thread() else {}
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        started.append(proc)
        if received:
            _signal_workers(proc.pid, signal.SIGTERM)
        code = proc.wait()
    except BaseException:
        if started:
            kill_tree(started[0].pid)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if len(received) > 1 or (received and code != 0):
        return 128 + received[-1]
    return code


def _signal_workers(pid: int, sig: int) -> None:
    import psutil

    try:
        launcher = psutil.Process(pid)
        workers = launcher.children()
    except psutil.Error:
        return
    for p in workers or [launcher]:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
