"""load_rows / split_train_val end to end: dataset_info.json entries, file paths, mixing, sampling, streaming."""

import json
import os
from pathlib import Path

import datasets
import pytest

from tuneforge.config.args import DataArgs
from tuneforge.data.conversation import Conversation
from tuneforge.data.loader import FEATURES, load_rows, split_train_val
from tuneforge.errors import DataError

DEMO = Path("/work/shared/anchors/llamafactory-data")
needs_demo = pytest.mark.skipif(not (DEMO / "dataset_info.json").is_file(), reason=f"demo data folder {DEMO} is absent")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def alpaca_rows(n: int, tag: str = "r") -> list[dict]:
    return [{"instruction": f"{tag} question {i}", "input": "", "output": f"{tag} answer {i}"} for i in range(n)]


def load(stage="sft", **kwargs):
    return load_rows(DataArgs(**kwargs), stage)


@pytest.fixture
def registry(tmp_path):
    """A dataset_dir with two alpaca files and a dataset_info.json; returns a function to add entries."""
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(10, "a"))
    write_jsonl(tmp_path / "b.jsonl", alpaca_rows(4, "b"))
    info = {"a": {"file_name": "a.jsonl"}, "b": {"file_name": "b.jsonl"}}

    def add(**entries):
        info.update(entries)
        (tmp_path / "dataset_info.json").write_text(json.dumps(info))
        return str(tmp_path)

    add()
    return add


# ---- the LLaMA-Factory demo data, unchanged ------------------------------------------------------------------

DEMO_STAGES = {
    "identity": "sft", "alpaca_en_demo": "sft", "alpaca_zh_demo": "sft", "glaive_toolcall_en_demo": "sft",
    "glaive_toolcall_zh_demo": "sft", "dpo_en_demo": "dpo", "dpo_zh_demo": "dpo", "kto_en_demo": "kto",
    "c4_demo": "pt", "wiki_demo": "pt",
}  # fmt: skip


@needs_demo
@pytest.mark.parametrize("name", sorted(DEMO_STAGES))
def test_every_demo_dataset_loads(name):
    rows, report = load(DEMO_STAGES[name], dataset=name, dataset_dir=str(DEMO))
    stats = report.datasets[name]
    assert len(rows) == stats.rows_kept == stats.rows_read and not stats.dropped
    assert rows.features == FEATURES
    conv = Conversation.from_dict(rows[0])
    assert conv.source == f"{name}:0"
    if DEMO_STAGES[name] == "pt":
        assert conv.text and not conv.messages
    elif DEMO_STAGES[name] == "dpo":
        assert conv.messages[-1].role == "user" and conv.chosen.content and conv.rejected.content
    else:
        assert conv.messages[0].role == "user" and conv.messages[-1].role in ("assistant", "function_call")
    if name.startswith("glaive"):
        assert isinstance(json.loads(conv.tools), list)
    assert any(f.path.endswith("dataset_info.json") for f in report.files)


@needs_demo
def test_demo_datasets_of_different_formats_concatenate():
    rows, report = load("sft", dataset="identity,glaive_toolcall_en_demo", dataset_dir=str(DEMO))
    assert len(rows) == 91 + 300
    assert {r.split(":")[0] for r in rows["source"]} == {"identity", "glaive_toolcall_en_demo"}
    tool_turns = [m["role"] for r in rows.select(range(91, 391)) for m in r["messages"]]
    assert "function_call" in tool_turns and "observation" in tool_turns


