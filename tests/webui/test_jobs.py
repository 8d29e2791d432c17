"""The board's jobs: subprocesses with a log, a state, a clean stop and a kill; one real `tuneforge train`."""

import json
import os
import re
import sys
import time

import pytest

from tests.train.test_train_e2e import ROWS, base_args
from tuneforge.train import run_lock
from tuneforge.webui.jobs import STOPPED_EXIT_CODE, Job, JobError, JobTable
from tuneforge.webui.progress import read_progress, read_tail


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False))
    return str(path)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_output_goes_to_the_log_and_the_state_follows_the_exit_code(tmp_path):
    log = str(tmp_path / "logs" / "job.txt")
    job = Job(python("import sys; print('out'); print('err', file=sys.stderr); print('a\\rb 50%\\rb 100%'); "
                     "sys.stdout.write('partial')"), log)
    assert job.wait(30) == 0 and job.state == "finished" and job.describe() == "finished"
    assert job.tail(3).splitlines() == ["err", "b 100%", "partial"]
    assert "out" in job.tail(10) and "[webui]" in job.tail(10)  # the command heads the log
    failed = Job(python("import sys; sys.exit(3)"), log)
    assert failed.wait(30) == 3 and failed.state == "failed" and failed.describe() == "failed (exit code 3)"
    assert read_tail(str(tmp_path / "missing.txt")) == ""
    clean = Job(python(f"import sys; sys.exit({STOPPED_EXIT_CODE})"), log)
    clean.wait(30)
    assert clean.state == "stopped"


def test_stop_kills_what_ignores_sigterm_and_its_children(tmp_path):
    """A child in a session of its own (as torchrun's workers are) dies with it."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    job = Job(python(code), str(tmp_path / "log.txt"))
    wait_until(lambda: "ready" in job.tail(5).splitlines())
    assert job.state == "running" and job.poll() is None
    start = time.monotonic()
    assert job.stop(timeout=1) == "stopped"
    assert time.monotonic() - start < 10
    assert job.describe() == "stopped (killed by SIGKILL)"
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), 10)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_table_refuses_a_busy_output_dir(tmp_path):
    table = JobTable()
    out = str(tmp_path / "run")
    run_lock.acquire(out)
    try:
        with pytest.raises(JobError, match="is in use by a run"):
            table.start_train("cfg.yaml", out)
    finally:
        run_lock.release(out)
    assert not os.path.exists(os.path.join(out, "running_log.txt"))  # nothing was started or written
    job = table.start("export", python("import time; time.sleep(30)"), str(tmp_path / "export.txt"))
    with pytest.raises(JobError, match="still running"):
        table.start("export", python("pass"), str(tmp_path / "export.txt"))
    assert table.get("export") is job and table.running() == [job]
    table.stop_all(timeout=5)
    assert job.state == "stopped" and table.running() == []


def test_a_real_run_is_watched_stopped_and_read_back(tiny_model_dir, sft_file, tmp_path):
    out = str(tmp_path / "run")
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {out}\nstage: sft\n")
    overrides = base_args(tiny_model_dir, sft_file, out, max_steps=1000, lr_scheduler_type="constant")
    table = JobTable()
    job = table.start_train(str(path), out, overrides, env={**os.environ, "TUNEFORGE_DATA_CACHE": str(tmp_path / "cache")})
    wait_until(lambda: read_progress(out).current_step >= 2 or job.poll() is not None, 120)
    running = read_progress(out)
    assert job.state == "running", job.tail(40)
    assert running.status == "running" and running.in_use["pid"] == job.pid
    assert running.total_steps == 1000 and 0 < running.percent < 100 and running.elapsed.count(":") == 2
    with pytest.raises(JobError, match="in use"):
        table.start_train(str(path), out)
    assert job.stop(timeout=60) == "stopped" and job.returncode == STOPPED_EXIT_CODE
    m = re.search(r"stopped at step (\d+) of 1000; checkpoint saved to (\S+);", job.tail(20))
    assert m, job.tail(40)
    step = int(m.group(1))
    done = read_progress(out)
    assert done.status == "stopped" and done.in_use is None
    assert done.checkpoint == os.path.join(out, f"checkpoint-{step}") == m.group(2)
    assert done.current_step == step and [s for s, _ in done.series["loss"]] == list(range(1, step + 1))
    assert "stopped at step" in done.log_tail
