"""Built-in chat templates: each family is a `TemplateSpec` (data, in named_specs.py) rendered by one engine.

Format strings use the placeholders {content}, {system}, {bos} and {eos}; {bos}/{eos} become the
tokenizer's own BOS/EOS text (BOS is left out when the tokenizer has none). A conversation renders as

    prefix + system block (or tool block) + [separator] user + header | response | ... + suffix

where everything up to and including the generation `header` is the (untrained) prompt of a turn and the
response is the assistant content in the `assistant` format (plus EOS for `efficient_eos` templates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import TemplateError
from ..conversation import FUNCTION, OBSERVATION, PROMPT_ROLES, RESPONSE_ROLES, USER, Message
from .base import Rendered, RenderedTurn
from .named_tools import ToolFormat, parse_calls, parse_tools

EMPTY_THINK = "<think>\n\n</think>\n\n"
PLACEHOLDER = re.compile(r"\{(bos|eos|system|content)\}")


def fill(fmt: str, **values: str) -> str:
    """Replaces the placeholders of `fmt` in one pass, so braces inside a content are never touched."""
    parts = PLACEHOLDER.split(fmt)
    return "".join(values.get(part, "") if i % 2 else part for i, part in enumerate(parts))


def split_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, answer) of a "<think>...</think>answer" response, the way Qwen3's template splits it."""
    if "</think>" not in content:
        return "", content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def think_block(reasoning: str) -> str:
    return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n"


@dataclass(frozen=True)
class TemplateSpec:
    """One chat format. See the module docstring for how the pieces fit together.

    system: format of the system block; "" when the family has none and the system prompt is merged
        into a user turn with `system_in_user` (the first user turn, or the last with system_in_last_user).
    trim: roles ("system", "user", "assistant") whose content the official template strips of whitespace.
    efficient_eos: the format has no end-of-turn token, so EOS is appended to each trained response.
    thinking: Qwen3-style reasoning ("<think>...</think>" in assistant content), see NamedTemplate.
    """

    name: str
    user: str
    header: str
    assistant: str = "{content}"
    system: str = ""
    system_in_user: str = "{system}\n\n{content}"
    system_in_last_user: bool = False
    prefix: str = ""
    separator: str = ""
    suffix: str = ""
    default_system: str = ""
    efficient_eos: bool = False
    stop_words: tuple[str, ...] = ()
    trim: frozenset[str] = frozenset()
    tools: ToolFormat | None = None
    thinking: bool = False
    doc: str = ""


