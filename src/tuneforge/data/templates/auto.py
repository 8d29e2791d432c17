"""`template: auto`: render with the tokenizer's own Jinja chat template.

Assistant spans are found by render-and-diff: the text of conversation[:k] (with the generation header) is
a prefix of the text of conversation[:k+1], and the difference is exactly response k. The template's output
is checked to be prefix-consistent, and a template that is not (one that rewrites earlier turns) is refused
with the advice to pick a named template, rather than guessed at.

Rendering every prefix of a conversation costs O(turns^2): a 20-turn row would render 40 messages 20 times
over. So turn t (t >= 2) is diffed in a short window instead: the first turn (system prompt, first user
message and response, which templates treat specially), then user message t and response t. Each window's
prompt and response text must then be found, in order, at the cursor in the one render of the whole
conversation; the first turn that is not (a template that numbers its rounds, or that rewrites history)
sends the conversation back to the exact prefix renders, which either agree or refuse as they always did.
Renders per conversation: 1 + 3 per turn, of at most 5 messages each after the first two turns.
"""

from __future__ import annotations

import json

from ...errors import TemplateError
from ..conversation import FUNCTION, OBSERVATION, Message
from .base import Rendered, RenderedTurn


def to_hf_messages(messages: list[Message], system: str | None) -> list[dict]:
    """Our roles to the OpenAI/HF message shape that Jinja chat templates expect."""
    out = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == FUNCTION:
            out.append({"role": "assistant", "content": "", "tool_calls": _tool_calls(m.content)})
        elif m.role == OBSERVATION:
            out.append({"role": "tool", "content": m.content})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def _tool_calls(content: str) -> list[dict]:
    try:
        calls = json.loads(content)
    except json.JSONDecodeError as e:
        raise TemplateError(f"a function_call turn is not JSON ({e}): {content[:80]!r}") from None
    calls = calls if isinstance(calls, list) else [calls]
    return [{"type": "function", "function": {"name": c.get("name"), "arguments": c.get("arguments", {})}} for c in calls]


def parse_tools(tools: str | None) -> list | None:
    if not tools:
        return None
    try:
        parsed = json.loads(tools)
    except json.JSONDecodeError as e:
        raise TemplateError(f"the tools column is not JSON ({e}): {tools[:80]!r}") from None
    return parsed if isinstance(parsed, list) else [parsed]


def _names(items) -> list[str]:
    """Function names of a tool list or of a function_call turn's calls (either shape)."""
    names = []
    for item in items or []:
        if isinstance(item, dict):
            name = item.get("name") or (item.get("function") or {}).get("name")
            if isinstance(name, str) and name:
                names.append(name)
    return names


def _require_rendered(names: list[str], text: str, what: str) -> None:
    # A chat template without tool support renders tool lists and calls as nothing; training on that
    # would teach the model to answer a tool turn with an empty message.
    missing = [n for n in names if n not in text]
    if missing:
        raise TemplateError(
            f"the tokenizer's chat template does not render {what} (function '{missing[0]}' is missing from "
            "the rendered text); set `template` to a named template with tool support (e.g. qwen, llama3, "
            "glm4, mistral), or use a dataset without tools"
        )


