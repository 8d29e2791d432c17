"""`tuneforge api` against the official openai client, on tiny random models."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

openai = pytest.importorskip("openai", reason="pip install 'tuneforge[dev]' (the openai client)")
pytest.importorskip("fastapi", reason="pip install 'tuneforge[api]'")

from tests.infer.serving import running, settings  # noqa: E402
from tests.tiny import chatml_tokenizer, tiny_llama  # noqa: E402
from tuneforge.config.args import GenerateArgs  # noqa: E402
from tuneforge.data.conversation import Message  # noqa: E402
from tuneforge.data.templates import get_template  # noqa: E402
from tuneforge.data.templates.auto import AutoTemplate  # noqa: E402
from tuneforge.infer.api.app import create_app  # noqa: E402
from tuneforge.infer.engine import ChatEngine  # noqa: E402
from tuneforge.infer.sampling import SamplingParams  # noqa: E402

HELLO = [{"role": "user", "content": "Hello! How are you today?"}]


def make_engine(template=None, max_new_tokens=16, **kwargs):
    tok = chatml_tokenizer()
    model = tiny_llama(tok, initializer_range=0.2)  # peaked logits: no greedy ties between batch and alone
    model.eval()
    return ChatEngine(model, tok, template or AutoTemplate(), GenerateArgs(max_new_tokens=max_new_tokens), **kwargs)


@pytest.fixture(scope="module")
def served():
    engine = make_engine()
    config = settings()
    with running(create_app(config, engine), config.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        yield engine, client, url
    engine.close()


def greedy(engine, messages, max_new_tokens=16, **kw):
    ours = [Message(m["role"], m["content"]) for m in messages if m["role"] != "system"]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return engine.chat(ours, system, params=SamplingParams(max_new_tokens=max_new_tokens, **kw))


def test_models_and_health(served):
    engine, client, url = served
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}


def test_chat_equals_the_engine_on_the_training_template(served):
    engine, client, _ = served
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    reply = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == greedy(engine, messages)
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 16
    prompt = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(engine.tokenizer.encode(prompt, add_special_tokens=False))


def test_streaming_joins_to_the_whole_answer_and_reports_usage(served):
    engine, client, _ = served
    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy(engine, HELLO)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16 and not chunks[-1].choices


def test_completions_continue_a_raw_prompt(served):
    engine, client, _ = served
    reply = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0)
    ids = engine.tokenizer.encode("The quick brown fox")
    assert reply.choices[0].text == "".join(engine.stream_ids(ids, SamplingParams(max_new_tokens=6)))
    streamed = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


def test_n_choices_seeded_and_greedy(served):
    _, client, _ = served
    sampled = client.chat.completions.create(model="tiny", messages=HELLO, n=3, temperature=1.5, seed=11)
    texts = [c.message.content for c in sampled.choices]
    assert [c.index for c in sampled.choices] == [0, 1, 2] and len(set(texts)) > 1
    again = client.chat.completions.create(model="tiny", messages=HELLO, n=3, temperature=1.5, seed=11)
    assert [c.message.content for c in again.choices] == texts
    same = client.chat.completions.create(model="tiny", messages=HELLO, n=2, temperature=0)
    assert same.choices[0].message.content == same.choices[1].message.content
    assert sampled.usage.completion_tokens == 3 * 16


def test_stop_strings_cut_the_answer(served):
    engine, client, _ = served
    full = greedy(engine, HELLO)
    word = full[4:7]
    reply = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0, stop=[word, "zzzz"])
    assert reply.choices[0].message.content == full[: full.find(word)]
    assert reply.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_answer_as_alone(served):
    engine, client, _ = served
    questions = [[{"role": "user", "content": q}] for q in
                 ("Who are you?", "Hello!", "你好，你是谁？", "def add(a, b):", "Translate to French: good morning",
                  "The quick brown fox")]
    alone = [greedy(engine, q, max_new_tokens=24) for q in questions]
    sizes = []
    hook = engine.model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]),
                                                  with_kwargs=True)
    try:
        barrier = threading.Barrier(len(questions))

        def ask(q):
            barrier.wait()
            return client.chat.completions.create(model="tiny", messages=q, temperature=0, max_tokens=24)

        with ThreadPoolExecutor(len(questions)) as pool:
            replies = list(pool.map(ask, questions))
    finally:
        hook.remove()
    assert [r.choices[0].message.content for r in replies] == alone
    assert max(sizes) > 1  # some requests shared a batch


def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(served):
    engine, client, url = served
    raw = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert raw.status_code == 400 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    cases = [
        (dict(model="other", messages=HELLO), openai.NotFoundError, "does not exist"),
        (dict(model="tiny", messages=[]), openai.BadRequestError, "non-empty"),
        (dict(model="tiny", messages=[{"role": "user", "content": "hi " * 2000}]), openai.BadRequestError,
         "context length"),
        (dict(model="tiny", messages=HELLO, max_tokens=5000), openai.BadRequestError, "context length"),
        (dict(model="tiny", messages=HELLO, temperature=3), openai.BadRequestError, "temperature"),
        (dict(model="tiny", messages=HELLO, top_p=0), openai.BadRequestError, "top_p"),
        (dict(model="tiny", messages=HELLO, n=0), openai.BadRequestError, "n=0"),
        (dict(model="tiny", messages=HELLO, n=99), openai.BadRequestError, "n=99"),
        (dict(model="tiny", messages=HELLO, response_format={"type": "json_object"}), openai.BadRequestError,
         "response_format"),
        (dict(model="tiny", messages=[{"role": "assistant", "content": "hi"}]), openai.BadRequestError, "alternate"),
        (dict(model="tiny", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
         openai.BadRequestError, "only text"),
        (dict(model="tiny", messages=HELLO, logit_bias={"1": 5}), openai.BadRequestError, "logit_bias"),
    ]
    for kwargs, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            client.chat.completions.create(**kwargs)
        assert caught.value.body["message"] and "type" in caught.value.body
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model="tiny", prompt=[1, 2, 3])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="tiny", input="x")
    reply = client.chat.completions.create(model="tiny", messages=HELLO, temperature=0)
    assert reply.choices[0].message.content == greedy(engine, HELLO)


def never_stop(engine):
    """Makes the model avoid its stop tokens, so an answer runs to max_tokens unless it is cancelled."""

    def hook(module, args, kwargs, output):
        output.logits[..., engine.stop_ids] = -1e4
        return output

    return engine.model.register_forward_hook(hook, with_kwargs=True)


def steps_after_hang_up(engine, hang_up) -> tuple[int, int]:
    """Forward passes counted when the client has hung up, and one second later."""
    steps = []
    hooks = [engine.model.register_forward_pre_hook(lambda *a: steps.append(1)), never_stop(engine)]
    try:
        hang_up()
        threading.Event().wait(1.2)  # the server notices within its 0.5 s disconnect check
        at_hang_up = len(steps)
        threading.Event().wait(1.0)
        return at_hang_up, len(steps)
    finally:
        for hook in hooks:
            hook.remove()


def test_a_streaming_client_that_disconnects_frees_its_rows(served):
    engine, _, url = served

    def hang_up():
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 900, "stream": True, "temperature": 0}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # one real token arrived; hang up

    before, later = steps_after_hang_up(engine, hang_up)
    assert later == before < 900  # nothing runs for the departed client


def test_a_client_that_times_out_frees_its_rows(served):
    engine, _, url = served

    def hang_up():
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 900, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)

    before, later = steps_after_hang_up(engine, hang_up)
    assert later == before < 900
    reply = openai.OpenAI(base_url=url + "/v1", api_key="x").chat.completions.create(
        model="tiny", messages=HELLO, max_tokens=2)
    assert reply.usage.completion_tokens <= 2


def test_fields_the_server_cannot_honour_are_refused(served):
    _, client, _ = served
    for extra, words in [({"reasoning_effort": "high"}, "reasoning_effort"), ({"parallel_tool_calls": False}, "parallel"),
                         ({"modalities": ["text", "audio"]}, "modalities"), ({"store": True}, "store")]:
        with pytest.raises(openai.BadRequestError, match=words):
            client.chat.completions.create(model="tiny", messages=HELLO, **extra) if "reasoning" not in words else \
                client.chat.completions.create(model="tiny", messages=HELLO, extra_body=extra)
    named = [{"role": "user", "content": "hi", "name": "bob"}]
    with pytest.raises(openai.BadRequestError, match="'name' has no place"):
        client.chat.completions.create(model="tiny", messages=named)
    both = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Let me see.", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"}]
    with pytest.raises(openai.BadRequestError, match="both content and tool_calls"):
        client.chat.completions.create(model="tiny", messages=both)
    with pytest.raises(openai.BadRequestError, match="shorten the prompt"):
        client.completions.create(model="tiny", prompt="hi " * 2000)
    # honoured extras of vLLM's API: min_p, top_k, repetition_penalty
    reply = client.chat.completions.create(model="tiny", messages=HELLO, temperature=1.0, seed=1,
                                           extra_body={"min_p": 0.5, "top_k": 5, "repetition_penalty": 1.2})
    assert reply.choices[0].message.content is not None


def test_api_key_is_required_when_set():
    engine = make_engine()
    config = settings(api_key="s3cret")
    with running(create_app(config, engine), config.port) as url:
        for key in ("wrong", ""):
            with pytest.raises(openai.AuthenticationError, match="API key"):
                openai.OpenAI(base_url=url + "/v1", api_key=key or "x", max_retries=0,
                              default_headers={} if key else {"Authorization": ""}).models.list()
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").status_code == 200
        assert openai.OpenAI(base_url=url + "/v1", api_key="s3cret").models.list().data[0].id == "tiny"
    engine.close()


def test_a_full_queue_answers_429():
    engine = make_engine(max_batch_size=1, max_waiting=1)
    config = settings(max_batch_size=1, max_concurrent=1)
    release = threading.Event()
    hook = engine.model.register_forward_pre_hook(lambda *a: release.wait(30) and None)
    with running(create_app(config, engine), config.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.chat.completions.create, model="tiny", messages=HELLO, max_tokens=2)
            while not engine._scheduler or engine._scheduler._waiting.qsize() or not first.running():
                threading.Event().wait(0.05)  # the first request is being generated (held by the hook)
            threading.Event().wait(0.3)
            second = pool.submit(client.chat.completions.create, model="tiny", messages=HELLO, max_tokens=2)
            threading.Event().wait(0.5)  # the second waits in the queue
            with pytest.raises(openai.RateLimitError, match="busy"):
                client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
            release.set()
            hook.remove()
            assert first.result().choices[0].message.content is not None
            assert second.result().choices[0].message.content is not None
    engine.close()


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def force_reply(model, token_ids):
    """Makes the model answer exactly token_ids (counted from each prefill), whatever the prompt."""
    state = {"step": 0}

    def hook(module, args, kwargs, output):
        state["step"] = 0 if kwargs["input_ids"].shape[1] > 1 else state["step"] + 1
        wanted = token_ids[min(state["step"], len(token_ids) - 1)]
        output.logits[:, -1, :] = -1e4
        output.logits[:, -1, wanted] = 1e4
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def test_tool_calls_round_trip_in_the_templates_format():
    tok = chatml_tokenizer()
    engine = make_engine(template=get_template("qwen", tok), max_new_tokens=60)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    handle = force_reply(engine.model, tok.encode(call, add_special_tokens=False) + [im_end])
    config = settings()
    question = [{"role": "user", "content": "Weather in Paris?"}]
    with running(create_app(config, engine), config.port) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [tool_call] = choice.message.tool_calls
        assert tool_call.function.name == "get_weather" and json.loads(tool_call.function.arguments) == {"city": "Paris"}
        chunks = list(client.chat.completions.create(model="tiny", messages=question, tools=[WEATHER], stream=True))
        streamed = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert streamed[0][0].function.name == "get_weather"

        handle.remove()
        answer = "Sunny"
        handle = force_reply(engine.model, tok.encode(answer, add_special_tokens=False) + [im_end])
        follow_up = question + [
            {"role": "assistant", "content": None, "tool_calls": [tool_call.model_dump()]},
            {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temperature": 21}'},
        ]
        seen = []
        spy = engine.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"][0].tolist()),
                                                     with_kwargs=True)
        reply = client.chat.completions.create(model="tiny", messages=follow_up, tools=[WEATHER])
        spy.remove()
        assert reply.choices[0].message.content == "Sunny" and reply.choices[0].finish_reason == "stop"
        # The prompt the model saw is the template's rendering of the call and its result.
        expected = engine.prompt_ids([Message("user", "Weather in Paris?"),
                                      Message("function_call", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
                                      Message("observation", '{"temperature": 21}')], None, json.dumps([WEATHER["function"]]))
        assert seen[0] == expected
        assert "<tool_response>" in tok.decode(seen[0])
    handle.remove()
    engine.close()


def test_tool_call_formats_parse_back_what_the_templates_write():
    from tuneforge.data.templates.named_tools import Glm4Tools, HermesTools, Llama3Tools
    from tuneforge.infer.api.tool_calls import parse_tool_calls

    calls = [("get_weather", {"city": "巴黎"})]
    for fmt in (HermesTools(), Llama3Tools(), Glm4Tools()):
        content, parsed = parse_tool_calls(fmt.calls(calls), ["get_weather"])
        assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls, type(fmt).__name__
    two = HermesTools().calls([("a", {}), ("b", {"x": 1})])
    assert [c.name for c in parse_tool_calls("Let me check.\n" + two, ["a", "b"])[1]] == ["a", "b"]
    assert parse_tool_calls('{"name": "unknown", "arguments": {}}', ["get_weather"]) == (
        '{"name": "unknown", "arguments": {}}', [])
    assert parse_tool_calls("plain answer", ["get_weather"])[1] == []


def test_score_endpoint_serves_a_reward_model(tmp_path):
    from tests.tiny import save_tiny_model
    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.infer.api.app import load_service
    from tuneforge.models.value_head import new_value_head, save_value_head

    folder = save_tiny_model(tmp_path / "rm")
    head = new_value_head(64, seed=3)
    save_value_head(head.weight.detach(), folder)
    args, _ = build_args(read_sources([f"model_name_or_path={folder}"]), with_training=False)
    config = settings(model_name="rm")
    engine, reward = load_service(args, config)
    assert engine is None and reward is not None
    conversation = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Forge."}]
    ids = reward.tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = reward.tokenizer.encode(ids, add_special_tokens=False)
    with torch.no_grad():
        hidden = reward.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        expected = float(reward.head(hidden.float()))
    with running(create_app(config, None, reward), config.port) as url:
        scored = httpx.post(url + "/v1/score", json={"model": "rm", "messages": [conversation, conversation[:1] + [
            {"role": "assistant", "content": "no"}]]}).json()
        assert scored["data"][0]["score"] == pytest.approx(expected, abs=1e-5)
        assert scored["data"][0]["score"] != scored["data"][1]["score"]
        texts = httpx.post(url + "/v1/score", json={"model": "rm", "input": ["abc", "a much longer text here"]}).json()
        alone = httpx.post(url + "/v1/score", json={"model": "rm", "input": "abc"}).json()
        assert texts["data"][0]["score"] == pytest.approx(alone["data"][0]["score"], abs=1e-5)  # padding ignored
        chat = httpx.post(url + "/v1/chat/completions", json={"model": "rm", "messages": HELLO})
        assert chat.status_code == 400 and "reward model" in chat.json()["error"]["message"]
        bad = httpx.post(url + "/v1/score", json={"model": "rm", "messages": [HELLO]})
        assert bad.status_code == 400 and "end with the assistant" in bad.json()["error"]["message"]