class NamedTemplate:
    """A `Template` (see base.py) for one TemplateSpec.

    System prompt: the row's system, else `default_system` (the spec's unless overridden).

    Reasoning (spec.thinking, Qwen3): every trained response is rendered the way the official template
    renders it when it is the last message, i.e. as the model produces it at inference: its
    "<think>\\n...\\n</think>\\n\\n" block, or an empty block when the content has no reasoning. With
    enable_thinking=True that empty block is part of the trained response (the model learns to decide
    itself); with enable_thinking=False it is the end of the prompt (as the official generation prompt
    puts it) and is not trained. The official template instead drops reasoning from assistant turns
    before the last user message; training keeps every turn as written so no turn teaches the model to
    answer without its think block. `render_prompt` (inference) follows the official template exactly.

    efficient_eos: the EOS after each response is also in the history of a generation prompt, so the model
    sees at inference the same history it was trained on.
    """

    def __init__(self, spec: TemplateSpec, default_system: str | None = None, enable_thinking: bool = True):
        self.spec = spec
        self.name = spec.name
        self.default_system = spec.default_system if default_system is None else default_system
        self.enable_thinking = enable_thinking

    # ----- the Template protocol

    def render(self, messages: list[Message], system: str | None, tools: str | None, tokenizer) -> Rendered:
        if not messages or len(messages) % 2:
            raise TemplateError(
                f"template {self.name!r} renders training conversations that end with a response, got "
                f"{len(messages)} messages ending with {messages[-1].role if messages else 'nothing'!r}"
            )
        turns = self._turns(messages, system, tools, tokenizer, for_generation=False)
        return Rendered(turns, suffix=fill(self.spec.suffix, **self.special_tokens(tokenizer)))

    def render_prompt(self, messages: list[Message], system: str | None, tools: str | None, tokenizer) -> str:
        if len(messages) % 2 == 0:
            raise TemplateError(
                f"template {self.name!r} builds a generation prompt from messages that end with a user or "
                f"observation turn, got {len(messages)} messages"
            )
        turns = self._turns(messages, system, tools, tokenizer, for_generation=True)
        return "".join(t.prompt + t.response for t in turns)

    def stop_words(self, tokenizer) -> list[str]:
        tokens = self.special_tokens(tokenizer)
        words = [fill(w, **tokens) for w in self.spec.stop_words]
        if self.spec.efficient_eos or not words:
            words.append(tokens["eos"])
        return [w for w in dict.fromkeys(words) if w]

    def jinja(self, tokenizer) -> str:
        from .named_jinja import build_jinja

        return build_jinja(self, tokenizer)

    # ----- rendering

    def special_tokens(self, tokenizer) -> dict[str, str]:
        return {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}

    def _trim(self, role: str, content: str) -> str:
        return content.strip() if role in self.spec.trim else content

    def _check(self, messages: list[Message], tokenizer) -> None:
        for i, message in enumerate(messages):
            expected = PROMPT_ROLES if i % 2 == 0 else RESPONSE_ROLES
            if message.role not in expected:
                raise TemplateError(
                    f"message {i} has role {message.role!r} but must be one of {expected}: conversations "
                    "alternate user/observation and assistant/function_call turns, starting with a user turn"
                )
        if self.spec.efficient_eos and not tokenizer.eos_token:
            raise TemplateError(
                f"template {self.name!r} ends each response with the EOS token, but the tokenizer has no "
                "eos_token; set one (e.g. tokenizer.eos_token = '</s>')"
            )

    def _turns(self, messages, system, tools, tokenizer, for_generation: bool) -> list[RenderedTurn]:
        spec, tokens = self.spec, self.special_tokens(tokenizer)
        self._check(messages, tokenizer)
        tool_list = parse_tools(tools) if tools else []
        if spec.tools is None and (tool_list or any(m.role in (FUNCTION, OBSERVATION) for m in messages)):
            raise TemplateError(
                f"template {self.name!r} has no tool format, but this conversation has tools or "
                "function_call/observation turns; use a template with one (chatml, qwen, qwen3, "
                "qwen3_nothink, llama3, glm4) or template: auto with a tokenizer whose chat template has tools"
            )
        system = system or self.default_system
        system_block = ""
        if system and spec.system:
            system_block = fill(spec.system, content=self._trim("system", system), **tokens)
        if tool_list:
            system_block = spec.tools.system_block(system, tool_list, system_block)
        merged_system = system if system and not spec.system else ""
        users = [i for i, m in enumerate(messages) if m.role == USER]
        merge_at = (users[-1] if spec.system_in_last_user else users[0]) if merged_system and users else None
        last_query = users[-1] if users else -1

        turns = []
        for i in range(0, len(messages), 2):
            prompt = fill(spec.prefix, **tokens) + system_block if i == 0 else fill(spec.separator, **tokens)
            message = messages[i]
            if message.role == USER:
                content = self._trim("user", message.content)
                if i == merge_at:
                    content = fill(spec.system_in_user, system=merged_system, content=content, **tokens)
                if tool_list and i == users[0]:  # users is not empty: this message is one
                    content = spec.tools.first_user(content, tool_list)
                prompt += fill(spec.user, content=content, **tokens)
            else:
                prompt += fill(spec.tools.observation, content=message.content, **tokens)
            header, response, tail = fill(spec.header, **tokens), "", 0
            if i + 1 < len(messages):
                header, response, tail = self._response(
                    messages[i + 1], header, tokens, history=for_generation, after_query=i + 1 > last_query
                )
            elif spec.thinking and not self.enable_thinking:
                header += EMPTY_THINK
            turns.append(RenderedTurn(prompt + header, response, len(header), tail))
        return turns

    def _response(self, message: Message, header: str, tokens: dict, history: bool, after_query: bool):
        """(header, response, response_tail); history: an earlier turn inside a generation prompt."""
        spec = self.spec
        if message.role == FUNCTION:
            calls = parse_calls(message.content)
            if spec.tools.max_calls and len(calls) > spec.tools.max_calls:
                raise TemplateError(
                    f"template {self.name!r} allows {spec.tools.max_calls} function call per assistant turn, "
                    f"got {len(calls)}; split them into separate function_call/observation turns"
                )
            body, fmt = spec.tools.calls(calls), spec.tools.call_format or spec.assistant
        else:
            body, fmt = self._trim("assistant", message.content), spec.assistant
        if spec.thinking:
            reasoning, answer = split_reasoning(body)
            if history:
                body = think_block(reasoning) + answer.lstrip("\n") if after_query and reasoning else answer
            elif reasoning or self.enable_thinking:
                body = think_block(reasoning) + answer.lstrip("\n")
            else:
                header, body = header + EMPTY_THINK, answer.lstrip("\n")
        before, after = fmt.split("{content}")
        end = fill(after, **tokens) + (tokens["eos"] if spec.efficient_eos else "")
        return header, fill(before, **tokens) + body + end, len(end)
