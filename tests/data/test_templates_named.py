"""Named chat templates against the official Jinja templates of their families, token for token.

For each family with a published template, a tiny tokenizer gets that template and the family's special
tokens; seeded random conversations (with and without system prompt, with tool turns where the family has
a tool format) must tokenize to the ids of `tokenizer.apply_chat_template`, and every generation prompt must
be the official one. Where training deliberately differs (EOS after responses for efficient_eos templates,
Qwen3 keeping the reasoning of earlier turns), the tests pin the chosen behaviour instead.
"""

from __future__ import annotations

import json
import random

import pytest

from tests.data.named_template_cases import (
    FAMILIES,
    TOOLS,
    conversation,
    edge_whitespace,
    family_tokenizer,
    hf_messages,
    official_text,
    plain_tokenizer,
    sentence,
    without_eos,
    wrapped,
)
from tuneforge.data.conversation import ASSISTANT, USER, Message
from tuneforge.data.templates import TEMPLATE_NAMES, get_template


def cases(with_tools: bool):
    for name, family in FAMILIES.items():
        if with_tools and family.tools_jinja is None:
            continue
        for seed in range(6):
            yield pytest.param(name, seed, id=f"{name}-{seed}")


# ----- parity with the official templates


def check_parity(name: str, seed: int, with_tools: bool):
    rng = random.Random(f"{name}-{seed}-{with_tools}")
    family, tokenizer = FAMILIES[name], family_tokenizer(name, with_tools)
    template = get_template(name, tokenizer)
    system = sentence(rng) if seed % 2 else None
    tools = rng.sample(TOOLS, rng.randint(1, 2)) if with_tools else None
    tools_json = json.dumps(tools) if tools else None
    messages = conversation(rng, with_tools, family.max_calls, reasoning=name == "qwen3")
    if name == "qwen3":  # a whole conversation equals Qwen3's only for one turn; see test_qwen3_* below
        messages = messages[:2]

    rendered = template.render(messages, system, tools_json, tokenizer)
    text = "".join(without_eos(t.prompt + t.response, template, tokenizer) for t in rendered.turns)
    text += rendered.suffix
    hf = hf_messages(name, messages, system, tools)
    expected = official_text(name, tokenizer, hf, tools)
    assert text == expected
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if name == "glm4" and tools:
        assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    else:
        assert ids == tokenizer.apply_chat_template(hf, tools=wrapped(tools), tokenize=True)["input_ids"]

    for k in range(0, len(messages), 2):  # every generation prompt along the conversation
        prompt = template.render_prompt(messages[: k + 1], system, tools_json, tokenizer)
        hf_prefix = hf_messages(name, messages[: k + 1], system, tools)
        assert without_eos(prompt, template, tokenizer) == official_text(name, tokenizer, hf_prefix, tools, True)


@pytest.mark.parametrize("name,seed", cases(with_tools=False))
def test_matches_official_template(name, seed):
    check_parity(name, seed, with_tools=False)


@pytest.mark.parametrize("name,seed", cases(with_tools=True))
def test_matches_official_template_with_tools(name, seed):
    check_parity(name, seed, with_tools=True)


# ----- Qwen3: reasoning of every trained turn is kept (the official template drops it from history)


def qwen3_case(seed: int, with_tools: bool, enable_thinking: bool = True):
    rng = random.Random(f"qwen3-multi-{seed}-{with_tools}")
    tokenizer = family_tokenizer("qwen3", with_tools)
    tools = rng.sample(TOOLS, rng.randint(1, 2)) if with_tools else None
    messages = conversation(rng, with_tools, max_calls=2, reasoning=True)
    system = sentence(rng) if seed % 2 else None
    template = get_template("qwen3", tokenizer, enable_thinking=enable_thinking)
    return tokenizer, template, messages, system, tools


