"""Tool lists and function calls, written the way each model family was trained to read them.

A Conversation carries its tools as JSON text (a list of function schemas, bare or wrapped the OpenAI way
as {"type": "function", "function": {...}}) and a function_call turn as JSON text {"name", "arguments"}
(or a list of such calls). The helpers here parse both once; the formats render them exactly as the
family's official chat template does, so a named template and that Jinja template give the same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...errors import TemplateError


def to_json(value, indent: int | None = None) -> str:
    # Same settings as the `tojson` filter of transformers' chat templates (non-ASCII kept as is).
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _load(text: str, what: str, expected: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise TemplateError(f"{what} is not valid JSON ({e}); expected {expected}") from None


def parse_tools(text: str) -> list[dict]:
    """The function schemas in a row's `tools` JSON, unwrapped from {"type": "function", ...} if needed."""
    value = _load(text, "tools", 'a JSON list of function schemas like [{"name": ..., "parameters": {...}}]')
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise TemplateError(f"tools must be a JSON list of function schemas, got {type(value).__name__}")
    schemas = []
    for item in value:
        if isinstance(item, dict) and item.get("type") == "function" and isinstance(item.get("function"), dict):
            item = item["function"]
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise TemplateError(
                f"tool {to_json(item)[:80]} has no 'name'; each tool must be a function schema "
                '{"name": ..., "description": ..., "parameters": {...}}'
            )
        schemas.append(item)
    return schemas


def parse_calls(text: str) -> list[tuple[str, object]]:
    """(name, arguments) pairs of a function_call turn; arguments given as JSON text are decoded."""
    value = _load(text, "function_call content", '{"name": ..., "arguments": {...}} or a list of those')
    calls = value if isinstance(value, list) else [value]
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise TemplateError(
                f"function call {to_json(call)[:80]} has no 'name'; write it as "
                '{"name": "tool_name", "arguments": {...}}'
            )
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # not JSON: rendered verbatim, as the official templates do with string arguments
        parsed.append((call["name"], arguments))
    if not parsed:
        raise TemplateError("function_call content is an empty list; it needs at least one call")
    return parsed


def _arguments(arguments) -> str:
    return arguments if isinstance(arguments, str) else to_json(arguments)


def _wrapped(schema: dict) -> dict:
    # Families trained on OpenAI-style tool lists see each schema inside {"type": "function", ...}.
    return {"type": "function", "function": schema}


@dataclass(frozen=True)
class ToolFormat:
    """How one family shows the tool list, a function call and a tool's result.

    observation: format of a tool-result turn ("{content}" placeholder), on the prompt side.
    call_format: format of a function_call response; None means the template's assistant format.
    max_calls: how many calls one assistant turn may hold in this format (None: any number).
    """

    observation: str
    call_format: str | None = None
    max_calls: int | None = None

    def system_block(self, system: str, tools: list[dict], plain_system_block: str) -> str:
        """The text that replaces the plain system block when a tool list is present."""
        raise NotImplementedError

    def first_user(self, content: str, tools: list[dict]) -> str:
        """The first user message's content; some families put the tool list there."""
        return content

    def calls(self, calls: list[tuple[str, object]]) -> str:
        raise NotImplementedError


HERMES_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)


@dataclass(frozen=True)
class HermesTools(ToolFormat):
    """Qwen2.5 / Qwen3 (and ChatML fine-tunes): tools in the system turn, calls in <tool_call> tags."""

    observation: str = "<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"

    def system_block(self, system, tools, plain_system_block):
        listed = "".join("\n" + to_json(_wrapped(t)) for t in tools)
        head = system + "\n\n" if system else ""
        return "<|im_start|>system\n" + head + HERMES_INTRO + listed + HERMES_OUTRO + "<|im_end|>\n"

    def calls(self, calls):
        return "\n".join(
            '<tool_call>\n{"name": "' + name + '", "arguments": ' + _arguments(args) + "}\n</tool_call>"
            for name, args in calls
        )


LLAMA3_TOOL_PROMPT = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)


@dataclass(frozen=True)
class Llama3Tools(ToolFormat):
    """Llama 3.1's JSON tool calling (its template's defaults: tools in the first user message, the
    fixed 'Today Date: 26 Jul 2024' system header, one call per turn, results under the ipython role)."""

    observation: str = "<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>"
    max_calls: int | None = 1

    def system_block(self, system, tools, plain_system_block):
        return (
            "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            + system.strip()
            + "<|eot_id|>"
        )

    def first_user(self, content, tools):
        listed = "".join(to_json(_wrapped(t), indent=4) + "\n\n" for t in tools)
        return LLAMA3_TOOL_PROMPT + listed + content

    def calls(self, calls):
        [(name, args)] = calls
        return '{"name": "' + name + '", "parameters": ' + _arguments(args) + "}"


GLM4_TOOL_HEADER = (
    "<|system|>\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
)
GLM4_TOOL_FOOTER = "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"


@dataclass(frozen=True)
class Glm4Tools(ToolFormat):
    """GLM-4-9B-Chat: a tool system turn before the plain one; a call is "name\\n{arguments}"."""

    observation: str = "<|observation|>\n{content}"
    call_format: str | None = "{content}"
    max_calls: int | None = 1

    def system_block(self, system, tools, plain_system_block):
        listed = "".join(
            "\n\n## " + t["name"] + "\n\n" + to_json(t, indent=4) + GLM4_TOOL_FOOTER for t in tools
        )
        return GLM4_TOOL_HEADER + listed + plain_system_block

    def calls(self, calls):
        [(name, args)] = calls
        return name + "\n" + _arguments(args)
