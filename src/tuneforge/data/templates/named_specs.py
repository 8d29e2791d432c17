"""The built-in chat formats. Each spec states the family's text format and where it comes from.

Families that publish a Jinja chat template are rendered character for character as that template renders
them (tests/data/test_templates_named.py checks it token for token); the docs say where training
deliberately differs. `default`, `alpaca` and `empty` are plain formats for base models.
"""

from __future__ import annotations

from dataclasses import replace

from .named import TemplateSpec
from .named_tools import Glm4Tools, HermesTools, Llama3Tools

ALL = frozenset({"system", "user", "assistant"})
CHATML_SYSTEM = "<|im_start|>system\n{content}<|im_end|>\n"
CHATML_USER = "<|im_start|>user\n{content}<|im_end|>\n"
CHATML_HEADER = "<|im_start|>assistant\n"
CHATML_ASSISTANT = "{content}<|im_end|>\n"
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

CHATML = TemplateSpec(
    name="chatml",
    doc="ChatML (<|im_start|>role ... <|im_end|>); tools in the Hermes/Qwen format.",
    system=CHATML_SYSTEM,
    user=CHATML_USER,
    header=CHATML_HEADER,
    assistant=CHATML_ASSISTANT,
    stop_words=("<|im_end|>",),
    tools=HermesTools(),
)

_SPECS = [
    TemplateSpec(
        name="default",
        doc="Plain dialogue for base models: 'Human: ...\\nAssistant: ...' turns, EOS ends each answer.",
        system="{content}\n\n",
        user="Human: {content}\n",
        header="Assistant:",
        assistant=" {content}",
        separator="\n",
        efficient_eos=True,
    ),
    TemplateSpec(
        name="alpaca",
        doc="The Stanford Alpaca prompt ('### Instruction:' / '### Response:'), EOS ends each answer.",
        system="{content}\n\n",
        default_system=ALPACA_SYSTEM,
        user="### Instruction:\n{content}\n\n",
        header="### Response:\n",
        separator="\n\n",
        efficient_eos=True,
    ),
    TemplateSpec(
        name="empty",
        doc="No formatting at all (pre-training, raw completion): prompt and response are the raw texts.",
        system="{content}",
        user="{content}",
        header="",
    ),
    CHATML,
    # The Qwen family is ChatML with Qwen's defaults; only what differs is spelled out.
    replace(CHATML, name="qwen", default_system=QWEN_SYSTEM,
            doc="Qwen2 / Qwen2.5 Instruct: ChatML with Qwen's default system prompt and <tool_call> tools."),
    replace(CHATML, name="qwen3", thinking=True,
            doc="Qwen3 hybrid-thinking models: ChatML with <think> reasoning blocks (enable_thinking switches)."),
    replace(CHATML, name="qwen3_nothink",
            doc="Qwen3 Instruct-2507 (non-thinking only): ChatML, no <think> blocks at all, Qwen3 tool format."),
    TemplateSpec(
        name="llama2",
        doc="Llama-2-chat: <s>[INST] <<SYS>>...<</SYS>> user [/INST] answer </s>, BOS before every turn.",
        system_in_user="<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
        user="{bos}[INST] {content}",
        header=" [/INST]",
        assistant=" {content} {eos}",
        stop_words=("{eos}",),
        trim=frozenset({"user", "assistant"}),
    ),
    TemplateSpec(
        name="llama3",
        doc="Llama 3 / 3.x Instruct headers and <|eot_id|>; with tools, Llama 3.1's JSON tool calling.",
        prefix="{bos}",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{content}<|eot_id|>",
        stop_words=("<|eot_id|>",),
        trim=ALL,
        tools=Llama3Tools(),
    ),
    TemplateSpec(
        name="mistral",
        doc="Mistral Instruct v0.3 ([INST] user[/INST] answer</s>); the system prompt goes before the last "
        "user message, as in Mistral's own template.",
        prefix="{bos}",
        system_in_last_user=True,
        user="[INST] {content}",
        header="[/INST]",
        assistant=" {content}{eos}",
        stop_words=("{eos}",),
        trim=frozenset({"assistant"}),
    ),
    TemplateSpec(
        name="gemma",
        doc="Gemma 3 (<start_of_turn>user / model); the system prompt opens the first user turn.",
        prefix="{bos}",
        user="<start_of_turn>user\n{content}<end_of_turn>\n",
        header="<start_of_turn>model\n",
        assistant="{content}<end_of_turn>\n",
        stop_words=("<end_of_turn>",),
        trim=frozenset({"user", "assistant"}),
    ),
    TemplateSpec(
        name="baichuan2",
        doc="Baichuan2-Chat: <reserved_106> user, <reserved_107> assistant (no Jinja template upstream); "
        "EOS ends each answer.",
        system="{content}",
        user="<reserved_106>{content}",
        header="<reserved_107>",
        efficient_eos=True,
    ),
    TemplateSpec(
        name="chatglm3",
        doc="ChatGLM3-6B: [gMASK]sop <|role|>\\n content; EOS ends each answer.",
        prefix="[gMASK]sop",
        system="<|system|>\n {content}",
        user="<|user|>\n {content}",
        header="<|assistant|>",
        assistant="\n {content}",
        efficient_eos=True,
        stop_words=("<|user|>", "<|observation|>"),
    ),
    TemplateSpec(
        name="glm4",
        doc="GLM-4-9B-Chat: [gMASK]<sop> <|role|>\\ncontent, GLM-4 tools; EOS ends each answer.",
        prefix="[gMASK]<sop>",
        system="<|system|>\n{content}",
        user="<|user|>\n{content}",
        header="<|assistant|>",
        assistant="\n{content}",
        efficient_eos=True,
        stop_words=("<|user|>", "<|observation|>"),
        tools=Glm4Tools(),
    ),
    TemplateSpec(
        name="deepseek",
        doc="DeepSeek LLM / V2 Chat: 'User: ...\\n\\nAssistant: ...<｜end▁of▁sentence｜>'.",
        prefix="{bos}",
        system="{content}\n\n",
        user="User: {content}\n\n",
        header="Assistant:",
        assistant=" {content}{eos}",
        stop_words=("{eos}",),
    ),
    TemplateSpec(
        name="phi",
        doc="Phi-3 / Phi-3.5 Instruct (<|user|>\\n ... <|end|>); a whole conversation ends with EOS.",
        system="<|system|>\n{content}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n",
        header="<|assistant|>\n",
        assistant="{content}<|end|>\n",
        suffix="{eos}",
        stop_words=("<|end|>",),
    ),
]

SPECS: dict[str, TemplateSpec] = {spec.name: spec for spec in _SPECS}