class AutoTemplate:
    name = "auto"

    def __init__(self, default_system: str | None = None, enable_thinking: bool = True):
        self.default_system = default_system
        self.enable_thinking = enable_thinking

    def _render(self, tokenizer, hf_messages, tools, generation: bool) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "template: auto needs a tokenizer with a chat template, and this one has none; "
                "set `template` to a named one (e.g. default for base models, empty for pre-training)"
            )
        from jinja2.exceptions import TemplateError as JinjaError

        try:
            return tokenizer.apply_chat_template(
                hf_messages,
                tools=tools,
                tokenize=False,
                add_generation_prompt=generation,
                enable_thinking=self.enable_thinking,
            )
        except JinjaError as e:  # e.g. raise_exception('System role not supported') in the template itself
            roles = ", ".join(dict.fromkeys(m["role"] for m in hf_messages))
            raise TemplateError(
                f"the tokenizer's chat template refused a conversation with roles {roles}: {e}; set `template` "
                "to a named template, or leave out what the model's template does not support (e.g. system prompts)"
            ) from None

    def render(self, messages, system, tools, tokenizer) -> Rendered:
        system = system or self.default_system
        hf = to_hf_messages(messages, system)
        offset = 1 if system else 0
        tool_list = parse_tools(tools)
        renders: dict[tuple, str] = {}

        def render(indices: tuple[int, ...], generation: bool) -> str:
            """The template's text of the messages hf[i] for i in indices; each is rendered once."""
            key = (indices, generation)
            if key not in renders:
                renders[key] = self._render(tokenizer, [hf[i] for i in indices], tool_list, generation)
            return renders[key]

        full = render(tuple(range(len(hf))), False)
        _require_rendered(_names(tool_list), full, "tool lists")
        turns = self._windowed_turns(messages, hf, offset, render, full)
        if turns is None:
            turns = self._exact_turns(messages, hf, offset, render, full)
        return Rendered(turns, suffix=full[sum(len(t.prompt) + len(t.response) for t in turns):])

    def _exact_turns(self, messages, hf, offset, render, full) -> list[RenderedTurn]:
        """Render-and-diff on every prefix of the conversation: O(turns^2) characters rendered."""
        turns, cursor = [], 0
        for k in range(1, len(messages), 2):
            upto_prompt = tuple(range(offset + k))
            before = render(upto_prompt, True)
            upto = render(tuple(range(offset + k + 1)), False)
            if not (upto.startswith(before) and full.startswith(upto) and before.startswith(full[:cursor])):
                raise TemplateError(
                    f"the tokenizer's chat template renders earlier turns differently once later ones are added "
                    f"(turn {k // 2 + 1} of {messages and len(messages) // 2}), so assistant spans cannot be located "
                    "exactly; set `template` to the model family's named template (e.g. qwen3_nothink)"
                )
            turns.append(self._turn(messages, hf, offset, k, before[cursor:], upto[len(before):],
                                    before, render(upto_prompt, False)))
            cursor = len(upto)
        return turns

    def _windowed_turns(self, messages, hf, offset, render, full) -> list[RenderedTurn] | None:
        """Render-and-diff on windows (first turn + turn t); None when a window's text is not the whole
        conversation's text at that point, so that the exact prefix renders decide."""
        first = tuple(range(offset + 2))  # system prompt, first user message and first response
        turns, cursor = [], 0
        try:
            for k in range(1, len(messages), 2):
                window = first + (offset + k - 1, offset + k) if k > 1 else first
                upto_prompt = window[:-1]
                before = render(upto_prompt, True)
                upto = render(window, False)
                previous = render(first, False) if k > 1 else ""
                if not (upto.startswith(before) and before.startswith(previous)):
                    return None
                prompt, response = before[len(previous):], upto[len(before):]
                if not (full.startswith(prompt, cursor) and full.startswith(response, cursor + len(prompt))):
                    return None
                turns.append(self._turn(messages, hf, offset, k, prompt, response, before, render(upto_prompt, False)))
                cursor += len(prompt) + len(response)
        except Exception:  # noqa: BLE001 - refused in a window: the exact renders say whether the whole is
            return None
        return turns

    @staticmethod
    def _turn(messages, hf, offset, k, prompt: str, response: str, before: str, no_header: str) -> RenderedTurn:
        header = len(before) - len(no_header) if before.startswith(no_header) else 0
        if messages[k].role == FUNCTION:
            _require_rendered(_names(hf[offset + k]["tool_calls"]), response, "tool calls")
        content = messages[k].content
        pos = response.rfind(content) if content else -1
        tail = len(response) - (pos + len(content)) if pos >= 0 else 0
        return RenderedTurn(prompt, response, prompt_tail=header, response_tail=tail)

    def render_prompt(self, messages, system, tools, tokenizer) -> str:
        system = system or self.default_system
        return self._render(tokenizer, to_hf_messages(messages, system), parse_tools(tools), generation=True)

    def stop_words(self, tokenizer) -> list[str]:
        """The special tokens that close an assistant turn, read off a rendered one-turn conversation."""
        words = []
        try:
            probe = [Message("user", "x"), Message("assistant", "y")]
            response = self.render(probe, None, None, tokenizer).turns[0].response
            special = set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {}))
            words = [t for t in sorted(special, key=len, reverse=True) if t and t in response.split("y", 1)[-1]]
        except TemplateError:
            pass
        if tokenizer.eos_token and tokenizer.eos_token not in words:
            words.append(tokenizer.eos_token)
        return words

    def jinja(self, tokenizer) -> str | None:
        return None