@needs_demo
def test_demo_multimodal_and_hub_entries_are_clear_errors(monkeypatch):
    with pytest.raises(DataError, match="entry 'mllm_demo': multimodal columns are not supported yet \\(images\\)"):
        load("sft", dataset="mllm_demo", dataset_dir=str(DEMO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="'llamafactory/alpaca_en' is a hub dataset and hub datasets need network.*download it"):
        load("sft", dataset="alpaca_en", dataset_dir=str(DEMO))
    with pytest.raises(DataError, match="loading from ms_hub .* is not supported"):
        load("sft", dataset="deepctrl", dataset_dir=str(DEMO))


@needs_demo
def test_demo_stage_mismatch_errors():
    with pytest.raises(DataError, match="stage dpo needs a ranking dataset .* but dataset 'alpaca_en_demo' is not one"):
        load("dpo", dataset="alpaca_en_demo", dataset_dir=str(DEMO))
    with pytest.raises(DataError, match="dataset 'dpo_en_demo' is a ranking dataset .* not sft"):
        load("sft", dataset="dpo_en_demo", dataset_dir=str(DEMO))
    with pytest.raises(DataError, match="stage kto needs a kto_tag column"):
        load("kto", dataset="identity", dataset_dir=str(DEMO))
    with pytest.raises(DataError, match="response column 'output' not found \\(a dataset without responses can be used with stage pt"):
        load("sft", dataset="wiki_demo", dataset_dir=str(DEMO))


# ---- registry errors ----------------------------------------------------------------------------------------


def test_unknown_name_lists_registry_names(registry):
    with pytest.raises(DataError, match="dataset 'c' is not in .*dataset_info.json; known names: a, b"):
        load(dataset="c", dataset_dir=registry())


def test_name_without_dataset_info_is_clear(tmp_path):
    with pytest.raises(DataError, match="dataset_info.json not found: dataset names are looked up in dataset_info.json inside dataset_dir"):
        load(dataset="alpaca_en_demo", dataset_dir=str(tmp_path))


def test_unknown_entry_key_names_key_and_dataset(registry):
    with pytest.raises(DataError, match="entry 'c': unknown key 'colums'"):
        load(dataset="c", dataset_dir=registry(c={"file_name": "a.jsonl", "colums": {}}))


def test_invalid_dataset_info_json_names_line(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{\n  "a": {"file_name": "a.json",}\n}')
    with pytest.raises(DataError, match="dataset_info.json line 2 column .*: invalid JSON"):
        load(dataset="a", dataset_dir=str(tmp_path))


def test_script_url_is_unsupported(registry):
    with pytest.raises(DataError, match="loading scripts \\(script_url\\) are not supported"):
        load(dataset="s", dataset_dir=registry(s={"script_url": "s"}))


def test_column_named_in_entry_but_absent_everywhere(registry):
    with pytest.raises(DataError, match="column\\(s\\) sytem not found in any row; columns present: input, instruction, output"):
        load(dataset="c", dataset_dir=registry(c={"file_name": "a.jsonl", "columns": {"system": "sytem"}}))


# ---- reading files ------------------------------------------------------------------------------------------


def test_every_file_type_and_a_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = alpaca_rows(3)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.csv").write_text("instruction,input,output\n" + "".join(f'"{r["instruction"]}",,"{r["output"]}"\n' for r in rows))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "d.parquet")
    with pa.ipc.new_stream(str(tmp_path / "d.arrow"), table.schema) as writer:  # the format `datasets` saves
        writer.write_table(table)
    for suffix in ("json", "jsonl", "csv", "parquet", "arrow"):
        data, _ = load(dataset=str(tmp_path / f"d.{suffix}"))
        assert data[2]["messages"] == [{"role": "user", "content": "r question 2"}, {"role": "assistant", "content": "r answer 2"}], suffix
    (tmp_path / "doc.txt").write_text("first document\n\nsecond document\n")
    text, report = load("pt", dataset=str(tmp_path / "doc.txt"))
    assert text["text"] == ["first document", "second document"]
    assert report.datasets[str(tmp_path / "doc.txt")].dropped == {"empty text": 1}
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "part1.jsonl", rows)
    (folder / "part2.json").write_text(json.dumps(rows))
    data, report = load(dataset=str(folder))
    assert len(data) == 6 and len(report.files) == 2


def test_json_file_holding_json_lines_is_read(tmp_path):
    path = tmp_path / "lines.json"
    write_jsonl(path, alpaca_rows(2))
    assert len(load(dataset=str(path))[0]) == 2


def test_folder_split_and_subset(registry, tmp_path):
    (tmp_path / "multi" / "en").mkdir(parents=True)
    write_jsonl(tmp_path / "multi" / "en" / "train.jsonl", alpaca_rows(5))
    write_jsonl(tmp_path / "multi" / "en" / "validation.jsonl", alpaca_rows(2))
    dataset_dir = registry(tr={"file_name": "multi", "subset": "en"}, va={"file_name": "multi", "subset": "en", "split": "validation"},
                           nope={"file_name": "multi", "subset": "en", "split": "test"}, zz={"file_name": "multi", "subset": "zz"})  # fmt: skip
    assert len(load(dataset="tr", dataset_dir=dataset_dir)[0]) == 5
    assert len(load(dataset="va", dataset_dir=dataset_dir)[0]) == 2
    with pytest.raises(DataError, match="no file in .* is named for split 'test'"):
        load(dataset="nope", dataset_dir=dataset_dir)
    with pytest.raises(DataError, match="subset 'zz' is not a subfolder"):
        load(dataset="zz", dataset_dir=dataset_dir)
    with pytest.raises(DataError, match="split 'test' asked of the single file 'a.jsonl'"):
        load(dataset="one", dataset_dir=registry(one={"file_name": "a.jsonl", "split": "test"}))


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]')
    with pytest.raises(DataError, match="bad.json line 3 column 23: invalid JSON \\(Expecting ',' delimiter\\)"):
        load(dataset=str(path))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": }\n')
    with pytest.raises(DataError, match="bad.jsonl line 3 column 32: invalid JSON .*each line must be one JSON object"):
        load(dataset=str(path))
    path.write_text('{"instruction": "a", "output": "b"}\n["not", "an", "object"]\n')
    with pytest.raises(DataError, match="bad.jsonl line 2: expected an object"):
        load(dataset=str(path))


