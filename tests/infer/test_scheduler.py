"""The scheduler batches concurrent requests without changing any answer, and bounds its queue."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.tiny import chatml_tokenizer, tiny_llama
from tuneforge.config.args import GenerateArgs
from tuneforge.data.conversation import Message
from tuneforge.data.templates.auto import AutoTemplate
from tuneforge.infer.engine import ChatEngine
from tuneforge.infer.sampling import SamplingParams
from tuneforge.infer.scheduler import Busy, Finished

QUESTIONS = ["Who are you?", "Hello! How are you today?", "你好", "Translate to French: good morning and more"]


@pytest.fixture(scope="module")
def tok():
    return chatml_tokenizer()


@pytest.fixture
def engine(tok):
    # Larger weights than the default make the distribution peaked enough that greedy ties cannot occur.
    model = tiny_llama(tok, initializer_range=0.2)
    model.eval()
    engine = ChatEngine(model, tok, AutoTemplate(), GenerateArgs(max_new_tokens=12), max_batch_size=8, max_waiting=3)
    yield engine
    engine.close()


class Gate:
    """Holds the scheduler inside the model's first forward until released, so that requests submitted
    meanwhile are all waiting when the next batch is formed; records each forward's batch size."""

    def __init__(self, model):
        self.open = threading.Event()
        self.entered = threading.Event()
        self.sizes = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.sizes.append(kwargs["input_ids"].shape[0])
        self.entered.set()
        self.open.wait(timeout=30)


def collect(engine, prompt, params, n=1):
    done, results = threading.Event(), {}

    def sink(event):
        if isinstance(event, Finished):
            results[event.index] = (event.text, event.reason, event.completion_tokens)
            if len(results) == n:
                done.set()

    return engine.submit(prompt, params, n, sink), done, results


def prompts(engine):
    return [engine.prompt_ids([Message("user", q)]) for q in QUESTIONS]


def test_a_full_queue_answers_busy(engine):
    greedy = SamplingParams(max_new_tokens=12)
    gate = Gate(engine.model)
    blocker, _, _ = collect(engine, prompts(engine)[1], greedy)
    assert gate.entered.wait(30)
    with pytest.raises(Busy):  # max_waiting=3 while the scheduler is held
        for prompt in prompts(engine):
            collect(engine, prompt, greedy)
    blocker.cancel()
    gate.open.set()
    engine.close()


def test_concurrent_requests_form_one_batch_and_match(engine):
    greedy = SamplingParams(max_new_tokens=12)
    seeded = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=20, seed=7)
    cases = [(prompts(engine)[0], greedy), (prompts(engine)[2], seeded), (prompts(engine)[3], greedy)]
    alone = []
    for prompt, params in cases:
        _, done, results = collect(engine, prompt, params)
        assert done.wait(30)
        alone.append(results[0])
    assert alone[0][0] and alone[1][2] > 0

    gate = Gate(engine.model)
    blocker, blocker_done, _ = collect(engine, prompts(engine)[1], greedy)
    assert gate.entered.wait(30)
    pending = [collect(engine, prompt, params) for prompt, params in cases]
    gate.open.set()
    assert blocker_done.wait(30)
    for (_, done, results), expected in zip(pending, alone):
        assert done.wait(30)
        assert results[0] == expected
    assert 3 in gate.sizes  # the three waiting requests were prefilled together


def test_n_answers_greedy_equal_and_seeded_differ(engine):
    prompt = prompts(engine)[0]
    _, done, results = collect(engine, prompt, SamplingParams(max_new_tokens=8), n=3)
    assert done.wait(30) and len({r[0] for r in results.values()}) == 1
    params = SamplingParams(max_new_tokens=8, temperature=1.5, seed=3)
    _, done, first = collect(engine, prompt, params, n=3)
    assert done.wait(30) and len({r[0] for r in first.values()}) > 1
    _, done, again = collect(engine, prompt, params, n=3)
    assert done.wait(30) and again == first  # a seed reproduces every choice


def test_each_row_stops_at_its_own_stop_string_and_budget(engine):
    prompt = prompts(engine)[0]
    _, done, full = collect(engine, prompt, SamplingParams(max_new_tokens=12))
    assert done.wait(30)
    text, reason, tokens = full[0]
    assert reason == "length" and tokens == 12
    cut_word = text[3:6]
    _, done, cut = collect(engine, prompt, SamplingParams(max_new_tokens=12, stop=[cut_word]))
    _, done2, short = collect(engine, prompt, SamplingParams(max_new_tokens=3))
    assert done.wait(30) and done2.wait(30)
    assert cut[0][0] == text[: text.find(cut_word)] and cut[0][1] == "stop"
    assert short[0][1] == "length" and short[0][2] == 3


def test_n_above_the_batch_size_is_refused(engine):
    with pytest.raises(ValueError, match="max_batch_size"):
        engine.submit([1, 2], SamplingParams(max_new_tokens=2), n=9)


