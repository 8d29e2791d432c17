"""Golden preparation results: token ids and labels of many conversations, templates and options, as
digests, so that speed work on the data path can be checked to change nothing.

`python -m tests.data.prep_golden --write` regenerates prep_golden.json from the current code; do that only
when a change of the prepared data is intended (and say so in the change), never to make a test pass.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import sys
from pathlib import Path

from tests.data import official_templates as official
from tests.data.named_template_cases import FAMILIES, TOOLS, family_tokenizer
from tests.tiny import build_tokenizer, chatml_tokenizer
from tuneforge.data import processors
from tuneforge.data.conversation import ASSISTANT, FUNCTION, OBSERVATION, USER, Conversation, Message
from tuneforge.data.processors import ProcessorOptions
from tuneforge.data.templates import get_template

GOLDEN = Path(__file__).with_name("prep_golden.json")
DEMO = Path("/work/shared/anchors/llamafactory-data")
PROJECT_DATA = Path(__file__).resolve().parents[2] / "data"
SMOLLM2 = os.path.expanduser("~/.cache/tuneforge/models/smollm2-135m-instruct-*")
WORDS = "hello world quick brown fox lazy dog Paris 42 你好 天气 add ok who are you ! ?".split()

DEFAULT_SYSTEM_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
INCONSISTENT_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\n<|im_end|>\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Numbers its rounds: the text of a turn depends on how many came before it.
ROUNDS_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[Round ' ~ (loop.index0 // 2 + 1) ~ ']\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def digest(value) -> str:
    blob = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----- conversations


def sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, n)))


def conversation(rng: random.Random, turns: int, tools: bool, system: bool) -> Conversation:
    messages = []
    for turn in range(turns):
        messages.append(Message(USER, f"{sentence(rng)} {turn}"))
        if tools and rng.random() < 0.5:
            call = {"name": "get_weather", "arguments": {"city": rng.choice(WORDS)}}
            messages.append(Message(FUNCTION, json.dumps(call, ensure_ascii=False)))
            messages.append(Message(OBSERVATION, json.dumps({"result": sentence(rng)}, ensure_ascii=False)))
        messages.append(Message(ASSISTANT, sentence(rng, 12)))
    return Conversation(messages=messages, system=sentence(rng) if system else None,
                        tools=json.dumps(TOOLS) if tools else None,
                        chosen=Message(ASSISTANT, sentence(rng, 12)), rejected=Message(ASSISTANT, sentence(rng, 3)),
                        kto_tag=rng.random() < 0.5)


def conversations(tools: bool) -> list[Conversation]:
    rng = random.Random(f"golden-{tools}")
    return [conversation(rng, turns, tools, system) for turns in (1, 2, 4, 8) for system in (False, True)]


# ----- processors on conversations (no datasets library)

OPTION_SETS = {
    "sft": ("supervised_example", ProcessorOptions(4096)),
    "sft_prompt": ("supervised_example", ProcessorOptions(4096, train_on_prompt=True)),
    "sft_history": ("supervised_example", ProcessorOptions(4096, mask_history=True)),
    "sft_cut": ("supervised_example", ProcessorOptions(48)),
    "sft_cut_history": ("supervised_example", ProcessorOptions(48, mask_history=True)),
    "pairwise": ("pairwise_example", ProcessorOptions(4096)),
    "pairwise_cut": ("pairwise_example", ProcessorOptions(40)),
    "prompt": ("unsupervised_example", ProcessorOptions(4096)),
    "predict_cut": ("prediction_example", ProcessorOptions(40)),
    "kto": ("kto_example", ProcessorOptions(4096)),
}


def _shaped(conv: Conversation, processor: str) -> Conversation:
    if processor in ("pairwise_example", "unsupervised_example"):
        return Conversation(**{**vars(conv), "messages": conv.messages[:-1]})
    return conv


def run_processor(template, tokenizer, conv: Conversation, processor: str, opts: ProcessorOptions):
    try:
        return getattr(processors, processor)(template, tokenizer, _shaped(conv, processor), opts)
    except Exception as e:  # noqa: BLE001 - a refusal is part of the result
        return f"{type(e).__name__}: {e}"


def tokenizers() -> dict:
    out = {f"{name}{'+tools' if tools else ''}": (lambda n=name, t=tools: family_tokenizer(n, t))
           for name, family in FAMILIES.items() for tools in (False, True) if not tools or family.tools_jinja}
    chatml_tokens = ["<|im_start|>", "<|im_end|>"]
    out["default_system"] = lambda: build_tokenizer(chatml_tokens, DEFAULT_SYSTEM_JINJA, eos_token="<|im_end|>")
    out["inconsistent"] = lambda: build_tokenizer(chatml_tokens, INCONSISTENT_JINJA, eos_token="<|im_end|>")
    out["rounds"] = lambda: build_tokenizer(chatml_tokens, ROUNDS_JINJA, eos_token="<|im_end|>")
    out["qwen3_nothink_thinking"] = lambda: build_tokenizer(chatml_tokens, official.QWEN3, eos_token="<|im_end|>")
    paths = sorted(glob.glob(SMOLLM2))
    if paths:
        def smollm2():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(paths[0])

        out["smollm2"] = smollm2
    return out


def processor_cases(tokenizer_names=None):
    """(case name, thunk returning the digest) for each tokenizer x template x option set."""
    makers = tokenizers()
    for tok_name, make in makers.items():
        if tokenizer_names is not None and tok_name not in tokenizer_names:
            continue
        family = tok_name.split("+")[0]
        named = family if family in FAMILIES else "qwen"
        for template_name in ("auto", named):
            yield f"proc/{tok_name}/{template_name}", _processor_case(make, template_name, "+tools" in tok_name)


def _processor_case(make, template_name, tools):
    def run():
        tok = make()
        template = get_template(template_name, tok)
        convs = conversations(tools)
        return digest({key: [run_processor(template, tok, c, proc, opts) for c in convs]
                       for key, (proc, opts) in OPTION_SETS.items()})
    return run


# ----- the whole pipeline on dataset files

PIPELINE = [  # (dataset, dataset_dir, stage, templates, cutoff_len, extra DataArgs)
    ("alpaca_en_demo", DEMO, "sft", ("auto", "qwen", "llama3"), 8192, {}),
    ("alpaca_zh_demo", DEMO, "sft", ("auto", "qwen"), 64, {}),
    ("identity", DEMO, "sft", ("auto", "qwen"), 8192, {"mask_history": True}),
    ("glaive_toolcall_en_demo", DEMO, "sft", ("auto", "qwen", "llama3"), 8192, {}),
    ("glaive_toolcall_zh_demo", DEMO, "sft", ("auto", "qwen"), 96, {}),
    ("dpo_en_demo", DEMO, "dpo", ("auto", "qwen"), 8192, {}),
    ("dpo_zh_demo", DEMO, "dpo", ("auto", "qwen"), 80, {}),
    ("kto_en_demo", DEMO, "kto", ("auto", "qwen"), 8192, {}),
    ("c4_demo", DEMO, "pt", ("auto",), 256, {}),
    ("c4_demo", DEMO, "pt", ("auto",), 256, {"packing": False}),
    ("wiki_demo", DEMO, "pt", ("auto",), 1024, {}),
    ("forge_identity", PROJECT_DATA, "sft", ("auto", "qwen"), 8192, {"train_on_prompt": True}),
    ("forge_preference", PROJECT_DATA, "dpo", ("auto",), 8192, {}),
    ("forge_kto", PROJECT_DATA, "kto", ("auto",), 8192, {}),
    ("forge_arithmetic", PROJECT_DATA, "grpo", ("auto", "qwen"), 8192, {}),
]


def pipeline_cases():
    for name, root, stage, templates, cutoff, extra in PIPELINE:
        if not (root / "dataset_info.json").is_file():
            continue
        for template_name in templates:
            suffix = "".join(f"/{k}" for k in sorted(extra))
            yield (f"pipe/{name}/{stage}/{template_name}/{cutoff}{suffix}",
                   _pipeline_case(name, root, stage, template_name, cutoff, extra))


def _pipeline_case(name, root, stage, template_name, cutoff, extra):
    def run():
        from tests.data.test_anchor_preprocess import qwen25_tokenizer
        from tuneforge.config.args import DataArgs
        from tuneforge.data.prepare import prepare_datasets

        tok = qwen25_tokenizer() if template_name == "auto" and "toolcall" in name else chatml_tokenizer()
        args = DataArgs(dataset=name, dataset_dir=str(root), cutoff_len=cutoff, max_samples=40,
                        overwrite_cache=True, **extra)
        try:
            data = prepare_datasets(args, stage, tok, get_template(template_name, tok))
        except Exception as e:  # noqa: BLE001 - a refusal is part of the result
            return digest(f"{type(e).__name__}: {e}")
        report = data.train_report
        return digest({"rows": data.train.to_list(), "truncated": report.truncated, "dropped": dict(report.dropped),
                       "examples": report.examples})
    return run


def all_cases():
    yield from processor_cases()
    yield from pipeline_cases()


def main(argv: list[str]) -> None:
    if "--write" not in argv:
        sys.exit("usage: python -m tests.data.prep_golden --write   (regenerates prep_golden.json)")
    import tempfile

    os.environ["TUNEFORGE_DATA_CACHE"] = tempfile.mkdtemp(prefix="tuneforge-golden-")
    results = {name: run() for name, run in all_cases()}
    GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(results)} cases to {GOLDEN}")


if __name__ == "__main__":
    main(sys.argv[1:])