def test_missing_file_and_undetectable_format(tmp_path):
    with pytest.raises(DataError, match="dataset file 'nowhere/x.jsonl' not found"):
        load(dataset="nowhere/x.jsonl", dataset_dir=str(tmp_path))
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question_text": "q", "reply": "a"}])
    with pytest.raises(DataError, match="cannot tell the dataset format from its columns \\(question_text, reply\\)"):
        load(dataset=path)


def test_detection_from_path_for_each_format(tmp_path):
    share = write_jsonl(tmp_path / "share.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": [{"name": "f"}]}])
    data, report = load(dataset=share)
    assert report.datasets[share].formatting == "sharegpt" and data[0]["tools"] == '[{"name": "f"}]'
    oai = write_jsonl(tmp_path / "oai.jsonl", [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    data, _ = load(dataset=oai)
    assert data[0]["system"] == "S" and [m["role"] for m in data[0]["messages"]] == ["user", "assistant"]
    pair = write_jsonl(tmp_path / "pair.jsonl", [{"instruction": "q", "chosen": "good", "rejected": "bad"}])
    data, _ = load("rm", dataset=pair)
    assert data[0]["chosen"] == {"role": "assistant", "content": "good"}
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": False}])
    assert load("kto", dataset=kto)[0][0]["kto_tag"] is False
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "a document"}])
    assert load("pt", dataset=text)[0]["text"] == ["a document"]
    with pytest.raises(DataError, match="is plain text .* only stage pt"):
        load("sft", dataset=text)


def test_roles_out_of_order_in_a_file(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                                               {"conversations": [{"from": "gpt", "value": "a"}]}])  # fmt: skip
    with pytest.raises(DataError, match="dataset '.*c.jsonl' row 1 \\(c.jsonl line 2\\): roles out of order: message 0 is 'gpt' but human or observation was expected"):
        load(dataset=path)


def test_dropped_rows_are_counted_with_reasons(tmp_path):
    rows = alpaca_rows(3) + [{"instruction": "q", "input": "", "output": ""}, {"instruction": "", "input": "", "output": "a"}] * 2
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    data, report = load(dataset=path)
    stats = report.datasets[path]
    assert len(data) == 3 and (stats.rows_read, stats.rows_kept) == (7, 3)
    assert stats.dropped == {"empty response": 2, "empty prompt": 2}
    assert "read 7, kept 3, used 3; dropped 4 (empty response: 2, empty prompt: 2)" in report.summary_lines()[0]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "q", "output": ""}])
    with pytest.raises(DataError, match="none of its 1 rows is usable for stage sft \\(dropped empty response: 1\\)"):
        load(dataset=bad)


def test_report_files_change_with_the_file(registry, tmp_path):
    dataset_dir = registry()
    _, report = load(dataset="a", dataset_dir=dataset_dir)
    before = {Path(f.path).name: f for f in report.files}
    assert set(before) == {"a.jsonl", "dataset_info.json"}
    write_jsonl(tmp_path / "a.jsonl", alpaca_rows(11, "a"))
    os.utime(tmp_path / "a.jsonl", ns=(before["a.jsonl"].mtime_ns + 10**9,) * 2)
    _, report = load(dataset="a", dataset_dir=dataset_dir)
    after = {Path(f.path).name: f for f in report.files}
    assert after["a.jsonl"] != before["a.jsonl"] and after["dataset_info.json"] == before["dataset_info.json"]


# ---- sampling, mixing, splitting, streaming -----------------------------------------------------------------


def test_max_samples_applies_per_dataset(registry):
    data, report = load(dataset="a,b", dataset_dir=registry(), max_samples=3)
    assert data["source"] == ["a:0", "a:1", "a:2", "b:0", "b:1", "b:2"]
    assert report.datasets["a"].rows_used == 3


def test_num_samples_subsamples_or_repeats_with_a_seed(registry):
    dataset_dir = registry(small={"file_name": "a.jsonl", "num_samples": 4}, big={"file_name": "b.jsonl", "num_samples": 10})
    small = load(dataset="small", dataset_dir=dataset_dir)[0]["source"]
    assert len(small) == 4 and len(set(small)) == 4 and small == load(dataset="small", dataset_dir=dataset_dir)[0]["source"]
    big = load(dataset="big", dataset_dir=dataset_dir)[0]["source"]
    assert len(big) == 10 and set(big) == {f"big:{i}" for i in range(4)}
    assert all(big.count(f"big:{i}") >= 2 for i in range(4))


