"""The Ollama Modelfile's Go template reproduces the training template's prompts."""

from __future__ import annotations

import re

import pytest

from tests.tiny import chatml_tokenizer
from tuneforge.data.conversation import Message
from tuneforge.data.templates import get_template
from tuneforge.export.ollama import modelfile, turn_pieces

CONVERSATION = [Message("user", "Hi {{ there }}"), Message("assistant", "Hello!\nHow can I help?"), Message("user", "你好")]


def run_go_template(text: str, system: str | None, messages: list[Message]) -> str:
    """Executes the subset of Go's text/template the Modelfile uses (if / else if / else / end, range, eq,
    fields and string literals) the way Ollama fills it: .System, and .Messages with .Role and .Content."""
    tokens = re.split(r"({{.*?}})", text)

    def parse(i):
        """Nodes up to an else/end action: ("text", s) | ("field", name) | ("if", [(cond, nodes)...]) |
        ("range", nodes); returns (nodes, index of the stopping action)."""
        nodes = []
        while i < len(tokens):
            tok = tokens[i]
            action = tok[2:-2].strip() if tok.startswith("{{") else None
            if action is None:
                nodes.append(("text", tok))
            elif action == "end" or action.startswith("else"):
                return nodes, i
            elif action.startswith("if "):
                branches, cond = [], action[3:]
                while True:
                    body, i = parse(i + 1)
                    branches.append((cond, body))
                    stop = tokens[i][2:-2].strip()
                    if stop == "end":
                        break
                    cond = stop[8:] if stop.startswith("else if ") else None
                nodes.append(("if", branches))
            elif action == "range .Messages":
                body, i = parse(i + 1)
                nodes.append(("range", body))
            elif action.startswith('"'):
                nodes.append(("text", action[1:-1]))
            else:
                nodes.append(("field", action[1:]))
            i += 1
        return nodes, i

    def holds(cond, scope):
        if cond is None:
            return True
        if cond == ".System":
            return bool(system)
        field, value = re.fullmatch(r'eq \.(\w+) "(.*)"', cond).groups()
        return scope[field] == value

    def run(nodes, scope):
        out = ""
        for kind, value in nodes:
            if kind == "text":
                out += value
            elif kind == "field":
                out += (system or "") if value == "System" else scope[value]
            elif kind == "if":
                out += next((run(body, scope) for cond, body in value if holds(cond, scope)), "")
            else:
                out += "".join(run(value, {"Role": m.role, "Content": m.content}) for m in messages)
        return out

    return run(parse(0)[0], {})


@pytest.mark.parametrize("name", ["auto", "qwen", "llama3", "gemma", "llama2", "glm4"])
def test_go_template_renders_what_training_rendered(name):
    tok = chatml_tokenizer()
    template = get_template(name, tok)
    pieces = turn_pieces(template, tok)
    assert pieces is not None
    go = pieces.go_template()
    assert "{{-" not in go
    for system in ("Be brief.", None):
        expected = template.render_prompt(CONVERSATION, system, None, tok)
        assert run_go_template(go, system, CONVERSATION) == expected


def test_bos_the_runtime_adds_is_left_out_and_modelfile_lines():
    from tests.tiny import build_tokenizer

    tok = build_tokenizer(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], bos_token="<|begin_of_text|>",
                          eos_token="<|eot_id|>")
    template = get_template("llama3", tok)
    full = turn_pieces(template, tok)
    assert full.head_plain.startswith("<|begin_of_text|>")
    pieces = turn_pieces(template, tok, bos_added="<|begin_of_text|>")
    assert not pieces.head_plain.startswith("<|begin_of_text|>")
    text = modelfile("m-q8_0.gguf", pieces, ["<|eot_id|>", 'say "stop" now'], "You are Forge.")
    assert text.startswith("FROM ./m-q8_0.gguf\n")
    assert 'PARAMETER stop "<|eot_id|>"' in text and 'PARAMETER stop """say "stop" now"""' in text
    assert 'SYSTEM """You are Forge."""' in text and 'TEMPLATE """{{ if .System }}' in text


def test_a_template_whose_turns_depend_on_position_gets_no_go_template():
    class NumberedTurns:
        def render_prompt(self, messages, system, tools, tokenizer):
            out = f"[{system}]\n" if system else ""
            for i, m in enumerate(messages):
                out += f"{m.role}({i // 2 + 1}): {m.content}\n"
            return out + f"assistant({len(messages) // 2 + 1}): "

    assert turn_pieces(NumberedTurns(), None) is None
    # Mistral's format moves the system prompt into the last user turn: no Go template either (Ollama then
    # reads the chat template inside the GGUF file).
    assert turn_pieces(get_template("mistral", chatml_tokenizer()), chatml_tokenizer()) is None
