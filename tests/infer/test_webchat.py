"""`tuneforge webchat` driven over HTTP through the page's own API (gradio_client), on a tiny random Llama."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("gradio", reason="pip install 'tuneforge[webchat]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install 'tuneforge[webchat]'")

from tuneforge.cli import main  # noqa: E402
from tuneforge.config.parser import build_args, read_sources  # noqa: E402
from tuneforge.data.conversation import Message  # noqa: E402
from tuneforge.errors import TemplateError  # noqa: E402
from tuneforge.infer.engine import ChatEngine  # noqa: E402
from tuneforge.infer.sampling import SamplingParams  # noqa: E402
from tuneforge.infer.webchat import build_page, launch  # noqa: E402

TOKENS = 16
GREEDY = SamplingParams(TOKENS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Spy:
    """Records the (messages, system) of every prompt the engine renders; raises `fail` when set."""

    def __init__(self, engine):
        self.calls, self.fail, self._render = [], None, engine.prompt_ids
        engine.prompt_ids = self

    def __call__(self, messages, system=None, tools=None):
        if self.fail:
            raise self.fail
        self.calls.append((list(messages), system))
        return self._render(messages, system, tools)


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    args, _ = build_args(read_sources(["--model_name_or_path", tiny_model_dir]), with_training=False)
    engine = ChatEngine.from_args(args, max_batch_size=4)
    spy = Spy(engine)
    page = build_page(engine)
    url = launch(page, "127.0.0.1", free_port())
    client = gradio_client.Client(url, verbose=False)
    try:
        yield engine, client, spy, url
    finally:
        client.close()
        page.close()
        engine.close()


def say(client, text, system="", temperature=0, max_new_tokens=TOKENS):
    """One turn through the page; returns the conversation shown, as (role, text) pairs."""
    _, shown = client.predict(text, system, temperature, 0.7, max_new_tokens, 1.0, api_name="/chat")
    return [(m["role"], "".join(part["text"] for part in m["content"])) for m in shown]


def test_greedy_answer_streams_and_equals_engine_chat(served):
    engine, client, spy, _ = served
    client.predict(api_name="/clear")
    job = client.submit("Who are you?", "", 0, 0.7, TOKENS, 1.0, api_name="/chat")
    updates = [shown[-1]["content"] for _, shown in job]
    answers = ["".join(part["text"] for part in content) for content in updates]
    expected = engine.chat([Message("user", "Who are you?")], params=GREEDY)
    assert answers[-1] == expected and len(expected) > 1
    assert len(set(answers)) > 2  # the answer grew in several updates
    assert all(expected.startswith(a) for a in answers)


def test_system_prompt_and_history_reach_the_engine(served):
    engine, client, spy, _ = served
    client.predict(api_name="/clear")
    first = say(client, "Hello", system="Answer in French.")
    assert spy.calls[-1] == ([Message("user", "Hello")], "Answer in French.")
    assert first[-1][1] == engine.chat([Message("user", "Hello")], system="Answer in French.", params=GREEDY)

    second = say(client, "Who are you?", system="Answer in French.")
    history = [Message("user", "Hello"), Message("assistant", first[-1][1]), Message("user", "Who are you?")]
    assert spy.calls[-1] == (history, "Answer in French.")
    assert second[:2] == first and second[2] == ("user", "Who are you?")
    assert second[3][1] == engine.chat(history, system="Answer in French.", params=GREEDY)
    # without a system prompt the template renders another prompt, hence (here) another answer
    assert engine.prompt_ids(history) != engine.prompt_ids(history, "Answer in French.")


def test_clear_empties_the_conversation(served):
    engine, client, spy, _ = served
    say(client, "Hello")
    assert client.predict(api_name="/clear") == ("", [])
    assert [role for role, _ in say(client, "Hi")] == ["user", "assistant"]
    assert spy.calls[-1][0] == [Message("user", "Hi")]


def test_an_error_is_shown_and_the_turn_taken_back(served):
    engine, client, spy, _ = served
    client.predict(api_name="/clear")
    spy.fail = TemplateError("template qwen cannot render a tool message")
    try:
        with pytest.raises(gradio_client.exceptions.AppError, match="cannot render a tool message"):
            say(client, "Hello")
    finally:
        spy.fail = None
    say(client, "Hi")  # the page still answers, and the failed turn is not in the history
    assert spy.calls[-1][0] == [Message("user", "Hi")]


def test_cancelling_stops_the_generation(served):
    engine, client, spy, _ = served
    client.predict(api_name="/clear")
    steps = []

    def slow(module, args, output):  # every step is slow and no answer ends before max_new_tokens
        steps.append(1)
        time.sleep(0.02)
        output.logits[:, -1, engine.stop_ids] = -1e4
        return output

    hook = engine.model.register_forward_hook(slow)
    try:
        job = client.submit("Hello", "", 0, 0.7, 1000, 1.0, api_name="/chat")
        deadline = time.time() + 10
        while len(steps) < 5 and time.time() < deadline:
            time.sleep(0.05)
        job.cancel()
        time.sleep(1.0)
        seen = len(steps)
        time.sleep(0.5)
        assert 5 <= seen < 200 and len(steps) == seen  # the scheduler stopped generating
    finally:
        hook.remove()
    say(client, "Hi")  # the part of the answer that was shown stays in the conversation
    assert [(m.role, m.content) for m in spy.calls[-1][0]][::2] == [("user", "Hello"), ("user", "Hi")]
    assert spy.calls[-1][0][1].role == "assistant" and spy.calls[-1][0][1].content


def test_the_page_loads_nothing_from_elsewhere(served):
    import httpx

    url = served[3]
    page = httpx.get(url).text
    assert "fonts.googleapis" not in page and "fonts.googleapis" not in httpx.get(url + "theme.css").text


def test_webchat_command_serves_the_page(tiny_model_dir, monkeypatch, capsys):
    import gradio

    answers = []

    def drive_then_return(page):  # stands in for blocking until Ctrl-C
        client = gradio_client.Client(page.local_url, verbose=False)
        answers.append(client.predict("Hi", "", 0, 0.7, 4, 1.0, api_name="/chat"))
        client.close()

    monkeypatch.setattr(gradio.Blocks, "block_thread", drive_then_return)
    port = free_port()
    assert main(["webchat", "--model_name_or_path", tiny_model_dir, "--port", str(port)]) == 0
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
    assert answers and answers[0][1][0]["role"] == "user"


def test_bad_config_is_one_line_error(capsys):
    assert main(["webchat"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_name_or_path" in err


def test_busy_port_is_one_line_error(tiny_model_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["webchat", "--model_name_or_path", tiny_model_dir, "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"127.0.0.1:{port}" in err and "in use" in err  # before the model loads


def test_importing_tuneforge_does_not_import_gradio():
    import subprocess
    import sys

    code = "import sys, tuneforge.cli, tuneforge.infer.webchat; assert 'gradio' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

