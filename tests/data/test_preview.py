"""`tuneforge data preview` through the CLI entry point: the summary, highlighted examples and --json lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tuneforge.cli import main

IGNORE = -100
ROWS = [
    {"instruction": "hi", "input": "", "output": "Hello! I am Forge."},
    {"instruction": "Who are you?", "input": "", "output": "I am Forge, an assistant built with tuneforge."},
    {"instruction": "Translate to French", "input": "good morning", "output": "bonjour"},
    {"instruction": "no answer here", "input": "", "output": ""},  # dropped: empty response
    {"instruction": "say a lot", "input": "", "output": "The quick brown fox jumps over the lazy dog. " * 12},
]
CHAT = {"conversations": [
    {"from": "human", "value": "Hello! How are you today?"}, {"from": "gpt", "value": "I am fine, thank you."},
    {"from": "human", "value": "Who are you?"}, {"from": "gpt", "value": "I am Forge."},
]}  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def project(tmp_path, tiny_model_dir, monkeypatch):
    """A data folder with an alpaca and a sharegpt dataset, and a config using the tiny chatml model."""
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "qa.jsonl", ROWS)
    write_jsonl(data / "chat.jsonl", [CHAT])
    info = {"qa": {"file_name": "qa.jsonl"}, "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt"}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\nstage: sft\ndataset: qa,chat\ndataset_dir: {data}\n"
        "template: auto\ncutoff_len: 96\noutput_dir: unused\n"
    )
    return config


def run(capsys, *argv):
    code = main(["data", "preview", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def tokenizer(config: Path):
    folder = config.read_text().split("\n")[0].split(": ", 1)[1]
    return AutoTokenizer.from_pretrained(folder)


def trained_spans(input_ids, labels) -> list[list[int]]:
    runs, current = [], []
    for tid, lab in zip(input_ids, labels):
        if lab != IGNORE:
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_summary_counts_reasons_lengths_and_supervised_share(project, capsys):
    code, out, err = run(capsys, project, "--num", "0")
    assert code == 0, err
    summary = out.split("== example")[0]
    assert "== summary" in summary
    assert "stage sft, template auto, cutoff_len 96" in summary
    assert "datasets:" in summary and "qa (alpaca): read 5, kept 4" in summary and "chat (sharegpt): read 1, kept 1" in summary
    assert "rows read: 6" in summary
    assert "rows dropped: 1" in summary and "empty response: 1 (qa, while reading)" in summary
    assert "rows kept: 5 examples" in summary
    assert "truncated: 1 (cut to fit cutoff_len 96)" in summary
    lengths = next(line for line in summary.splitlines() if line.startswith("token lengths:"))
    for key in ("min", "p50", "p90", "p99", "max", "mean"):
        assert f"{key} " in lengths
    assert "max 96" in lengths  # the long row was cut to cutoff_len
    share = next(line for line in summary.splitlines() if line.startswith("supervised tokens:"))
    assert share.endswith("%)") and " of " in share
    assert "cache: saved" in summary
    assert "== example" not in out  # --num 0


def test_second_run_reports_a_cache_hit(project, capsys):
    assert run(capsys, project, "--num", "0")[0] == 0
    code, out, _ = run(capsys, project, "--num", "0")
    assert code == 0 and "cache: hit" in out


def test_examples_mark_supervised_spans_without_a_terminal(project, capsys):
    code, out, _ = run(capsys, project, "--num", "5")
    assert code == 0
    assert out.count("== example") == 5
    assert "\033[" not in out
    assert "[[Hello! I am Forge.<|im_end|>\n]]" in out
    assert "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n[[" in out  # the prompt is not marked
    # both assistant turns of the multi-turn row are trained, the user turn between them is not
    assert "[[I am fine, thank you.<|im_end|>\n]]<|im_start|>user\nWho are you?<|im_end|>\n" in out
    assert "[[I am Forge.<|im_end|>\n]]" in out


def test_examples_are_coloured_on_a_terminal(project, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run(capsys, project, "--num", "1")
    assert code == 0
    assert "\033[1;32mHello! I am Forge.<|im_end|>\n\033[0m" in out
    assert "[[" not in out
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033[" not in run(capsys, project, "--num", "1")[1]


def test_json_lines_hold_exactly_ids_labels_text(project, capsys):
    tok = tokenizer(project)
    code, out, err = run(capsys, project, "--json")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5  # every example when --num is not given
    records = [json.loads(line) for line in lines]  # stdout holds nothing else
    assert all(set(r) == {"input_ids", "labels", "text"} for r in records)
    assert "rows kept: 5 examples" in err  # the summary went to stderr
    first = records[0]
    assert len(first["input_ids"]) == len(first["labels"])
    assert first["text"] == tok.decode(first["input_ids"], skip_special_tokens=False)
    # text is byte-identical to the tokenizer's own chat template
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! I am Forge."}]
    assert first["text"] == tok.apply_chat_template(messages, tokenize=False)
    assert first["input_ids"] == tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    # labels decode to the assistant text plus the end-of-turn token (and the newline ChatML puts after it)
    for record, answers in ((records[0], ["Hello! I am Forge."]), (records[4], ["I am fine, thank you.", "I am Forge."])):
        decoded = [tok.decode(span, skip_special_tokens=False) for span in trained_spans(record["input_ids"], record["labels"])]
        assert decoded == [a + "<|im_end|>\n" for a in answers]
        assert all(lab in (IGNORE, tid) for tid, lab in zip(record["input_ids"], record["labels"]))


def test_json_with_num_and_options_after_overrides(project, capsys):
    code, out, _ = run(capsys, project, "cutoff_len=64", "--json", "--num=2")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2 and all(len(r["input_ids"]) <= 64 for r in records)


def test_json_through_a_real_pipe(project, tmp_path):
    """Progress bars, logs and warnings of a real process stay off stdout."""
    env = {**os.environ, "TUNEFORGE_DATA_CACHE": str(tmp_path / "cache2"), "PYTHONPATH": str(Path.cwd() / "src")}
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "data", "preview", str(project), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 5
    assert "Tokenizing" in proc.stderr  # the progress bar is there, on stderr


def test_preference_and_kto_rows(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "pref.jsonl", [{"instruction": "pick one", "chosen": "good answer", "rejected": "bad answer"}])
    write_jsonl(tmp_path / "kto.jsonl", [{"instruction": "rate me", "output": "a fine answer", "kto_tag": True}])
    base = [f"model_name_or_path={tiny_model_dir}", "output_dir=unused"]
    code, out, err = run(capsys, *base, "stage=dpo", f"dataset={tmp_path / 'pref.jsonl'}", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert set(record) == {"chosen", "rejected"}
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for side, answer in (("chosen", "good answer"), ("rejected", "bad answer")):
        spans = trained_spans(record[side]["input_ids"], record[side]["labels"])
        assert [tok.decode(s) for s in spans] == [answer + "<|im_end|>\n"]
    code, out, err = run(capsys, *base, "stage=kto", f"dataset={tmp_path / 'kto.jsonl'}")
    assert code == 0, err
    assert "-- desirable" in out and "[[a fine answer<|im_end|>\n]]" in out


def test_a_pair_with_nothing_to_prefer_is_dropped_and_counted(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    rows = [{"instruction": "pick one", "chosen": "good answer", "rejected": "bad answer"},
            {"instruction": "pick again", "chosen": "same answer", "rejected": "same answer"}]
    write_jsonl(tmp_path / "pref.jsonl", rows)
    code, out, err = run(capsys, f"model_name_or_path={tiny_model_dir}", "stage=rm",
                         f"dataset={tmp_path / 'pref.jsonl'}")
    assert code == 0, err
    assert "chosen equals rejected (nothing to prefer): 1" in out and "rows kept: 1 examples" in out


def test_bad_num_and_usage(project, capsys):
    code, _, err = run(capsys, project, "--num", "many")
    assert code == 1 and err.startswith("error: --num 'many' must be a whole number")
    assert main(["data", "show"]) == 1
    assert "usage: tuneforge data preview" in capsys.readouterr().err


def test_streaming_preview(project, capsys):
    code, out, err = run(capsys, project, "streaming=true", "max_steps=5", "--num", "2")
    assert code == 0, err
    assert "datasets: qa (alpaca), chat (sharegpt)" in out and "streaming: rows are read as training consumes them" in out
    assert out.count("== example") == 2 and "[[Hello! I am Forge.<|im_end|>\n]]" in out
