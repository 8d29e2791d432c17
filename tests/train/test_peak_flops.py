"""The GEMM peak behind MFU: measured once per machine, dtype and thread count, by one process, under a lock."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])

# A child asking for the peak, with the timed GEMMs replaced by a slow fake that logs each measurement, and
# torch by a stub (this tests the locking, and three torch imports at once cost seconds). The children wait
# for each other (ready files) so that they ask at the same moment.
CHILD = r"""
import json, os, sys, time, types
from pathlib import Path

torch = types.ModuleType("torch")
torch.float32, torch.bfloat16 = "torch.float32", "torch.bfloat16"
torch.cuda = types.SimpleNamespace(is_available=lambda: False)
torch.get_num_threads = lambda: 1
torch.set_num_threads = lambda n: None
sys.modules["torch"] = torch
from tuneforge.train import throughput

log, ready, dtype, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def slow_fake(**kw):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {kw['dtype']}\n")
    time.sleep(1.0)
    return 1e9 + os.getpid()

throughput.measure_peak_flops = slow_fake
(ready / str(os.getpid())).touch()
deadline = time.time() + 60
while len(list(ready.iterdir())) < count and time.time() < deadline:
    time.sleep(0.01)
print(json.dumps(throughput.machine_peak_flops(dtype)))
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return tmp_path / "cache" / "peak_flops.json"


def test_processes_asking_at_once_measure_once_per_key(tmp_path, cache):
    log, ready = tmp_path / "measured.log", tmp_path / "ready"
    ready.mkdir()
    env = dict(os.environ, TUNEFORGE_CACHE=str(cache.parent), PYTHONPATH=ROOT)
    dtypes = ["float32", "float32", "bfloat16"]
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(log), str(ready), d, str(len(dtypes))],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for d in dtypes]
    outs = [c.communicate(timeout=120) for c in children]
    assert all(c.returncode == 0 for c in children), [err for _, err in outs]
    peaks = [json.loads(out) for out, _ in outs]
    measured = log.read_text().splitlines()
    # One measurement per key, however many asked: the second float32 child read what the first wrote.
    assert sorted(line.split()[1] for line in measured) == ["torch.bfloat16", "torch.float32"]
    assert peaks[0] == peaks[1] != peaks[2]
    # Both keys survived the concurrent writes, in a file that is valid JSON, with no temporary files left.
    saved = json.loads(cache.read_text())["peaks"]
    assert sorted((e["dtype"], e["threads"], e["flops"]) for e in saved.values()) == sorted(
        [("float32", 1, peaks[0]), ("bfloat16", 1, peaks[2])])
    assert sorted(p.name for p in cache.parent.iterdir()) == ["peak_flops.json", "peak_flops.json.lock"]


def test_remeasure_overwrites_and_threads_are_the_ones_measured(cache, monkeypatch):
    import torch

    from tuneforge.train import throughput

    calls = []

    def fake(**kw):
        calls.append(torch.get_num_threads())
        return 1e9 * len(calls)

    monkeypatch.setattr(throughput, "measure_peak_flops", fake)
    before = torch.get_num_threads()
    assert throughput.machine_peak_flops() == 1e9
    assert throughput.machine_peak_flops() == 1e9
    assert throughput.machine_peak_flops(remeasure=True) == 2e9
    assert throughput.machine_peak_flops() == 2e9
    assert throughput.machine_peak_flops(threads=1) == 3e9  # a DDP rank's single thread: its own entry
    assert calls == [before, before, 1] and torch.get_num_threads() == before
    saved = json.loads(cache.read_text())["peaks"]
    assert sorted((e["threads"], e["flops"]) for e in saved.values()) == sorted([(before, 2e9), (1, 3e9)])


def test_a_cache_in_the_old_format_is_measured_anew(cache, monkeypatch):
    from tuneforge.train import throughput

    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"x86_64-cpu-2-1": 46.7e9}))  # format 1, possibly measured by two ranks at once
    monkeypatch.setattr(throughput, "measure_peak_flops", lambda **kw: 86.6e9)
    assert throughput.machine_peak_flops() == 86.6e9
    assert json.loads(cache.read_text())["format"] == 2


def test_env_prints_the_peaks_and_remeasures_on_request(cache, monkeypatch, capsys):
    from tuneforge.envinfo import print_env
    from tuneforge.train import throughput

    calls = []
    monkeypatch.setattr(throughput, "measure_peak_flops", lambda **kw: calls.append(kw) or 1e9 * len(calls))
    print_env()
    assert "gemm peak float32" in capsys.readouterr().out and len(calls) == 1
    throughput.machine_peak_flops("bfloat16")
    assert print_env([]) == 0 and len(calls) == 2  # from the cache
    out = capsys.readouterr().out
    assert "1.0 GFLOP/s" in out and "gemm peak bfloat16" in out and "2.0 GFLOP/s" in out
    print_env(["--remeasure"])
    assert len(calls) == 4  # both cached peaks timed again
    out = capsys.readouterr().out
    assert "3.0 GFLOP/s" in out and "4.0 GFLOP/s" in out
