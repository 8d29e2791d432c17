"""One run per output_dir: the lock, who holds it, and what a second run is told."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tuneforge.cli import main
from tuneforge.train import run_lock
from tuneforge.train.common import check_output_dir

HOLDER = """
import sys, time
from tuneforge.train import run_lock
run_lock.acquire(sys.argv[1], command="tuneforge train held.yaml")
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """holder(folder) -> Popen of another process holding folder's lock (killed at teardown)."""
    procs = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def snapshot(folder):
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}


def test_in_use_names_the_holder_and_a_kill_releases_it(tmp_path, holder):
    out = tmp_path / "run"
    proc = holder(out)
    info = run_lock.in_use(str(out))
    assert info["pid"] == proc.pid and info["command"] == "tuneforge train held.yaml" and info["started"]
    with pytest.raises(run_lock.OutputDirInUse, match=rf"output_dir {out} is in use by a run \(pid {proc.pid}, "
                                                       r"started .*\); stop it or pick another output_dir"):
        run_lock.acquire(str(out))
    proc.kill()  # no chance to clean up: the OS drops the lock, the file stays behind
    proc.wait()
    assert os.path.exists(out / run_lock.LOCK_FILE) and run_lock.in_use(str(out)) is None
    lock = run_lock.acquire(str(out))
    try:
        assert run_lock.in_use(str(out))["pid"] == os.getpid()
        assert run_lock.acquire(str(out)) is lock  # the same process claiming again
    finally:
        run_lock.release(str(out))
    assert not os.path.exists(out / run_lock.LOCK_FILE) and run_lock.in_use(str(out)) is None


def test_in_use_reads_only(tmp_path):
    assert run_lock.in_use(str(tmp_path / "nowhere")) is None
    assert not os.path.exists(tmp_path / "nowhere")
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / run_lock.LOCK_FILE).write_text("{not json")
    assert run_lock.in_use(str(tmp_path / "stale")) is None


def test_lock_file_is_not_a_previous_run(tmp_path):
    from types import SimpleNamespace

    out = tmp_path / "run"
    out.mkdir()
    (out / run_lock.LOCK_FILE).write_text("")  # left by a killed run
    check_output_dir(SimpleNamespace(output_dir=str(out), resume_from_checkpoint=None), overwrite=False)


def test_only_the_launching_process_or_rank_zero_holds_it(monkeypatch):
    for name in ("TUNEFORGE_LAUNCHED", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert run_lock.should_hold()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    assert not run_lock.should_hold()  # a worker of a user's own torchrun
    monkeypatch.setenv("RANK", "0")
    assert run_lock.should_hold()
    monkeypatch.setenv("TUNEFORGE_LAUNCHED", "1")
    assert not run_lock.should_hold()  # the `tuneforge train` that launched torchrun holds it


def test_second_train_is_refused_at_once_without_touching_the_folder(tmp_path, holder, capsys, tiny_model_dir):
    out = tmp_path / "run"
    proc = holder(out)
    (out / "trainer_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (out / "checkpoint-1").mkdir()
    before = snapshot(out)
    data = tmp_path / "rows.json"
    data.write_text('[{"instruction": "Hi", "input": "", "output": "Hello"}]')
    argv = ["train", f"model_name_or_path={tiny_model_dir}", f"dataset={data}", "template=auto", f"output_dir={out}",
            "overwrite_output_dir=true"]
    start = time.monotonic()
    for extra in ([], ["nproc_per_node=2"], ["do_predict=true", "do_train=false", "predict_with_generate=true"]):
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err == (f"error: output_dir {out} is in use by a run (pid {proc.pid}, started "
                       f"{run_lock.in_use(str(out))['started']}); stop it or pick another output_dir")
    assert time.monotonic() - start < 10
    assert snapshot(out) == before


def test_claim_takes_the_lock_before_the_previous_run_check(tmp_path, holder):
    """A folder holding a run that is still running is reported as in use, not as a finished run."""
    from types import SimpleNamespace

    from tuneforge.train.common import claim_output_dir

    out = tmp_path / "run"
    holder(out)
    (out / "trainer_log.jsonl").write_text("")
    args = SimpleNamespace(training=SimpleNamespace(output_dir=str(out), resume_from_checkpoint=None), extra={})
    with pytest.raises(run_lock.OutputDirInUse):
        claim_output_dir(args)


def test_release_deletes_the_file_only_while_holding_it(tmp_path):
    out = str(tmp_path / "run")
    lock = run_lock.acquire(out)
    os.unlink(os.path.join(out, run_lock.LOCK_FILE))  # someone removed it; another run took the new file
    other = subprocess.Popen([sys.executable, "-c", HOLDER, out], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "ready"
        lock.release()
        assert os.path.exists(os.path.join(out, run_lock.LOCK_FILE))  # not ours to delete
        assert run_lock.in_use(out)["pid"] == other.pid
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
