"""Every LLaMA-Factory demo dataset, unchanged, goes through the whole pipeline (load, template, tokenize,
mask) into examples with supervised tokens, with `template: auto` and with a named template."""

from pathlib import Path

import pytest

from tests.data.official_templates import QWEN25
from tests.tiny import build_tokenizer, chatml_tokenizer
from tuneforge.config.args import DataArgs
from tuneforge.data.loader import load_rows
from tuneforge.data.prepare import prepare_datasets
from tuneforge.data.templates import get_template
from tuneforge.errors import TemplateError

DEMO = Path("/work/shared/anchors/llamafactory-data")
pytestmark = pytest.mark.skipif(not (DEMO / "dataset_info.json").is_file(),
                                reason=f"the LLaMA-Factory demo data folder {DEMO} is absent")
IGNORE = -100
END = "<|im_end|>\n"  # ChatML's end of turn, for auto (chatml tokenizers) and qwen alike
MAX_SAMPLES = 40
CHAT_DATASETS = {
    "identity": "sft", "alpaca_en_demo": "sft", "alpaca_zh_demo": "sft", "glaive_toolcall_en_demo": "sft",
    "glaive_toolcall_zh_demo": "sft", "dpo_en_demo": "dpo", "dpo_zh_demo": "dpo", "kto_en_demo": "kto",
}  # fmt: skip
TOOL_DATASETS = ("glaive_toolcall_en_demo", "glaive_toolcall_zh_demo")


def qwen25_tokenizer():
    """A chatml tokenizer whose chat template is Qwen2.5's official one, which renders tools and tool calls."""
    return build_tokenizer(["<|im_start|>", "<|im_end|>"], QWEN25, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tokenizer_for(name: str, template: str):
    # The minimal ChatML Jinja of chatml_tokenizer() has no tool support; `auto` needs one that has.
    return qwen25_tokenizer() if template == "auto" and name in TOOL_DATASETS else chatml_tokenizer()


def data_args(name: str, cutoff_len: int = 8192) -> DataArgs:
    return DataArgs(dataset=name, dataset_dir=str(DEMO), cutoff_len=cutoff_len, max_samples=MAX_SAMPLES)


def trained_spans(input_ids, labels) -> list[list[int]]:
    runs, current = [], []
    for tid, lab in zip(input_ids, labels):
        if lab != IGNORE:
            assert lab == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("template", ["auto", "qwen"])
@pytest.mark.parametrize("name", sorted(CHAT_DATASETS))
def test_chat_demo_dataset_preprocesses(name, template):
    stage = CHAT_DATASETS[name]
    tok = tokenizer_for(name, template)
    args = data_args(name)
    data = prepare_datasets(args, stage, tok, get_template(template, tok))
    report = data.train_report
    assert (report.rows_in, report.examples, report.truncated, dict(report.dropped)) == (MAX_SAMPLES, MAX_SAMPLES, 0, {})
    rows, _ = load_rows(args, stage)
    for example, row in zip(data.train, rows):
        messages = row["messages"]
        if stage == "dpo":
            prompts = []
            for side in ("chosen", "rejected"):
                ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
                spans = [tok.decode(s) for s in trained_spans(ids, labels)]
                assert spans == [row[side]["content"] + END]  # only the candidate response is trained
                prompts.append(ids[: next(i for i, lab in enumerate(labels) if lab != IGNORE)])
            assert prompts[0] == prompts[1]  # one shared prompt
            continue
        spans = [tok.decode(s) for s in trained_spans(example["input_ids"], example["labels"])]
        responses = messages[1::2] if stage == "sft" else messages[-1:]  # kto: only the completion
        assert len(spans) == len(responses)
        for span, message in zip(spans, responses):
            assert span.endswith(END)
            if message["role"] == "assistant":
                assert span == message["content"] + END
            else:  # a function call: its name is in the trained text
                assert message["role"] == "function_call"
                assert "<tool_call>" in span and message["content"].split('"name": "')[1].split('"')[0] in span
        if stage == "kto":
            assert example["kto_tag"] == row["kto_tag"]
    if stage == "kto":
        assert {e["kto_tag"] for e in data.train} == {True, False}


@pytest.mark.parametrize("name", ["c4_demo", "wiki_demo"])
def test_text_demo_dataset_preprocesses_for_pretraining(name):
    tok = chatml_tokenizer()
    data = prepare_datasets(data_args(name, cutoff_len=256), "pt", tok, get_template("auto", tok))
    blocks = data.train
    documents = data.train_report.rows_in
    assert 0 < documents <= MAX_SAMPLES and len(blocks) > documents  # long documents become several blocks
    assert all(len(b) <= 256 for b in blocks["input_ids"])
    assert all(b["labels"] == b["input_ids"] for b in blocks)  # every token is trained
    assert sum(b.count(tok.eos_token_id) for b in blocks["input_ids"]) == documents  # each ends with EOS


@pytest.mark.parametrize("name", TOOL_DATASETS)
def test_auto_with_a_template_that_drops_tool_calls_is_refused(name):
    tok = chatml_tokenizer()
    with pytest.raises(TemplateError, match="does not render tool lists .*named template with tool support"):
        prepare_datasets(data_args(name), "sft", tok, get_template("auto", tok))


def test_demo_datasets_truncate_and_count(tmp_path):
    tok = chatml_tokenizer()
    data = prepare_datasets(data_args("alpaca_en_demo", cutoff_len=48), "sft", tok, get_template("qwen", tok))
    report = data.train_report
    assert report.truncated > 0 and report.examples + sum(report.dropped.values()) == MAX_SAMPLES
    assert all(len(ids) <= 48 for ids in data.train["input_ids"])
    assert all(any(lab != IGNORE for lab in labels) for labels in data.train["labels"])
