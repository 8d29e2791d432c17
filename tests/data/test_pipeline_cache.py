"""The tokenized-data cache: keyed by everything that changes the result, never stale; tokenized_path;
preprocessing_num_workers gives the same result as one process."""

import json
import os
from pathlib import Path

import datasets
import pytest

from tests.tiny import CHATML_JINJA, build_tokenizer, chatml_tokenizer
from tuneforge.config.args import DataArgs
from tuneforge.data.prepare import prepare_datasets
from tuneforge.data.templates import get_template
from tuneforge.errors import DataError


def rows(n: int, tag: str = "q") -> list[dict]:
    out = []
    for i in range(n):
        if i % 3 == 2:  # a multi-turn row, so mask_history changes the labels
            out.append({"instruction": f"{tag} follow-up {i}", "output": f"answer {i} " * (1 + i % 5),
                        "history": [[f"{tag} first {i}", f"first answer {i}"]]})
        else:
            out.append({"instruction": f"{tag} question {i}", "input": "", "output": f"answer {i} " * (1 + i % 7)})
    return out


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "d.jsonl", rows(12))
    (data / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl", "columns": {"history": "history"}}}))
    return data


def prepare(data_dir, tok=None, template="auto", stage="sft", num_proc=None, **kwargs):
    tok = tok or chatml_tokenizer()
    args = DataArgs(**{"dataset": "d", "dataset_dir": str(data_dir), "cutoff_len": 64, **kwargs})
    return prepare_datasets(args, stage, tok, get_template(template, tok), num_proc=num_proc)


def content(prepared) -> list:
    return [(r["input_ids"], r["labels"]) for r in prepared.train]


def test_identical_second_run_is_a_cache_hit(env):
    first = prepare(env)
    assert first.train_report.cache.startswith("saved ") and not first.train_report.cache_hit
    second = prepare(env)
    assert second.train_report.cache_hit
    assert "cache: hit" in "\n".join(second.summary_lines())
    assert content(second) == content(first)
    assert (second.train_report.truncated, second.train_report.dropped) == (first.train_report.truncated, first.train_report.dropped)


@pytest.mark.parametrize("change", [
    {"template": "qwen"},
    {"cutoff_len": 32},
    {"train_on_prompt": True},
    {"mask_history": True},
])  # fmt: skip
def test_a_changed_option_gives_a_fresh_tokenization(env, change):
    base = prepare(env)
    changed = prepare(env, **change)
    assert not changed.train_report.cache_hit, change
    assert content(changed) != content(base), change
    assert prepare(env, **change).train_report.cache_hit  # and that result is cached under its own key


def test_a_changed_tokenizer_gives_a_fresh_tokenization(env):
    base = prepare(env)
    other_vocab = build_tokenizer(["<|im_start|>", "<|im_end|>"], CHATML_JINJA, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", vocab_size=330)
    assert not prepare(env, tok=other_vocab).train_report.cache_hit
    # same vocabulary, another chat template: `auto` renders differently
    other_template = chatml_tokenizer()
    other_template.chat_template = CHATML_JINJA.replace("'\n' }}{% endfor %}", "'\n\n' }}{% endfor %}")
    fresh = prepare(env, tok=other_template)
    assert not fresh.train_report.cache_hit and content(fresh) != content(base)
    assert prepare(env, tok=chatml_tokenizer()).train_report.cache_hit


def test_a_rewritten_data_file_gives_a_fresh_tokenization(env):
    path = env / "d.jsonl"
    base = prepare(env)
    before = os.stat(path)
    # Same size and, restored below, the same modification time: only the contents tell the change.
    text = path.read_text().replace("answer 1 ", "ANSWER 1 ")
    assert len(text) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    fresh = prepare(env)
    assert not fresh.train_report.cache_hit
    assert content(fresh) != content(base)


def test_overwrite_cache_rebuilds(env):
    prepare(env)
    rebuilt = prepare(env, overwrite_cache=True)
    assert rebuilt.train_report.cache.startswith("saved ")
    assert prepare(env).train_report.cache_hit


def test_an_unreadable_cache_entry_is_rebuilt(env, tmp_path):
    first = prepare(env)
    cache_dir = Path(first.train_report.cache.split(" ", 1)[1])
    (cache_dir / "tuneforge_report.json").write_text("{not json")
    again = prepare(env)
    assert again.train_report.cache.startswith("saved ") and content(again) == content(first)


def test_tokenized_path_saves_then_loads(env, tmp_path):
    path = tmp_path / "tokenized"
    saved = prepare(env, tokenized_path=str(path))
    assert any(line.startswith(f"saved tokenized data to {path}") for line in saved.summary_lines())
    assert (path / "tuneforge_tokenized.json").is_file()
    (env / "d.jsonl").unlink()  # the rows are not read again
    loaded = prepare(env, tokenized_path=str(path))
    assert loaded.load_lines[0].startswith(f"loaded tokenized data from {path}")
    assert content(loaded) == content(saved)


def test_tokenized_path_made_with_other_settings_is_refused(env, tmp_path):
    path = tmp_path / "tokenized"
    prepare(env, tokenized_path=str(path))
    with pytest.raises(DataError, match=r"tokenized_path .* other settings or data \(template differs\).*overwrite_cache"):
        prepare(env, tokenized_path=str(path), template="qwen")
    with pytest.raises(DataError, match="cutoff_len differs"):
        prepare(env, tokenized_path=str(path), cutoff_len=128)
    write_jsonl(env / "d.jsonl", rows(13))
    with pytest.raises(DataError, match=r"d\.jsonl changed since"):
        prepare(env, tokenized_path=str(path))
    rebuilt = prepare(env, tokenized_path=str(path), overwrite_cache=True)
    assert len(rebuilt.train) == 13
    assert len(prepare(env, tokenized_path=str(path)).train) == 13


def test_tokenized_path_that_is_not_tokenized_data(env, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="is not tokenized data saved by tuneforge"):
        prepare(env, tokenized_path=str(junk))


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_two_workers_give_the_same_result_as_one(env, monkeypatch, stage):
    write_jsonl(env / "d.jsonl", rows(600))  # over the 256 rows below which no worker process is started
    calls = []
    original = datasets.Dataset.map

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("num_proc"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(datasets.Dataset, "map", spy)
    kwargs = dict(stage=stage, cutoff_len=48, preprocessing_batch_size=100)
    one = prepare(env, num_proc=1, **kwargs)
    assert 2 not in calls
    two = prepare(env, num_proc=2, overwrite_cache=True, **kwargs)
    assert 2 in calls  # really tokenized in two processes
    assert content(two) == content(one)
    assert (two.train_report.truncated, two.train_report.dropped) == (one.train_report.truncated, one.train_report.dropped)


def test_the_cache_key_is_the_same_in_every_process(tiny_model_dir):
    """Sets (llama3's `trim`) and hash seeds must not leak into the key, or no later run would ever hit."""
    import subprocess
    import sys

    code = (
        "import sys; from transformers import AutoTokenizer; from tuneforge.config.args import DataArgs; "
        "from tuneforge.data.templates import get_template; "
        "from tuneforge.data.pipeline import fingerprint, preprocess_settings; "
        "tok = AutoTokenizer.from_pretrained(sys.argv[1]); "
        "print(fingerprint(preprocess_settings('sft', get_template('llama3', tok), tok, DataArgs())))"
    )
    # The child gets a fixed hash seed, this process a random one (unless PYTHONHASHSEED is set for pytest).
    child = subprocess.run([sys.executable, "-c", code, tiny_model_dir], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    from transformers import AutoTokenizer

    from tuneforge.data.pipeline import fingerprint, preprocess_settings

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert child == fingerprint(preprocess_settings("sft", get_template("llama3", tok), tok, DataArgs()))


def test_pt_block_batch_size_is_part_of_the_key(env):
    # pt cuts blocks per map batch, so another batch size can start blocks elsewhere.
    write_jsonl(env / "d.jsonl", [{"text": f"document {i} " + "word " * (3 + i % 11)} for i in range(40)])
    (env / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl", "columns": {"prompt": "text"}}}))
    base = prepare(env, stage="pt", cutoff_len=16, preprocessing_batch_size=7)
    other = prepare(env, stage="pt", cutoff_len=16, preprocessing_batch_size=13)
    assert not other.train_report.cache_hit
    assert content(other) != content(base)


def test_a_touched_file_with_the_same_rows_stays_a_hit(env):
    prepare(env)
    path = env / "d.jsonl"
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert prepare(env).train_report.cache_hit
