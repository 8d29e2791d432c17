"""A Jinja chat template equivalent to a NamedTemplate, saved with the trained tokenizer.

Serving tools (transformers, vLLM, llama.cpp) then build the same prompt the model was trained on. The
template covers plain conversations (system/user/assistant messages; no tools). It is generated from the
spec's format strings with the tokenizer's BOS/EOS written in as text, and uses only expression and
statement tags, so the trim_blocks/lstrip_blocks settings of the renderer cannot change its output.
"""

from __future__ import annotations

import json

from .named import EMPTY_THINK, PLACEHOLDER


def _literal(text: str) -> str:
    # A JSON string is also a valid Jinja string literal with the same value.
    return json.dumps(text, ensure_ascii=False)


def _expression(fmt: str, tokens: dict[str, str], variables: dict[str, str]) -> str:
    """`fmt` as a Jinja expression: literals joined with the Jinja variables standing for placeholders."""
    parts = PLACEHOLDER.split(fmt)
    pieces = []
    for i, part in enumerate(parts):
        if i % 2 and part in variables:
            pieces.append(variables[part])
        elif i % 2:
            pieces.append(_literal(tokens.get(part, "")))
        elif part:
            pieces.append(_literal(part))
    return " + ".join(pieces) or "''"


def _out(expression: str) -> str:
    return "" if expression == "''" else "{{- " + expression + " }}"


def build_jinja(template, tokenizer) -> str:
    spec, tokens = template.spec, template.special_tokens(tokenizer)

    def trimmed(role: str, variable: str) -> str:
        return f"({variable} | trim)" if role in spec.trim else variable

    def expr(fmt: str, **variables: str) -> str:
        return _expression(fmt, tokens, variables)

    # Which messages carry the system prompt and which user turn it joins (first or last user message).
    lines = [
        "{%- set ns = namespace(system=" + _literal(template.default_system) + ", first_user=-1, last_user=-1) %}",
        "{%- set loop_messages = messages %}",
        "{%- if messages and messages[0].role == 'system' %}",
        "{%- if messages[0].content %}{%- set ns.system = messages[0].content %}{%- endif %}",
        "{%- set loop_messages = messages[1:] %}",
        "{%- endif %}",
        "{%- for message in loop_messages %}{%- if message.role == 'user' %}",
        "{%- if ns.first_user < 0 %}{%- set ns.first_user = loop.index0 %}{%- endif %}",
        "{%- set ns.last_user = loop.index0 %}",
        "{%- endif %}{%- endfor %}",
        _out(expr(spec.prefix)),
    ]
    if spec.system:
        lines.append("{%- if ns.system %}" + _out(expr(spec.system, content=trimmed("system", "ns.system"))))
        lines.append("{%- endif %}")
    lines += ["{%- for message in loop_messages %}", "{%- if message.role == 'user' %}"]
    if spec.separator:
        lines.append("{%- if not loop.first %}" + _out(expr(spec.separator)) + "{%- endif %}")
    lines.append("{%- set content = " + trimmed("user", "message.content") + " %}")
    if not spec.system:
        target = "ns.last_user" if spec.system_in_last_user else "ns.first_user"
        merged = expr(spec.system_in_user, system="ns.system", content="content")
        lines.append("{%- if ns.system and loop.index0 == " + target + " %}{%- set content = " + merged + " %}")
        lines.append("{%- endif %}")
    lines += [_out(expr(spec.user, content="content")), "{%- elif message.role == 'assistant' %}"]
    before, after = spec.assistant.split("{content}")
    end = expr(after) + (" + " + _literal(tokens["eos"]) if spec.efficient_eos else "")
    lines.append(_out(expr(spec.header + before)))
    lines += _thinking_answer(trimmed) if spec.thinking else [_out(trimmed("assistant", "message.content"))]
    lines += [_out(end), "{%- endif %}", "{%- endfor %}"]
    lines.append("{%- if add_generation_prompt %}" + _out(expr(spec.header)))
    if spec.thinking:
        default = "true" if template.enable_thinking else "false"
        lines.append(
            "{%- if not (enable_thinking if enable_thinking is defined else " + default + ") %}"
            + _out(_literal(EMPTY_THINK))
            + "{%- endif %}"
        )
    lines += ["{%- else %}" + _out(expr(spec.suffix)), "{%- endif %}"]
    return "\n".join(lines)


def _thinking_answer(trimmed) -> list[str]:
    """Qwen3 reasoning: a whole conversation (training) shows every turn's think block, a generation
    prompt shows it only for turns after the last user message that have reasoning (as Qwen3 does)."""
    return [
        "{%- set content = " + trimmed("assistant", "message.content") + " %}",
        "{%- set reasoning = '' %}",
        "{%- if '</think>' in content %}",
        "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}",
        "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}",
        "{%- endif %}",
        "{%- if not add_generation_prompt or (loop.index0 > ns.last_user and reasoning) %}",
        _out("'<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n')"),
        "{%- else %}" + _out("content") + "{%- endif %}",
    ]
