"""Shared cases for the named-template tests: families with their official templates and tiny tokenizers,
seeded random conversations, and their translation to the message shape each official template reads."""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass

import jinja2

from tests.data import official_templates as official
from tests.tiny import build_tokenizer
from tuneforge.data.conversation import ASSISTANT, FUNCTION, OBSERVATION, USER, Message

WORDS = ["hello", "world", "quick", "brown", "fox", "lazy", "dog", "Paris", "42", "你好", "天气", "add", "ok"]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    {
        "name": "add",
        "description": "Adds two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
    },
]
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
GLM_TOKENS = ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


@dataclass(frozen=True)
class Family:
    jinja: str
    special_tokens: tuple[str, ...]
    eos: str
    bos: str | None = None
    tools_jinja: str | None = None  # official template used for conversations with tools
    max_calls: int = 1


FAMILIES = {
    "chatml": Family(official.CHATML, tuple(CHATML_TOKENS), "<|im_end|>"),
    "qwen": Family(official.QWEN25, tuple(CHATML_TOKENS), "<|im_end|>", tools_jinja=official.QWEN25, max_calls=2),
    "qwen3": Family(official.QWEN3, tuple(CHATML_TOKENS), "<|im_end|>", tools_jinja=official.QWEN3, max_calls=2),
    "qwen3_nothink": Family(
        official.QWEN3_INSTRUCT_2507, tuple(CHATML_TOKENS), "<|im_end|>", tools_jinja=official.QWEN3_INSTRUCT_2507
    ),
    "llama2": Family(official.LLAMA2, (), "</s>", bos="<s>"),
    "llama3": Family(
        official.LLAMA3,
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|eot_id|>",
        bos="<|begin_of_text|>",
        tools_jinja=official.LLAMA31,
    ),
    "mistral": Family(official.MISTRAL_V03, ("[INST]", "[/INST]"), "</s>", bos="<s>"),
    "gemma": Family(official.GEMMA3, ("<start_of_turn>", "<end_of_turn>"), "<eos>", bos="<bos>"),
    "deepseek": Family(official.DEEPSEEK_V2, (), "<｜end▁of▁sentence｜>", bos="<｜begin▁of▁sentence｜>"),
    "phi": Family(official.PHI35, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|endoftext|>"),
    "glm4": Family(official.GLM4, tuple(GLM_TOKENS), "<|endoftext|>", tools_jinja=official.GLM4),
    "chatglm3": Family(
        official.CHATGLM3, ("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"), "</s>"
    ),
}


@functools.lru_cache(maxsize=None)
def family_tokenizer(name: str, with_tools: bool = False):
    family = FAMILIES[name]
    jinja = family.tools_jinja if with_tools else family.jinja
    return build_tokenizer(list(family.special_tokens), jinja, bos_token=family.bos, eos_token=family.eos)


# ----- random conversations


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))


def conversation(rng: random.Random, tools: bool, max_calls: int = 1, reasoning: bool = False) -> list[Message]:
    def answer():
        text = sentence(rng)
        return f"<think>\n{sentence(rng)}\n</think>\n\n{text}" if reasoning and rng.random() < 0.5 else text

    messages = []
    for turn in range(rng.randint(1, 3)):
        messages.append(Message(USER, f"{sentence(rng)} {turn}"))  # unique: Mistral compares messages by value
        for _ in range(rng.randint(0, 2) if tools else 0):
            calls = [
                {"name": "get_weather", "arguments": {"city": rng.choice(WORDS)}}
                if rng.random() < 0.5
                else {"name": "add", "arguments": {"a": rng.randint(0, 9), "b": rng.randint(0, 9)}}
                for _ in range(rng.randint(1, max_calls))
            ]
            messages.append(Message(FUNCTION, json.dumps(calls if len(calls) > 1 else calls[0])))
            messages.append(Message(OBSERVATION, json.dumps({"result": sentence(rng)}, ensure_ascii=False)))
        messages.append(Message(ASSISTANT, answer()))
    return messages


def hf_messages(name: str, messages: list[Message], system: str | None, tools: list | None) -> list[dict]:
    """Our conversation in the message shape each official template reads."""
    out = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == FUNCTION:
            calls = json.loads(m.content)
            calls = calls if isinstance(calls, list) else [calls]
            if name == "glm4":
                (call,) = calls
                arguments = json.dumps(call["arguments"], ensure_ascii=False)
                out.append({"role": "assistant", "metadata": call["name"], "content": arguments})
            else:
                tool_calls = [{"type": "function", "function": c} for c in calls]
                out.append({"role": "assistant", "content": "", "tool_calls": tool_calls})
        elif m.role == OBSERVATION:
            # Llama 3.1 applies tojson to string results, so it is given the decoded JSON (same text back).
            content = json.loads(m.content) if name == "llama3" else m.content
            out.append({"role": "observation" if name == "glm4" else "tool", "content": content})
        else:
            out.append({"role": m.role, "content": m.content})
    if name == "glm4" and tools:  # GLM-4 reads the tool list from a message's "tools" key
        if not system:
            out.insert(0, {"role": "system", "content": ""})
        out[0]["tools"] = wrapped(tools)
    return out


def wrapped(tools):
    return [{"type": "function", "function": t} for t in tools] if tools else None


def official_text(name, tokenizer, hf, tools, generation=False, **kwargs) -> str:
    if name == "glm4" and tools:
        # transformers renders with trim_blocks=True, which eats the first "\n" after GLM-4's
        # `{% if tool['type'] == 'function' %}`; the template text (and GLM-4's own code) has "\n\n## name".
        env = jinja2.Environment()
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        return env.from_string(official.GLM4).render(messages=hf, add_generation_prompt=generation)
    return tokenizer.apply_chat_template(
        hf, tools=wrapped(tools), tokenize=False, add_generation_prompt=generation, **kwargs
    )


def without_eos(text: str, template, tokenizer) -> str:
    # efficient_eos templates add EOS to each trained response; the official formats have none.
    return text.replace(tokenizer.eos_token, "") if template.spec.efficient_eos else text


def plain_tokenizer():
    specials = sorted({t for f in FAMILIES.values() for t in f.special_tokens} - {"sop"})
    return build_tokenizer(specials, bos_token="<s>", eos_token="</s>")


def edge_whitespace(rng: random.Random, text: str) -> str:
    return rng.choice(["", " ", "\n"]) + text + rng.choice(["", " ", "\n "])
