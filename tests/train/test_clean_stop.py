"""SIGTERM/SIGINT stop a run cleanly after the current step, with a checkpoint that resume_from_checkpoint=true
continues exactly; a second signal stops at once. One real `tuneforge train` subprocess, stopped mid-run."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.train.test_train_e2e import ROWS, base_args, losses
from tuneforge.cli import main
from tuneforge.train import run_lock, stop
from tuneforge.train.runner import run_train

# A constant learning rate, so a run of any max_steps trains its first steps alike: the stopped run can be
# long enough never to end by itself, and still be compared with a short uninterrupted one.
CONSTANT = dict(lr_scheduler_type="constant", max_steps=1000)


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False))
    return str(path)


def records(out):
    with open(os.path.join(out, "trainer_log.jsonl")) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]  # a line still being written waits


def wait_for(condition, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def stopped_run(tiny_model_dir, sft_file, tmp_path_factory):
    """A run stopped by SIGTERM after it logged two steps; what was seen while it ran."""
    tmp = tmp_path_factory.mktemp("stopped")
    out = str(tmp / "run")
    argv = base_args(tiny_model_dir, sft_file, out, **CONSTANT)
    env = dict(os.environ, TUNEFORGE_DATA_CACHE=str(tmp / "cache"), PYTHONUNBUFFERED="1")
    log = tmp / "output.txt"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "train", *argv], stdout=f,
                                stderr=subprocess.STDOUT, env=env)
    seen = {}
    try:
        log_path = os.path.join(out, "trainer_log.jsonl")
        wait_for(lambda: os.path.exists(log_path) and len(records(out)) >= 2, 120, "two logged steps", proc)
        seen["in_use"] = run_lock.in_use(out)
        seen["before"] = sorted(os.listdir(out))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):  # the second run: in this process, refused before torch is needed
            seen["second"] = (main(["train", *argv]), err.getvalue())
        seen["after"] = sorted(os.listdir(out))
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return dict(out=out, argv=argv, proc=proc, output=log.read_text(errors="replace"), **seen)


def test_second_run_into_the_folder_is_refused_while_the_first_runs(stopped_run):
    holder = stopped_run["in_use"]
    assert holder["pid"] == stopped_run["proc"].pid and holder["command"].startswith("tuneforge train ")
    code, err = stopped_run["second"]
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: output_dir {stopped_run['out']} is in use by a run (pid {holder['pid']}, started {holder['started']}); "
        "stop it or pick another output_dir"]
    assert run_lock.LOCK_FILE in stopped_run["before"]
    assert set(stopped_run["before"]) <= set(stopped_run["after"])  # nothing of the first run's was removed


def test_sigterm_saves_a_checkpoint_and_exits_with_the_stop_code(stopped_run):
    out, output = stopped_run["out"], stopped_run["output"]
    assert stopped_run["proc"].returncode == stop.STOPPED_EXIT_CODE == 75
    m = re.search(r"^stopped at step (\d+) of 1000; checkpoint saved to (\S+); resume with resume_from_checkpoint=true$",
                  output, re.M)
    assert m, output[-3000:]
    step, folder = int(m.group(1)), m.group(2)
    assert step >= 2 and folder == os.path.join(os.path.abspath(out), f"checkpoint-{step}")
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert os.path.exists(os.path.join(folder, name)), name
    assert json.load(open(os.path.join(folder, "trainer_state.json")))["global_step"] == step
    assert [r["step"] for r in records(out)] == list(range(1, step + 1))  # the last step is logged
    assert "[stop] SIGTERM: finishing the current optimizer step" in output
    assert "Traceback" not in output
    assert run_lock.in_use(out) is None and not os.path.exists(os.path.join(out, run_lock.LOCK_FILE))
    assert not os.path.exists(os.path.join(out, "all_results.json"))  # the run did not finish


def test_resume_continues_like_an_uninterrupted_run(stopped_run, tiny_model_dir, sft_file, tmp_path):
    out = stopped_run["out"]
    step = records(out)[-1]["step"]
    total = step + 2
    whole = str(tmp_path / "whole")
    run_train(base_args(tiny_model_dir, sft_file, whole, **{**CONSTANT, "max_steps": total}))
    run_train(base_args(tiny_model_dir, sft_file, out, **{**CONSTANT, "max_steps": total},
                        overwrite_output_dir=False, resume_from_checkpoint="true"))
    assert [r["step"] for r in records(out)] == list(range(1, total + 1))
    assert losses(out) == pytest.approx(losses(whole), abs=1e-5)
    assert os.path.exists(os.path.join(out, "all_results.json"))


def test_second_signal_exits_at_once(monkeypatch):
    """The handler itself: the first signal asks for a stop, the second kills the process by that signal."""
    calls = []
    monkeypatch.setattr(stop.os, "kill", lambda pid, sig: calls.append(("kill", pid, sig)))
    monkeypatch.setattr(stop.signal, "signal", lambda sig, handler: calls.append(("handler", sig, handler)))
    stopper = stop.StopOnSignal()
    stopper._on_signal(signal.SIGINT, None)
    assert stopper.signal_name == "SIGINT" and calls == []
    stopper._on_signal(signal.SIGINT, None)
    assert calls == [("handler", signal.SIGINT, signal.SIG_DFL), ("kill", os.getpid(), signal.SIGINT)]


def test_callback_stops_after_the_step_and_asks_for_a_checkpoint():
    from types import SimpleNamespace

    from transformers import TrainerControl

    stopper, control = stop.StopOnSignal(), TrainerControl()
    args, state = SimpleNamespace(world_size=1), SimpleNamespace(global_step=4, max_steps=10)
    stopper.on_step_end(args, state, control)
    assert not control.should_training_stop and stopper.stopped_at is None
    stopper.signal_name = "SIGTERM"
    stopper.on_step_end(args, state, control)
    assert control.should_training_stop and control.should_save and control.should_log
    assert stopper.stopped_at == (4, 10)


LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], start_new_session=True)
sys.exit(worker.wait())
"""
WORKER = """
import signal, sys, time
def on_term(signum, frame):
    open(sys.argv[1] + ".stopped", "a").write("x")
    time.sleep(float(sys.argv[2]))  # saving a checkpoint
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
sys.exit(3)
"""


@pytest.mark.parametrize("signals", [1, 2])
def test_launching_process_forwards_one_stop_to_the_workers(tmp_path, signals):
    """As under torchrun: the worker (in a session of its own) gets one SIGTERM from the launching process,
    and its clean exit is the launcher's; a second signal kills them all at once."""
    base = str(tmp_path / "w")
    saving = 0.5 if signals == 1 else 60
    cmd = [sys.executable, "-c", LAUNCHER, WORKER, base, str(saving)]

    def signal_me():
        wait_for(lambda: os.path.exists(base + ".ready"), 30, "the worker")
        for _ in range(signals):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=signal_me)
    thread.start()
    start = time.monotonic()
    code = stop.run_forwarding_stops(cmd, dict(os.environ))
    thread.join()
    assert time.monotonic() - start < 20
    assert open(base + ".stopped").read() == "x"  # one SIGTERM reached the worker
    assert code == (0 if signals == 1 else 128 + signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous
