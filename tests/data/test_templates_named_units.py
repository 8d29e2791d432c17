"""Named templates: the registry, the plain formats, EOS and stop words, system prompts and user errors."""

from __future__ import annotations

import json

import pytest

from tests.data.named_template_cases import FAMILIES, TOOLS, family_tokenizer, plain_tokenizer, wrapped
from tests.tiny import build_tokenizer
from tuneforge.data.conversation import ASSISTANT, FUNCTION, OBSERVATION, USER, Message
from tuneforge.data.templates import TEMPLATE_NAMES, get_template
from tuneforge.errors import TemplateError

TWO_TURNS = [Message(USER, "hello"), Message(ASSISTANT, "world"), Message(USER, "ok"), Message(ASSISTANT, "fox")]


def whole(name: str, tokenizer, system=None, messages=TWO_TURNS, **kwargs) -> str:
    rendered = get_template(name, tokenizer, **kwargs).render(messages, system, None, tokenizer)
    return "".join(t.prompt + t.response for t in rendered.turns) + rendered.suffix


def test_unknown_name_lists_the_templates_and_a_close_match():
    with pytest.raises(TemplateError) as error:
        get_template("lama3", plain_tokenizer())
    message = str(error.value)
    assert "'lama3'" in message and "Did you mean 'llama3'?" in message
    assert all(name in message for name in TEMPLATE_NAMES)


def test_auto_is_the_tokenizers_own_template():
    template = get_template("auto", plain_tokenizer(), default_system="Be brief.", enable_thinking=False)
    assert type(template).__name__ == "AutoTemplate"


def test_plain_formats_for_base_models():
    tokenizer = plain_tokenizer()
    assert whole("default", tokenizer, "Be brief.") == (
        "Be brief.\n\nHuman: hello\nAssistant: world</s>\nHuman: ok\nAssistant: fox</s>"
    )
    assert whole("alpaca", tokenizer) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nhello\n\n### Response:\nworld</s>\n\n### Instruction:\nok\n\n"
        "### Response:\nfox</s>"
    )
    assert whole("baichuan2", tokenizer, "Be brief.") == (
        "Be brief.<reserved_106>hello<reserved_107>world</s><reserved_106>ok<reserved_107>fox</s>"
    )


def test_empty_template_is_the_raw_text():
    tokenizer = plain_tokenizer()
    rendered = get_template("empty", tokenizer).render(TWO_TURNS[:2], None, None, tokenizer)
    assert [(t.prompt, t.response, t.prompt_tail, t.response_tail) for t in rendered.turns] == [
        ("hello", "world", 0, 0)
    ]


@pytest.mark.parametrize("name", ["default", "alpaca", "baichuan2", "chatglm3", "glm4"])
def test_efficient_eos_ends_each_trained_response_with_eos(name):
    tokenizer = plain_tokenizer()
    template = get_template(name, tokenizer)
    for turn in template.render(TWO_TURNS, "Be brief.", None, tokenizer).turns:
        assert turn.response.endswith("</s>") and turn.response_tail >= len("</s>")
        assert "</s>" not in turn.prompt
    assert "</s>" in template.stop_words(tokenizer)


