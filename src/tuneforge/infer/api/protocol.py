"""OpenAI request bodies to what the engine needs, refusing every field that cannot be honoured.

A field the server would otherwise silently ignore (logit_bias, logprobs, a JSON response_format, forced
tool_choice, non-text content) is refused with a 400 naming it; fields that change nothing about the answer
(user, metadata, store, service_tier) are accepted as OpenAI itself treats them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...data.conversation import ASSISTANT, FUNCTION, OBSERVATION, USER, Message
from ..sampling import SamplingParams
from .errors import APIError, bad

# Fields a request may carry: those honoured, and those that change nothing about an answer.
SAMPLING_FIELDS = {"model", "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens", "n",
                   "seed", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "stream",
                   "stream_options", "logprobs", "top_logprobs", "logit_bias", "best_of", "user", "metadata",
                   "store", "service_tier", "safety_identifier", "prompt_cache_key"}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "tools", "tool_choice", "parallel_tool_calls", "response_format",
                                 "modalities", "functions", "function_call", "audio", "prediction"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt", "echo", "suffix"}

UNSUPPORTED = {
    "logit_bias": "logit_bias is not supported",
    "functions": "the legacy `functions` field is not supported; send `tools`",
    "function_call": "the legacy `function_call` field is not supported; send `tool_choice`",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "suffix": "suffix (insertion) is not supported",
    "best_of": "best_of is not supported; use n",
}


@dataclass
class ChatRequest:
    messages: list[Message]
    system: str | None
    tools: str | None  # JSON text of the function schemas, as the templates take them
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    max_tokens_given: bool


@dataclass
class CompletionRequest:
    prompt: str
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    max_tokens_given: bool


def read_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body


def check_model(body: dict, served: str) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must provide a model parameter", "model")
    if model != served:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {served!r}", "model",
                       "model_not_found")


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False, default=None):
    value = body.get(key)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise bad(f"{key} must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}", key)
    if not lo <= value <= hi:
        raise bad(f"{key}={value} is out of range; it must be between {lo} and {hi}", key)
    return value


def _flag(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"{key} must be true or false", key)
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise bad("stop must be a string or a list of at most 4 strings", "stop")
    return [s for s in stops if s]


def _refuse_unknown(body: dict, known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise bad(f"unknown or unsupported field {key!r}; this server cannot honour it", key,
                      "unsupported_parameter")


def _refuse_unsupported(body: dict) -> None:
    if body.get("store"):
        raise bad("store is not supported: nothing is kept after the answer", "store", "unsupported_parameter")
    if body.get("parallel_tool_calls") is False:
        raise bad("parallel_tool_calls: false is not supported; the model may call several tools in one turn",
                  "parallel_tool_calls", "unsupported_parameter")
    if body.get("modalities") not in (None, ["text"]):
        raise bad("only text output is supported (modalities: [\"text\"])", "modalities", "unsupported_parameter")
    for key, why in UNSUPPORTED.items():
        value = body.get(key)
        if value not in (None, {}, []) and not (key == "best_of" and value == 1):
            raise bad(why, key, "unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise bad("logprobs are not supported", "logprobs", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad("response_format is not supported (only {\"type\": \"text\"}); ask for JSON in the prompt instead",
                  "response_format", "unsupported_parameter")
    if body.get("echo"):
        raise bad("echo is not supported", "echo", "unsupported_parameter")


def _sampling(body: dict, defaults: SamplingParams, max_n: int, default_max_tokens: int):
    _refuse_unsupported(body)
    max_tokens = _number(body, "max_completion_tokens", 1, 1 << 20, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, 1 << 20, integer=True)
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    if top_p is not None and top_p <= 0:
        raise bad("top_p must be above 0", "top_p")
    if temperature is None:  # the config's setting: greedy unless do_sample
        temperature, default_top_p = defaults.temperature, defaults.top_p
    else:
        default_top_p = 1.0
    params = SamplingParams(
        max_new_tokens=max_tokens or default_max_tokens,
        temperature=temperature,
        top_p=top_p if top_p is not None else default_top_p,
        top_k=_number(body, "top_k", -1, 1 << 20, integer=True, default=defaults.top_k if temperature else 0),
        min_p=_number(body, "min_p", 0, 1, default=0.0),
        repetition_penalty=_number(body, "repetition_penalty", 0.01, 10, default=defaults.repetition_penalty),
        presence_penalty=_number(body, "presence_penalty", -2, 2, default=0.0),
        frequency_penalty=_number(body, "frequency_penalty", -2, 2, default=0.0),
        seed=_number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True),
        stop=_stop(body),
    )
    params.top_k = max(params.top_k, 0)
    n = _number(body, "n", 1, max_n, integer=True, default=1)
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    return params, n, stream, bool(options.get("include_usage")), max_tokens is not None


def _text(content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(f"{where}: only text content is supported, got a {kind!r} part", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where}: content must be a string or a list of text parts", "messages")


def _calls_json(calls, where: str) -> str:
    if not isinstance(calls, list) or not calls:
        raise bad(f"{where}: tool_calls must be a non-empty list", "messages")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}: each tool call needs function.name and function.arguments", "messages")
        arguments = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise bad(f"{where}: function.arguments is not JSON: {arguments[:60]!r}", "messages") from None
        out.append({"name": function["name"], "arguments": arguments})
    return json.dumps(out, ensure_ascii=False)


def to_messages(raw) -> tuple[list[Message], str | None]:
    """OpenAI messages to (our messages, system prompt); checks that turns alternate and end with a prompt."""
    if not isinstance(raw, list) or not raw:
        raise bad("messages must be a non-empty list", "messages")
    system, out = [], []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", "messages")
        extra = set(m) - {"role", "content", "tool_calls", "tool_call_id", "refusal"}
        if extra:
            raise bad(f"{where}: the field {sorted(extra)[0]!r} has no place in the chat template; remove it",
                      "messages")
        role = m.get("role")
        if role in ("system", "developer"):
            if out:
                raise bad(f"{where}: a system message may only come before the conversation", "messages")
            system.append(_text(m.get("content"), where))
        elif role == "user":
            out.append(Message(USER, _text(m.get("content"), where)))
        elif role == "assistant":
            if m.get("tool_calls"):
                if _text(m.get("content"), where).strip():
                    raise bad(f"{where}: an assistant message with both content and tool_calls cannot be rendered "
                              "by the template (a tool-calling turn holds only its calls); send content: null",
                              "messages")
                out.append(Message(FUNCTION, _calls_json(m["tool_calls"], where)))
            else:
                out.append(Message(ASSISTANT, _text(m.get("content"), where)))
        elif role == "tool":
            content = _text(m.get("content"), where)
            if out and out[-1].role == OBSERVATION:  # several results of one turn's calls: one tool turn
                out[-1] = Message(OBSERVATION, out[-1].content + "\n" + content)
            else:
                out.append(Message(OBSERVATION, content))
        else:
            raise bad(f"{where}: unknown role {role!r}; use system, user, assistant or tool", "messages")
    if not out:
        raise bad("messages hold only a system message; add a user message", "messages")
    for i, m in enumerate(out):
        prompt_side = m.role in (USER, OBSERVATION)
        if prompt_side != (i % 2 == 0):
            raise bad("messages must alternate user (or tool) and assistant turns, starting with a user message; "
                      f"turn {i + 1} is {m.role!r}", "messages")
    if out[-1].role not in (USER, OBSERVATION):
        raise bad("the last message must be a user (or tool) message for the assistant to answer", "messages")
    return out, "\n".join(system) if system else None


def _tools(body: dict) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise bad("tool_choice can be 'auto' or 'none'; forcing a tool is not supported", "tool_choice",
                  "unsupported_parameter")
    if not tools or choice == "none":
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" and
                                              isinstance((t.get("function") or {}).get("name"), str) for t in tools):
        raise bad('tools must be a list of {"type": "function", "function": {"name": ..., "parameters": ...}}',
                  "tools")
    return json.dumps([t["function"] for t in tools], ensure_ascii=False)


def parse_chat(body: dict, defaults: SamplingParams, max_n: int) -> ChatRequest:
    _refuse_unknown(body, CHAT_FIELDS)
    messages, system = to_messages(body.get("messages"))
    params, n, stream, usage, given = _sampling(body, defaults, max_n, defaults.max_new_tokens)
    return ChatRequest(messages, system, _tools(body), params, n, stream, usage, given)


def parse_completion(body: dict, defaults: SamplingParams, max_n: int) -> CompletionRequest:
    _refuse_unknown(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt must be a non-empty string (token-id prompts and batches of prompts are not supported)",
                  "prompt")
    params, n, stream, usage, given = _sampling(body, defaults, max_n, 16)  # OpenAI's default for completions
    return CompletionRequest(prompt, params, n, stream, usage, given)