def test_mix_strategies(registry):
    dataset_dir = registry()
    assert len(load(dataset="a,b", dataset_dir=dataset_dir)[0]) == 14
    under = load(dataset="a,b", dataset_dir=dataset_dir, mix_strategy="interleave_under")[0]["source"]
    assert under == ["a:0", "b:0", "a:1", "b:1", "a:2", "b:2", "a:3", "b:3"]  # round robin, stops with b
    over = load(dataset="a,b", dataset_dir=dataset_dir, mix_strategy="interleave_over")[0]["source"]
    assert len(over) == 20 and {s for s in over if s.startswith("a")} == {f"a:{i}" for i in range(10)}
    probs = dict(dataset="a,b", dataset_dir=dataset_dir, mix_strategy="interleave_under", interleave_probs="0.8,0.2")
    first, second = load(**probs)[0]["source"], load(**probs)[0]["source"]
    assert first == second and sum(s.startswith("a") for s in first) > sum(s.startswith("b") for s in first)
    with pytest.raises(DataError, match="interleave_probs '0.5' must give one non-negative probability per dataset \\(2\\)"):
        load(dataset="a,b", dataset_dir=dataset_dir, mix_strategy="interleave_over", interleave_probs="0.5")
    with pytest.raises(DataError, match="mix_strategy 'shuffle' is not one of"):
        load(dataset="a,b", dataset_dir=dataset_dir, mix_strategy="shuffle")


def test_eval_dataset_and_no_dataset(registry):
    data_args = DataArgs(dataset="a", eval_dataset="b", dataset_dir=registry())
    data, _ = load_rows(data_args, "sft", which="eval")
    assert data["source"][0] == "b:0" and len(data) == 4
    assert load_rows(DataArgs(dataset="a"), "sft", which="eval")[0] is None


def test_split_train_val(registry):
    data, _ = load(dataset="a", dataset_dir=registry())
    train, val = split_train_val(data, 0.2, seed=1)
    assert (len(train), len(val)) == (8, 2) and not set(train["source"]) & set(val["source"])
    assert split_train_val(data, 0.2, seed=1)[1]["source"] == val["source"]
    train, val = split_train_val(data, 3, seed=1)
    assert (len(train), len(val)) == (7, 3)
    with pytest.raises(DataError, match="val_size 10 leaves 10 validation rows out of 10"):
        split_train_val(data, 10, seed=1)


def test_streaming(registry):
    dataset_dir = registry(big={"file_name": "b.jsonl", "num_samples": 6})
    stream, report = load(dataset="a,b", dataset_dir=dataset_dir, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    in_memory, _ = load(dataset="a,b", dataset_dir=dataset_dir)
    assert list(stream) == in_memory.to_list()
    assert report.datasets["a"].rows_kept == 10 and "streaming" in report.summary_lines()[0]
    capped, _ = load(dataset="a", dataset_dir=dataset_dir, streaming=True, max_samples=2)
    assert [r["source"] for r in capped] == ["a:0", "a:1"]
    cycled, _ = load(dataset="big", dataset_dir=dataset_dir, streaming=True)
    assert [r["source"] for r in cycled] == ["big:0", "big:1", "big:2", "big:3", "big:0", "big:1"]
    train, val = split_train_val(stream, 3, seed=0)
    assert [r["source"] for r in val] == ["a:0", "a:1", "a:2"] and next(iter(train))["source"] == "a:3"
    with pytest.raises(DataError, match="a streamed dataset has no known length; give a row count"):
        split_train_val(stream, 0.1, seed=0)
    mixed, _ = load(dataset="a,b", dataset_dir=dataset_dir, streaming=True, mix_strategy="interleave_under")
    assert [r["source"] for r in mixed][:4] == ["a:0", "b:0", "a:1", "b:1"]


def test_hub_dataset_goes_through_datasets_when_online(monkeypatch, registry):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    def fake_load_dataset(path, name=None, data_dir=None, split=None, streaming=False):
        calls.append((path, name, data_dir, split, streaming))
        return alpaca_rows(3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset_dir = registry(h={"hf_hub_url": "org/h", "subset": "en", "split": "dev", "folder": "x"})
    data, report = load(dataset="h", dataset_dir=dataset_dir)
    assert len(data) == 3 and calls[0] == ("org/h", "en", "x", "dev", False)
    assert [Path(f.path).name for f in report.files] == ["dataset_info.json"]

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match="could not load hub dataset 'org/h' \\(ConnectionError: no route to host\\); download it"):
        load(dataset="h", dataset_dir=dataset_dir)