def test_penalties_and_nucleus_by_hand():
    from tuneforge.infer.sampling import _draw, _penalised

    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    params = SamplingParams(max_new_tokens=1, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    out = _penalised(logits.clone(), params, torch.tensor([1]), [2, 2])
    # token 1 seen in the prompt: -1 * 2 = -2; token 2 in the answer twice: 0.5 / 2 - 0.5 - 2 * 0.25 = -0.75
    assert out.tolist() == [2.0, -2.0, -0.75, 0.0]
    # top_p 0.5 over softmax([2, -2, -0.75, 0]) = [.81, .01, .05, .11]: only token 0 is kept
    nucleus = SamplingParams(max_new_tokens=1, temperature=1.0, top_p=0.5)
    assert {_draw(out, nucleus, torch.Generator().manual_seed(s)) for s in range(20)} == {0}
    top2 = SamplingParams(max_new_tokens=1, temperature=5.0, top_k=2)
    assert {_draw(out, top2, torch.Generator().manual_seed(s)) for s in range(40)} == {0, 3}


def test_requests_join_a_running_batch_and_answer_as_alone(engine):
    from tuneforge.infer.scheduler import Delta

    long_params = SamplingParams(max_new_tokens=30)
    greedy = SamplingParams(max_new_tokens=10)
    seeded = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=5)
    late = [(prompts(engine)[3], greedy), (prompts(engine)[2], seeded), (prompts(engine)[0], greedy)]
    alone = []
    for prompt, params in [(prompts(engine)[1], long_params), *late]:
        _, done, results = collect(engine, prompt, params)
        assert done.wait(30)
        alone.append(results[0])

    shapes = []
    engine.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    started = threading.Event()
    finished = {}

    def sink(event):
        if isinstance(event, Delta) and len(shapes) >= 4:
            started.set()
        if isinstance(event, Finished):
            finished["long"] = (event.text, event.reason, event.completion_tokens)

    engine.submit(prompts(engine)[1], long_params, 1, sink)
    assert started.wait(30)  # the long answer is a few tokens in
    pending = [collect(engine, prompt, params) for prompt, params in late]
    for (_, done, results), expected in zip(pending, alone[1:]):
        assert done.wait(30)
        assert results[0] == expected
    deadline = threading.Event()
    while "long" not in finished and not deadline.wait(0.05):
        pass
    assert finished["long"] == alone[0]
    # the late requests were decoded in the same steps as the long one
    assert any(batch > 1 and width == 1 for batch, width in shapes)


def test_a_batch_that_never_empties_does_not_grow(tok):
    """Under steady load rows keep leaving and joining; the cache and mask must only span live rows."""
    model = tiny_llama(tok, initializer_range=0.2)
    model.eval()
    engine = ChatEngine(model, tok, AutoTemplate(), GenerateArgs(), max_batch_size=4, max_waiting=16)

    widths = []
    engine.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["attention_mask"].shape[1]),
                                           with_kwargs=True)
    longest = max(len(p) for p in prompts(engine)) + 12

    def client(k):
        for _ in range(12):
            _, done, _ = collect(engine, prompts(engine)[k % 4], SamplingParams(max_new_tokens=4 + k % 9))
            assert done.wait(30)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert len(widths) > 100 and max(widths) <= 2 * longest


def test_cancelled_requests_do_not_count_against_the_queue_bound(engine):
    gate = Gate(engine.model)
    blocker, _, _ = collect(engine, prompts(engine)[1], SamplingParams(max_new_tokens=4))
    assert gate.entered.wait(30)
    waiting = [collect(engine, p, SamplingParams(max_new_tokens=4))[0] for p in prompts(engine)[:3]]
    with pytest.raises(Busy):
        collect(engine, prompts(engine)[0], SamplingParams(max_new_tokens=4))
    for request in waiting:
        request.cancel()
    _, done, _ = collect(engine, prompts(engine)[0], SamplingParams(max_new_tokens=4))
    gate.open.set()
    assert done.wait(30)


def test_close_fails_what_is_still_waiting_or_generating(engine):
    from tuneforge.infer.scheduler import Failed

    gate = Gate(engine.model)
    failures = []
    sink = lambda e: failures.append(e) if isinstance(e, Failed) else None  # noqa: E731
    engine.submit(prompts(engine)[1], SamplingParams(max_new_tokens=50), 1, sink)
    assert gate.entered.wait(30)
    engine.submit(prompts(engine)[0], SamplingParams(max_new_tokens=50), 1, sink)
    closer = threading.Thread(target=engine.close)
    closer.start()
    gate.open.set()
    closer.join(30)
    assert len(failures) == 2 and all("shutting down" in str(f.error) for f in failures)


def test_incremental_text_equals_decoding_everything(tok):
    import random

    from tuneforge.infer.detokenize import TextStream

    rng = random.Random(0)
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    text = "你好，我是一个助手。 Hello! def add(a, b): return a + b 今天天气很好。"
    for trial in range(20):
        ids = tok.encode(text, add_special_tokens=False)
        ids = ids + [rng.randrange(len(tok)) for _ in range(30)]
        ids = [i for i in ids if i != stop]
        stream = TextStream(tok, [stop])
        pieces = [stream.push(i) for i in ids] + [stream.close()]
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
        assert all("\ufffd" not in p for p in pieces[: len(tok.encode(text, add_special_tokens=False))])
