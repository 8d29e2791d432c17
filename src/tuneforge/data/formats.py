"""Raw rows (alpaca, sharegpt, openai, plain text) -> Conversation, shaped for one training stage.

A row that is malformed (wrong types, roles out of order) raises DataError naming the dataset and row: the
file needs fixing. A row that is well-formed but unusable for the stage (empty response, nothing to
prefer) is dropped: `convert_row` returns the reason as a string and the loader counts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tuneforge.data.conversation import (
    ASSISTANT, FUNCTION, OBSERVATION, PROMPT_ROLES, RESPONSE_ROLES, USER, Conversation, Message,
)  # fmt: skip
from tuneforge.data.registry import DatasetSpec
from tuneforge.errors import DataError
from tuneforge.stages import row_shape

_MEDIA_PARTS = ("image", "image_url", "video", "video_url", "audio", "audio_url", "input_audio")


@dataclass
class RowContext:
    spec: DatasetSpec
    index: int
    where: str  # "data.jsonl line 12"

    def fail(self, problem: str, fix: str) -> DataError:
        return DataError(f"dataset '{self.spec.name}' row {self.index} ({self.where}): {problem}; {fix}")


def check_columns(spec: DatasetSpec, stage: str, present: list[str]) -> None:
    """Raise if a column the format and stage cannot do without is absent from the first rows."""
    shape = row_shape(stage).name
    needed = ["messages"] if spec.formatting in ("sharegpt", "openai") else ["prompt"]
    if spec.ranking:
        needed += ["chosen", "rejected"]
    elif shape in ("supervised", "kto") and spec.formatting == "alpaca":
        needed.append("response")
    if shape == "kto":
        needed.append("kto_tag")
    for key in needed:
        column = spec.columns.get(key)
        if column not in present:
            hint = " (a dataset without responses can be used with stage pt, ppo or grpo)" if key == "response" else ""
            raise DataError(
                f"{spec.where}: {key} column '{column}' not found{hint}; columns present: {', '.join(present) or 'none'}. "
                f"Set columns.{key} in the dataset_info.json entry to the right column"
            )


def _text(value, ctx: RowContext, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # csv/parquet numbers used as text, e.g. an answer "42"
    raise ctx.fail(f"'{key}' should be text but is a {type(value).__name__}", "store it as a string")


def _tools(value, ctx: RowContext, key: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)  # templates expect one JSON text
    return _text(value, ctx, key)


def _kto_tag(value, ctx: RowContext, key: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ctx.fail(f"'{key}' must be true or false (desirable or not), got {value!r}", "use a boolean")


def _content(message: dict, ctx: RowContext, tag: str, at: str) -> str:
    value = message.get(tag)
    if not isinstance(value, list):
        return _text(value, ctx, f"{at}.{tag}")
    # OpenAI-style content parts: only text parts are understood so far.
    texts = []
    for part in value:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _MEDIA_PARTS:
            raise ctx.fail(f"{at} has a '{kind}' part: multimodal columns are not supported yet", "use text-only data")
        if kind != "text":
            raise ctx.fail(f"{at} has a content part of type {kind!r}", "only {'type': 'text'} parts are supported")
        texts.append(_text(part.get("text", part.get("value")), ctx, f"{at}.text"))
    return "".join(texts)


def _history(value, ctx: RowContext, key: str) -> list[Message]:
    if value in (None, ""):
        return []
    if isinstance(value, str):  # csv stores lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ctx.fail(f"'{key}' is text that is not JSON", 'write it as [["question", "answer"], ...]') from None
    messages = []
    for pair in value if isinstance(value, list) else [None]:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ctx.fail(f"'{key}' must be a list of [prompt, response] pairs, got {value!r:.80}", "fix that row")
        messages += [Message(USER, _text(pair[0], ctx, key)), Message(ASSISTANT, _text(pair[1], ctx, key))]
    return messages


def _column(row: dict, spec: DatasetSpec, name: str):
    column = spec.columns.get(name)
    return None if column is None else row.get(column)


def alpaca_to_conversation(row: dict, ctx: RowContext) -> Conversation:
    spec, cols = ctx.spec, ctx.spec.columns
    messages = _history(_column(row, spec, "history"), ctx, cols.get("history", ""))
    parts = [_text(_column(row, spec, k), ctx, cols.get(k, k)) for k in ("prompt", "query")]
    messages.append(Message(USER, "\n".join(p for p in parts if p)))
    conv = Conversation(messages=messages)
    if spec.ranking:
        conv.chosen = Message(ASSISTANT, _text(_column(row, spec, "chosen"), ctx, cols.get("chosen", "chosen")))
        conv.rejected = Message(ASSISTANT, _text(_column(row, spec, "rejected"), ctx, cols.get("rejected", "rejected")))
    elif "response" in cols and cols["response"] in row:
        messages.append(Message(ASSISTANT, _text(row[cols["response"]], ctx, cols["response"])))
    return conv


def _sharegpt_message(raw, ctx: RowContext, at: str) -> tuple[str | None, str]:
    """(role tag as written, content) of one message; an OpenAI tool call becomes a function_call turn.
    (None, reason) when the row has to be dropped."""
    tags = ctx.spec.tags
    if not isinstance(raw, dict):
        shape = f'{{"{tags["role_tag"]}": ..., "{tags["content_tag"]}": ...}}'
        raise ctx.fail(f"{at} is a {type(raw).__name__}, not an object", f"write it as {shape}")
    if tags["role_tag"] not in raw:
        raise ctx.fail(
            f"{at} has no '{tags['role_tag']}' key (keys: {', '.join(map(str, raw))})",
            "set tags.role_tag and tags.content_tag in dataset_info.json to the keys the messages use",
        )
    role = raw[tags["role_tag"]]
    if raw.get("tool_calls"):
        content = _text(raw.get(tags["content_tag"]), ctx, f"{at}.{tags['content_tag']}")
        if content.strip():
            return None, "assistant message with both text and tool_calls (not supported yet)"
        calls = [c.get("function", c) if isinstance(c, dict) else c for c in raw["tool_calls"]]
        calls = [{**c, "arguments": _maybe_json(c.get("arguments"))} if isinstance(c, dict) else c for c in calls]
        return tags["function_tag"], json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
    return role, _content(raw, ctx, tags["content_tag"], at)


def _maybe_json(value):
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value


def sharegpt_to_conversation(row: dict, ctx: RowContext) -> Conversation | str:
    spec, tags = ctx.spec, ctx.spec.tags
    raw = _column(row, spec, "messages")
    if raw in (None, []):
        return "no messages"
    if not isinstance(raw, list):
        raise ctx.fail(f"'{spec.columns['messages']}' should be a list of messages, got {type(raw).__name__}", "fix that row")
    by_tag = {
        tags["user_tag"]: USER, tags["observation_tag"]: OBSERVATION,
        tags["assistant_tag"]: ASSISTANT, tags["function_tag"]: FUNCTION,
    }  # fmt: skip
    conv = Conversation(system=None)
    for i, item in enumerate(raw):
        at = f"message {i}"
        tag, content = _sharegpt_message(item, ctx, at)
        if tag is None:
            return content  # the reason to drop the row
        if i == 0 and tag == tags["system_tag"]:
            conv.system = content
            continue
        if tag not in by_tag:
            raise ctx.fail(
                f"{at} has unknown role '{tag}' (known: {', '.join(by_tag)}, and {tags['system_tag']} first)",
                "set the role tags (user_tag, assistant_tag, ...) in the dataset's dataset_info.json entry",
            )
        prompt_side = len(conv.messages) % 2 == 0
        if (by_tag[tag] in PROMPT_ROLES) != prompt_side:
            askers = [t for t, r in by_tag.items() if r in PROMPT_ROLES]
            answerers = [t for t, r in by_tag.items() if r in RESPONSE_ROLES]
            raise ctx.fail(
                f"roles out of order: {at} is '{tag}' but {' or '.join(askers if prompt_side else answerers)} was expected",
                f"turns must alternate {'/'.join(askers)} then {'/'.join(answerers)}, starting with {askers[0]}",
            )
        conv.messages.append(Message(by_tag[tag], content))
    if spec.ranking:
        conv.chosen = _candidate(_column(row, spec, "chosen"), ctx, spec.columns.get("chosen", "chosen"), by_tag)
        conv.rejected = _candidate(_column(row, spec, "rejected"), ctx, spec.columns.get("rejected", "rejected"), by_tag)
    return conv


def _candidate(raw, ctx: RowContext, key: str, by_tag: dict) -> Message:
    """A chosen/rejected response: a message object, plain text, or a whole conversation (its last turn)."""
    if isinstance(raw, list):
        raw = raw[-1] if raw else None
    if raw is None or isinstance(raw, str):
        return Message(ASSISTANT, raw or "")
    tag, content = _sharegpt_message(raw, ctx, f"'{key}'")
    if tag is None:
        raise ctx.fail(f"'{key}': {content}", "give the response as text or as a tool call alone")
    if by_tag.get(tag) not in RESPONSE_ROLES:
        responders = [t for t, r in by_tag.items() if r in RESPONSE_ROLES]
        raise ctx.fail(f"'{key}' has role '{tag}' but a response role ({' or '.join(responders)}) was expected", "fix that row")
    return Message(by_tag[tag], content)


def _extras(conv: Conversation, row: dict, ctx: RowContext) -> None:
    spec, cols = ctx.spec, ctx.spec.columns
    system = _text(_column(row, spec, "system"), ctx, cols.get("system", "system"))
    conv.system = system or conv.system  # a system column wins over a leading system message
    conv.tools = _tools(_column(row, spec, "tools"), ctx, cols.get("tools", "tools"))
    if "kto_tag" in cols:
        conv.kto_tag = _kto_tag(_column(row, spec, "kto_tag"), ctx, cols["kto_tag"])


def _shape_for_stage(conv: Conversation, shape: str) -> Conversation | str:
    if shape == "prompt" and conv.messages and conv.messages[-1].role in RESPONSE_ROLES:
        conv.messages = conv.messages[:-1]  # generation stages sample their own responses from the prompt
    if not conv.messages:
        return "no messages"
    for m in conv.messages:
        if not m.content.strip():
            return "empty response" if m.role in RESPONSE_ROLES else "empty prompt"
    ends_with_response = conv.messages[-1].role in RESPONSE_ROLES
    if shape == "pairwise":
        if ends_with_response:
            return "conversation ends with a response instead of the prompt to rank responses for"
        if not (conv.chosen and conv.chosen.content.strip() and conv.rejected and conv.rejected.content.strip()):
            return "empty chosen or rejected response"
        if (conv.chosen.role, conv.chosen.content) == (conv.rejected.role, conv.rejected.content):
            return "chosen equals rejected (nothing to prefer)"
    elif shape in ("supervised", "kto"):
        if not ends_with_response:
            return "no response (conversation ends with a prompt)"
        if shape == "kto" and conv.kto_tag is None:
            return "no kto_tag"
    return conv


def _other_columns(row: dict, conv: Conversation) -> str:
    """JSON of the row's columns (an `answer` to check, a reference `output`, ...) for reward functions, and
    `prompt`: the last prompt-side message, which they receive as the prompt."""
    other = dict(row)
    other["prompt"] = next((m.content for m in reversed(conv.messages) if m.role in PROMPT_ROLES), "")
    return json.dumps(other, ensure_ascii=False, default=str)


def convert_row(row: dict, spec: DatasetSpec, stage: str, index: int, where: str) -> Conversation | str:
    """A Conversation for `stage`, or the reason (a short string) the row is dropped."""
    ctx = RowContext(spec, index, where)
    if spec.formatting == "text":
        conv = Conversation(text=_text(row.get(spec.columns["prompt"]), ctx, spec.columns["prompt"]))
    else:
        conv = alpaca_to_conversation(row, ctx) if spec.formatting == "alpaca" else sharegpt_to_conversation(row, ctx)
        if isinstance(conv, str):
            return conv
        _extras(conv, row, ctx)
    conv.source = f"{spec.name}:{index}"
    shape = row_shape(stage).name
    if shape == "prompt":
        conv.extra = _other_columns(row, conv)
    if shape == "document":  # a document: the text column, or an instruction/chat row's turns joined
        text = conv.text if conv.text is not None else "\n".join(m.content for m in conv.messages if m.content)
        return Conversation(text=text, source=conv.source) if text.strip() else "empty text"
    return _shape_for_stage(conv, shape)
