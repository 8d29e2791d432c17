"""Reading the tool calls out of a generated answer, in the formats the templates teach.

The calls a model was trained to write (data/templates/named_tools.py) are: Hermes/Qwen's
`<tool_call>{"name", "arguments"}</tool_call>` blocks, Llama 3.1's bare `{"name", "parameters"}` object,
GLM-4's `name\\n{arguments}`, and Mistral's `[TOOL_CALLS][...]` list. An answer counts as a call only when
it names one of the tools offered in the request; anything else is an ordinary answer.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_openai(self, index: int | None = None) -> dict:
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            call["index"] = index
        return call


def _call(value, names: set[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(value["name"], arguments)


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_tool_calls(text: str, tool_names) -> tuple[str, list[ToolCall]]:
    """(content left over, calls); no calls when the answer does not call an offered tool."""
    names = set(tool_names)
    blocks = HERMES.findall(text)
    if blocks:
        calls = [_call(_json(b), names) for b in blocks]
        if all(calls):
            return text[: text.find("<tool_call>")].strip(), calls
        return text, []
    stripped = text.strip()
    if stripped.startswith("[TOOL_CALLS]"):
        stripped = stripped[len("[TOOL_CALLS]"):].strip()
    value = _json(stripped)
    items = value if isinstance(value, list) else [value]
    if value is not None and items:
        calls = [_call(v, names) for v in items]
        if all(calls):
            return "", calls
    name, _, rest = stripped.partition("\n")  # GLM-4
    if name.strip() in names and isinstance(_json(rest), dict):
        return "", [ToolCall(name.strip(), json.dumps(_json(rest), ensure_ascii=False))]
    return text, []
