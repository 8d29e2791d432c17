"""`tuneforge chat`: one-shot query and the REPL on the tiny model folder."""

from __future__ import annotations

import io

import pytest

from tuneforge.errors import ConfigError
from tuneforge.infer import chat as chat_module
from tuneforge.infer.chat import run_chat
from tuneforge.infer.engine import ChatEngine


def test_query_prints_a_streamed_answer_and_returns_0(tiny_model_dir, capsys):
    code = run_chat([f"model_name_or_path={tiny_model_dir}", "max_new_tokens=8", "--query", "Who are you?"])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"model: {tiny_model_dir}" in err and "template: auto" in err
    assert out.endswith("\n") and out.strip()
    assert "<|im_end|>" not in out and "Who are you?" not in out


def test_query_answer_matches_the_engine(tiny_model_dir, capsys):
    run_chat([f"model_name_or_path={tiny_model_dir}", "max_new_tokens=8", "query=Hello"])
    out = capsys.readouterr().out
    from tuneforge.config.parser import build_args, read_sources
    from tuneforge.data.conversation import Message

    args, _ = build_args(read_sources([f"model_name_or_path={tiny_model_dir}", "max_new_tokens=8"]), False)
    assert out == ChatEngine.from_args(args).chat([Message("user", "Hello")]) + "\n"


def test_missing_model_is_a_config_error():
    with pytest.raises(ConfigError, match="model_name_or_path"):
        run_chat(["query=hi"])


class RecordingEngine:
    """Stands in for ChatEngine: records the conversation each turn sees and answers 'answer N'."""

    def __init__(self):
        self.seen = []
        self.closed = False

    def stream(self, messages, system=None):
        self.seen.append([(m.role, m.content) for m in messages])
        yield "answer "
        yield str(len(self.seen))

    def close(self):
        self.closed = True


def run_repl(monkeypatch, typed: str, engine=None) -> tuple[int, RecordingEngine]:
    engine = engine or RecordingEngine()
    monkeypatch.setattr(ChatEngine, "from_args", classmethod(lambda cls, args: engine))
    monkeypatch.setattr("sys.stdin", io.StringIO(typed))
    code = run_chat(["model_name_or_path=stand-in"])
    assert engine.closed  # the scheduler thread is stopped before the interpreter exits
    return code, engine


def test_repl_keeps_history_clears_it_and_exits(monkeypatch, capsys):
    code, engine = run_repl(monkeypatch, "Hi\nAnd you?\nclear\nFresh start\nexit\nnever read\n")
    assert code == 0
    assert engine.seen == [
        [("user", "Hi")],
        [("user", "Hi"), ("assistant", "answer 1"), ("user", "And you?")],
        [("user", "Fresh start")],
    ]
    out = capsys.readouterr().out
    assert "Assistant: answer 1" in out and "History cleared." in out


def test_repl_ends_on_eof_and_skips_blank_lines(monkeypatch):
    code, engine = run_repl(monkeypatch, "\n   \nHi\n")
    assert code == 0 and engine.seen == [[("user", "Hi")]]


def test_repl_leaves_an_interrupted_turn_out_of_the_history(monkeypatch, capsys):
    class InterruptedOnce(RecordingEngine):
        def stream(self, messages, system=None):
            self.seen.append([(m.role, m.content) for m in messages])
            yield "half"
            if len(self.seen) == 1:
                raise KeyboardInterrupt

    code, engine = run_repl(monkeypatch, "First\nSecond\nexit\n", InterruptedOnce())
    assert code == 0
    assert engine.seen[1] == [("user", "Second")]
    assert "[interrupted]" in capsys.readouterr().out


def test_repl_on_the_tiny_model(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\nclear\nexit\n"))
    assert run_chat([f"model_name_or_path={tiny_model_dir}", "max_new_tokens=4"]) == 0
    out = capsys.readouterr().out
    assert out.count("Assistant: ") == 1 and "History cleared." in out


def test_header_names_model_adapter_and_template():
    from tuneforge.config.parser import build_args, read_sources

    args, _ = build_args(read_sources(["model_name_or_path=m", "adapter_name_or_path=saves/lora", "template=qwen"]), False)
    header = chat_module._header(args)
    assert "\n" not in header and "model: m" in header and "adapter: saves/lora" in header and "template: qwen" in header
