"""A run's progress read back from its output_dir: steps, times, curves, checkpoint, lock and log tail."""

import json
import os

import pytest

from tests.train.test_train_e2e import ROWS, base_args
from tuneforge.train import run_lock
from tuneforge.webui.progress import ProgressReader, format_seconds, latest_checkpoint, read_progress


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.json"
    path.write_text(json.dumps(ROWS, ensure_ascii=False))
    return str(path)


def write_lines(path, records, tail=""):
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_finished_cli_run(tiny_model_dir, sft_file, tmp_path):
    from tuneforge.train.runner import run_train

    out = str(tmp_path / "run")
    run_train(base_args(tiny_model_dir, sft_file, out, max_steps=4, save_strategy="steps", save_steps=2))
    p = read_progress(out)
    assert p.status == "finished" and p.in_use is None
    assert (p.current_step, p.total_steps, p.percent) == (4, 4, 100.0)
    assert [s for s, _ in p.series["loss"]] == [1, 2, 3, 4] and p.remaining == "0:00:00"
    assert p.checkpoint == os.path.join(out, "checkpoint-4") and p.log_tail == ""
    assert not os.path.exists(os.path.join(out, run_lock.LOCK_FILE))  # released and deleted at the end


def test_partial_last_line_is_read_when_complete(tmp_path):
    out = str(tmp_path)
    log = os.path.join(out, "trainer_log.jsonl")
    write_lines(log, [{"step": 1, "total_steps": 10, "loss": 2.0, "elapsed_s": 1.0, "eta_s": 9.0}], tail='{"step": 2, "lo')
    reader = ProgressReader(out)
    p = reader.read()
    assert (p.current_step, p.total_steps, p.percent, p.elapsed, p.remaining) == (1, 10, 10.0, "0:00:01", "0:00:09")
    assert p.status == "stopped"  # not running, not finished
    with open(log, "a") as f:
        f.write('ss": 1.5, "total_steps": 10, "elapsed_s": 3725}\n')
    write_lines(log, [{"step": 2, "total_steps": 10, "eval_loss": 1.7, "eval_rewards/margins": 0.5,
                       "rewards/accuracies": 0.75}])
    p = reader.read()
    assert p.series["loss"] == [(1, 2.0), (2, 1.5)] and p.series["eval_loss"] == [(2, 1.7)]
    assert p.series["eval_rewards/margins"] == [(2, 0.5)] and p.series["rewards/accuracies"] == [(2, 0.75)]
    assert "lr" not in p.series and p.last_record["loss"] == 1.5 and p.last_record["eval_loss"] == 1.7
    assert p.elapsed == "1:02:05"


def test_a_resumed_log_replaces_the_later_steps(tmp_path):
    out = str(tmp_path)
    log = os.path.join(out, "trainer_log.jsonl")
    write_lines(log, [{"step": s, "loss": 10.0 - s} for s in (1, 2, 3, 4)] + [{"step": 3, "loss": 0.5}])
    assert read_progress(out).series["loss"] == [(1, 9.0), (2, 8.0), (3, 0.5)]
    os.remove(log)  # a new run starts over
    write_lines(log, [{"step": 1, "loss": 5.0}])
    assert read_progress(out).series["loss"] == [(1, 5.0)]


def test_llamafactory_log(tmp_path):
    write_lines(tmp_path / "trainer_log.jsonl", [
        {"current_steps": 5, "total_steps": 20, "loss": 1.2, "reward": 0.3, "accuracy": 0.5, "lr": 1e-4,
         "epoch": 0.25, "percentage": 25.0, "elapsed_time": "0:00:10", "remaining_time": "0:00:30"}])
    p = read_progress(str(tmp_path))
    assert (p.current_step, p.total_steps, p.percent, p.epoch) == (5, 20, 25.0, 0.25)
    assert (p.elapsed, p.remaining) == ("0:00:10", "0:00:30")
    assert set(p.series) == {"loss", "reward", "accuracy"}


def test_latest_checkpoint_is_the_highest_complete_one(tmp_path):
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    for name, complete in (("checkpoint-9", True), ("checkpoint-10", True), ("checkpoint-12", False),
                           ("checkpoint-x", True)):
        os.makedirs(tmp_path / name)
        if complete:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "checkpoint-10")


def test_in_use_and_the_running_log(tmp_path):
    out = str(tmp_path / "run")
    assert read_progress(out).status == "empty"
    run_lock.acquire(out)
    try:
        p = read_progress(out)
        assert p.status == "running" and p.in_use["pid"] == os.getpid()
    finally:
        run_lock.release(out)
    with open(os.path.join(out, "running_log.txt"), "w") as f:
        f.write("".join(f"line {i}\n" for i in range(100)) + "  3%|3 | 3/100\r  4%|4 | 4/100")
    assert read_progress(out, tail_lines=3).log_tail == "line 98\nline 99\n  4%|4 | 4/100"


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 59.6, 3600, 90061)] == ["0:00:00", "0:01:00", "1:00:00", "25:01:01"]