def test_end_of_turn_format_tokens_are_trained_and_kept_when_cutting():
    tokenizer = plain_tokenizer()
    expected = {
        "chatml": ("<|im_start|>assistant\n", "<|im_end|>\n"),
        "llama2": (" [/INST]", " </s>"),
        "llama3": ("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        "mistral": ("[/INST]", "</s>"),
        "gemma": ("<start_of_turn>model\n", "<end_of_turn>\n"),
        "glm4": ("<|assistant|>", "</s>"),
        "deepseek": ("Assistant:", "</s>"),
        "phi": ("<|assistant|>\n", "<|end|>\n"),
    }
    for name, (header, end) in expected.items():
        template = get_template(name, tokenizer)
        for turn in template.render(TWO_TURNS, None, None, tokenizer).turns:
            assert turn.prompt[-turn.prompt_tail :] == header, name
            assert turn.response[-turn.response_tail :] == end, name


def test_stop_words():
    tokenizer = plain_tokenizer()
    expected = {
        "chatml": ["<|im_end|>"],
        "qwen": ["<|im_end|>"],
        "qwen3": ["<|im_end|>"],
        "qwen3_nothink": ["<|im_end|>"],
        "llama2": ["</s>"],
        "llama3": ["<|eot_id|>"],
        "mistral": ["</s>"],
        "gemma": ["<end_of_turn>"],
        "phi": ["<|end|>"],
        "deepseek": ["</s>"],
        "glm4": ["<|user|>", "<|observation|>", "</s>"],
        "chatglm3": ["<|user|>", "<|observation|>", "</s>"],
        "default": ["</s>"],
        "alpaca": ["</s>"],
        "empty": ["</s>"],
        "baichuan2": ["</s>"],
    }
    assert set(expected) == set(TEMPLATE_NAMES) - {"auto"}
    for name, words in expected.items():
        assert get_template(name, tokenizer).stop_words(tokenizer) == words, name


def test_bos_only_when_the_tokenizer_has_one():
    with_bos = family_tokenizer("llama3")
    assert whole("llama3", with_bos).startswith("<|begin_of_text|><|start_header_id|>user")
    without_bos = build_tokenizer(list(FAMILIES["llama3"].special_tokens), eos_token="<|eot_id|>")
    assert whole("llama3", without_bos).startswith("<|start_header_id|>user")


def test_system_prompt_row_then_default_then_override():
    tokenizer = family_tokenizer("qwen")
    default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    assert whole("qwen", tokenizer).startswith(default)
    assert whole("qwen", tokenizer, "Row system.").startswith("<|im_start|>system\nRow system.<|im_end|>\n")
    assert whole("qwen", tokenizer, default_system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert whole("qwen", tokenizer, default_system="").startswith("<|im_start|>user\nhello")
    assert whole("alpaca", tokenizer, default_system="").startswith("### Instruction:\nhello")


def test_tools_may_be_bare_or_wrapped_schemas():
    tokenizer = family_tokenizer("qwen", True)
    template = get_template("qwen", tokenizer)
    bare = template.render(TWO_TURNS, None, json.dumps(TOOLS), tokenizer)
    openai_style = template.render(TWO_TURNS, None, json.dumps(wrapped(TOOLS)), tokenizer)
    assert bare == openai_style


def test_templates_without_a_tool_format_refuse_tools():
    tokenizer = plain_tokenizer()
    template = get_template("gemma", tokenizer)
    with pytest.raises(TemplateError, match="template 'gemma' has no tool format"):
        template.render(TWO_TURNS, None, json.dumps(TOOLS), tokenizer)
    call = Message(FUNCTION, json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}}))
    with pytest.raises(TemplateError, match="has no tool format"):
        template.render([TWO_TURNS[0], call, Message(OBSERVATION, "3"), TWO_TURNS[1]], None, None, tokenizer)


def test_user_errors_say_what_is_wrong():
    tokenizer = plain_tokenizer()
    qwen, llama3 = get_template("qwen", tokenizer), get_template("llama3", tokenizer)
    with pytest.raises(TemplateError, match="tools is not valid JSON"):
        qwen.render(TWO_TURNS, None, "[{name: add}]", tokenizer)
    with pytest.raises(TemplateError, match="has no 'name'"):
        qwen.render(TWO_TURNS, None, json.dumps([{"description": "x"}]), tokenizer)
    two_calls = Message(FUNCTION, json.dumps([{"name": "add", "arguments": {}}] * 2))
    with pytest.raises(TemplateError, match="allows 1 function call per assistant turn"):
        llama3.render([TWO_TURNS[0], two_calls], None, json.dumps(TOOLS), tokenizer)
    with pytest.raises(TemplateError, match="must be one of"):
        qwen.render([TWO_TURNS[0], TWO_TURNS[0]], None, None, tokenizer)
    with pytest.raises(TemplateError, match="end with a response"):
        qwen.render(TWO_TURNS[:3], None, None, tokenizer)
    with pytest.raises(TemplateError, match="generation prompt"):
        qwen.render_prompt(TWO_TURNS, None, None, tokenizer)
