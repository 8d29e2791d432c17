"""The data preparation speed work changes no result: token ids and labels equal the golden ones captured
before it (prep_golden.json), `template: auto` renders a linear number of messages per conversation, its
windowed span location agrees with the exact prefix renders, pt encodes a batch of documents as it encodes
each alone, and the tokenizer is serialised once however often the cache key is built."""

from __future__ import annotations

import json
import random

import pytest

from tests.data import prep_golden
from tests.data.named_template_cases import family_tokenizer
from tests.tiny import chatml_tokenizer
from tuneforge.data.conversation import ASSISTANT, USER, Conversation, Message
from tuneforge.data.templates.auto import AutoTemplate

GOLDEN = json.loads(prep_golden.GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_DATA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name,run", [pytest.param(n, r, id=n) for n, r in prep_golden.processor_cases()])
def test_processor_results_equal_the_golden_ones(name, run):
    if name not in GOLDEN:
        pytest.skip(f"{name} was not captured (its tokenizer was absent when the golden file was written)")
    assert run() == GOLDEN[name]


def test_pipeline_results_equal_the_golden_ones():
    import datasets

    datasets.disable_progress_bars()
    ran = 0
    for name, run in prep_golden.pipeline_cases():
        assert run() == GOLDEN[name], name
        ran += 1
    if not ran:
        pytest.skip("the demo data folders are absent")


# ----- template: auto renders in linear time, and its windows agree with the exact prefix renders


def counting_renders(tokenizer) -> dict:
    """Counts the Jinja renders of this tokenizer object and the messages they render."""
    counts = {"calls": 0, "messages": 0}
    original = tokenizer.apply_chat_template

    def counting(conversation, *args, **kwargs):
        counts["calls"] += 1
        counts["messages"] += len(conversation)
        return original(conversation, *args, **kwargs)

    tokenizer.apply_chat_template = counting
    return counts


def long_conversation(turns: int, system: str | None = None) -> Conversation:
    messages = []
    for i in range(turns):
        messages += [Message(USER, f"question {i} who are you"), Message(ASSISTANT, f"answer {i} hello world")]
    return Conversation(messages=messages, system=system)


@pytest.mark.parametrize("system", [None, "be brief"])
@pytest.mark.parametrize("family", ["chatml", "qwen", "llama3", "gemma"])
def test_auto_renders_a_linear_number_of_messages(family, system):
    tok = family_tokenizer(family)
    counts = counting_renders(tok)
    rendered = {}
    for turns in (4, 16, 64):
        counts.update(calls=0, messages=0)
        AutoTemplate().render(long_conversation(turns, system).messages, system, None, tok)
        rendered[turns] = dict(counts)
        # one render of the whole, then 3 per turn of at most 5 messages (first turn + this turn + system)
        assert counts["calls"] <= 3 * turns + 1
        assert counts["messages"] <= 2 * turns + 1 + 3 * turns * 5
    # 4x the turns, about 4x the messages (rendering every prefix would be 16x: 3 * 64**2 = 12288 messages)
    assert rendered[64]["messages"] <= 4.2 * rendered[16]["messages"]


def test_a_template_with_numbered_rounds_falls_back_to_the_exact_renders():
    tok = prep_golden.tokenizers()["rounds"]()
    conv = long_conversation(6)
    turns = AutoTemplate().render(conv.messages, None, None, tok).turns
    assert [t.prompt.split("]")[0] for t in turns] == [f"[Round {i}" for i in range(1, 7)]


def test_a_template_that_rewrites_history_is_still_refused_in_long_conversations():
    tok = prep_golden.tokenizers()["inconsistent"]()
    with pytest.raises(Exception, match="renders earlier turns differently"):
        AutoTemplate().render(long_conversation(12).messages, None, None, tok)


def exact(monkeypatch):
    monkeypatch.setattr(AutoTemplate, "_windowed_turns", lambda *args: None)


@pytest.mark.parametrize("name", sorted(prep_golden.tokenizers()))
def test_windowed_spans_equal_the_exact_prefix_renders(name, monkeypatch):
    tok = prep_golden.tokenizers()[name]()
    rng = random.Random(name)
    tools = "+tools" in name
    convs = [prep_golden.conversation(rng, turns, tools, system=rng.random() < 0.5)
             for turns in (3, 4, 6, 9) for _ in range(2)]

    def outcome(conv):
        try:
            return AutoTemplate().render(conv.messages, conv.system, conv.tools, tok)
        except Exception as e:  # noqa: BLE001 - a refusal must be the same refusal
            return f"{type(e).__name__}: {e}"

    windowed = [outcome(c) for c in convs]
    exact(monkeypatch)
    assert windowed == [outcome(c) for c in convs]


# ----- pt: a batch of documents encodes as each document alone


@pytest.mark.parametrize("bos", [None, "<s>"])
def test_pt_batch_encoding_equals_encoding_each_document(bos):
    from tests.tiny import build_tokenizer
    from tuneforge.data.pipeline import _encode_documents_batch
    from tuneforge.data.processors import encode_documents

    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], bos_token=bos, eos_token="<|endoftext|>")
    rng = random.Random(0)
    texts = [" ".join(rng.choices(prep_golden.WORDS, k=rng.randint(1, 60))) for _ in range(30)]
    texts[3], texts[7], texts[11] = "", "   \n", None
    texts[5] = "<|im_start|>user\nhi<|im_end|>\n 你好  \n\n trailing "
    one_by_one = [[tok.bos_token_id] * bool(bos) + tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
                  for t in texts if t and t.strip()]
    assert encode_documents(tok, texts) == one_by_one
    docs = _encode_documents_batch({"text": texts}, tokenizer=tok)["_doc"]
    assert [d for d in docs if d] == one_by_one
    assert [i for i, d in enumerate(docs) if not d] == [3, 7, 11]


# ----- the tokenizer is serialised once per run, however often the cache key is built


def test_tokenizer_identity_is_computed_once_per_tokenizer(tmp_path, monkeypatch):
    from tests.data.test_pipeline_cache import rows, write_jsonl
    from tuneforge.config.args import DataArgs
    from tuneforge.data import pipeline
    from tuneforge.data.prepare import prepare_datasets
    from tuneforge.data.templates import get_template

    serialised = []
    core = pipeline._core_digest
    monkeypatch.setattr(pipeline, "_core_digest", lambda tok: serialised.append(1) or core(tok))
    write_jsonl(tmp_path / "d.jsonl", rows(12))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl"}}))
    args = DataArgs(dataset="d", dataset_dir=str(tmp_path), cutoff_len=64, val_size=0.25,
                    tokenized_path=str(tmp_path / "tokenized"))
    tok = chatml_tokenizer()
    before = pipeline.tokenizer_identity(tok)
    prepare_datasets(args, "sft", tok, get_template("auto", tok))  # train key, eval key, tokenized_path meta
    assert len(serialised) == 1
    assert pipeline.tokenizer_identity(tok) == before
    tok.add_tokens(["<|new_token|>"])  # changed in place: computed again, and different
    assert pipeline.tokenizer_identity(tok) != before and len(serialised) == 2
    tok.chat_template = "{{ messages[0]['content'] }}"  # read on every call, no new serialisation
    assert pipeline.tokenizer_identity(tok) != before and len(serialised) == 2