@pytest.mark.parametrize("with_tools", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_qwen3_trains_each_turn_as_official_renders_it_last(seed, with_tools):
    tokenizer, template, messages, system, tools = qwen3_case(seed, with_tools)
    tools_json = json.dumps(tools) if tools else None
    rendered = template.render(messages, system, tools_json, tokenizer)
    for k, turn in enumerate(rendered.turns):
        end = 2 * k + 2
        hf_prompt = hf_messages("qwen3", messages[: end - 1], system, tools)
        prompt = template.render_prompt(messages[: end - 1], system, tools_json, tokenizer)
        assert prompt == official_text("qwen3", tokenizer, hf_prompt, tools, generation=True)
        # The trained response is what Qwen3 renders when this turn is the last message.
        hf_whole = hf_messages("qwen3", messages[:end], system, tools)
        last_turn = official_text("qwen3", tokenizer, hf_whole, tools)
        assert prompt + turn.response == last_turn


def test_qwen3_keeps_reasoning_of_earlier_turns_when_training():
    tokenizer = family_tokenizer("qwen3")
    template = get_template("qwen3", tokenizer)
    messages = [
        Message(USER, "hello"),
        Message(ASSISTANT, "<think>\nfox dog\n</think>\n\nworld"),
        Message(USER, "ok"),
        Message(ASSISTANT, "Paris"),
    ]
    rendered = template.render(messages, None, None, tokenizer)
    assert [t.response for t in rendered.turns] == [
        "<think>\nfox dog\n</think>\n\nworld<|im_end|>\n",
        "<think>\n\n</think>\n\nParis<|im_end|>\n",
    ]
    # The official template drops the first turn's reasoning, which would train "answer without thinking".
    official_whole = tokenizer.apply_chat_template(hf_messages("qwen3", messages, None, None), tokenize=False)
    assert "fox dog" not in official_whole
    # Generation prompts do follow the official template (history reasoning dropped).
    prompt = template.render_prompt(messages[:3], None, None, tokenizer)
    assert "fox dog" not in prompt
    history = "<|im_start|>assistant\nworld<|im_end|>\n<|im_start|>user\nok<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.endswith(history)


def test_qwen3_without_thinking_puts_the_empty_block_in_the_prompt():
    tokenizer = family_tokenizer("qwen3")
    messages = [
        Message(USER, "hello"),
        Message(ASSISTANT, "world"),
        Message(USER, "ok"),
        Message(ASSISTANT, "<think>\nfox\n</think>\n\nParis"),
    ]
    thinking = get_template("qwen3", tokenizer).render(messages, None, None, tokenizer)
    assert thinking.turns[0].response == "<think>\n\n</think>\n\nworld<|im_end|>\n"  # learns to skip itself
    template = get_template("qwen3", tokenizer, enable_thinking=False)
    first, second = template.render(messages, None, None, tokenizer).turns
    header = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert first.prompt.endswith(header) and first.prompt_tail == len(header)
    assert first.response == "world<|im_end|>\n"
    assert second.response == "<think>\nfox\n</think>\n\nParis<|im_end|>\n"  # reasoning in the data is trained
    hf = hf_messages("qwen3", messages[:1], None, None)
    expected = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert template.render_prompt(messages[:1], None, None, tokenizer) == expected


# ----- the Jinja template saved with trained tokenizers


@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize("name", [n for n in TEMPLATE_NAMES if n != "auto"])
def test_jinja_renders_like_the_template(name, enable_thinking):
    tokenizer = plain_tokenizer()
    template = get_template(name, tokenizer, enable_thinking=enable_thinking)
    jinja = template.jinja(tokenizer)
    for seed in range(5):
        rng = random.Random(f"jinja-{name}-{seed}")
        messages = conversation(rng, tools=False, reasoning=name == "qwen3")
        messages = [Message(m.role, edge_whitespace(rng, m.content)) for m in messages]
        system = sentence(rng) if seed % 2 else None
        rendered = template.render(messages, system, None, tokenizer)
        whole = "".join(t.prompt + t.response for t in rendered.turns) + rendered.suffix
        hf = hf_messages(name, messages, system, None)
        assert tokenizer.apply_chat_template(hf, chat_template=jinja, tokenize=False) == whole
        for k in range(0, len(messages), 2):
            prompt = template.render_prompt(messages[: k + 1], system, None, tokenizer)
            hf = hf_messages(name, messages[: k + 1], system, None)
            text = tokenizer.apply_chat_template(hf, chat_template=jinja, tokenize=False, add_generation_prompt=True)
            assert text == prompt


def test_jinja_follows_enable_thinking_at_serving_time():
    tokenizer = plain_tokenizer()
    jinja = get_template("qwen3", tokenizer).jinja(tokenizer)
    hf = [{"role": "user", "content": "hello"}]
    kwargs = dict(chat_template=jinja, tokenize=False, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(hf, **kwargs).endswith("<|im_start|>assistant\n")
    off = tokenizer.apply_chat_template(hf, enable_thinking=False, **kwargs)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
