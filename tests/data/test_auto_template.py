import random

import pytest

from tests.tiny import build_tokenizer, chatml_tokenizer
from tuneforge.data.conversation import Conversation, Message
from tuneforge.data.encode import encode_rendered
from tuneforge.data.processors import ProcessorOptions, supervised_example
from tuneforge.data.templates.auto import AutoTemplate, to_hf_messages
from tuneforge.errors import TemplateError

WORDS = "hello world who are you 你好 世界 fox dog code return Paris 42 ! ?".split()

# A SmolLM2-like template: a default system prompt when the conversation has none.
DEFAULT_SYSTEM_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3-like: BOS, headers, <|eot_id|>, no newline after the end of turn.
LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Rewrites history: earlier assistant turns are rendered without their content once later ones follow.
INCONSISTENT_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\n<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizers():
    return {
        "chatml": chatml_tokenizer(),
        "default_system": build_tokenizer(["<|im_start|>", "<|im_end|>"], DEFAULT_SYSTEM_JINJA, eos_token="<|im_end|>"),
        "llama3": build_tokenizer(
            ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], LLAMA3_JINJA,
            bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        ),
    }


def random_conversation(rng: random.Random) -> Conversation:
    turns = rng.randint(1, 4)
    msgs = []
    for _ in range(turns):
        msgs.append(Message("user", " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))))
        msgs.append(Message("assistant", " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))))
    system = " ".join(rng.choices(WORDS, k=4)) if rng.random() < 0.5 else None
    return Conversation(messages=msgs, system=system)


@pytest.mark.parametrize("name", ["chatml", "default_system", "llama3"])
def test_auto_ids_equal_apply_chat_template(name):
    tok = tokenizers()[name]
    rng = random.Random(0)
    template = AutoTemplate()
    for _ in range(30):
        conv = random_conversation(rng)
        turns, suffix = encode_rendered(tok, template.render(conv.messages, conv.system, None, tok))
        ids = [i for t in turns for i in t.prompt + t.response] + suffix
        expected = tok.apply_chat_template(to_hf_messages(conv.messages, conv.system), tokenize=True)["input_ids"]
        assert ids == expected
        prompt = template.render_prompt(conv.messages[:-1], conv.system, None, tok)
        assert prompt == tok.apply_chat_template(
            to_hf_messages(conv.messages[:-1], conv.system), tokenize=False, add_generation_prompt=True
        )


@pytest.mark.parametrize("name,end", [("chatml", "<|im_end|>\n"), ("llama3", "<|eot_id|>")])
def test_labels_decode_to_assistant_contents_and_end_of_turn(name, end):
    tok = tokenizers()[name]
    rng = random.Random(1)
    for _ in range(20):
        conv = random_conversation(rng)
        example, truncated = supervised_example(AutoTemplate(), tok, conv, ProcessorOptions(cutoff_len=4096))
        assert not truncated
        trained = [(i, t) for i, t in zip(example["input_ids"], example["labels"]) if t != -100]
        assert all(i == t for i, t in trained)
        text = tok.decode([t for _, t in trained], skip_special_tokens=False)
        contents = [m.content.strip() if name == "llama3" else m.content for m in conv.messages[1::2]]
        assert text == "".join(c + end for c in contents)


def test_mask_history_and_train_on_prompt(chatml_tok):
    conv = Conversation(messages=[Message("user", "hi"), Message("assistant", "hello"),
                                  Message("user", "who are you"), Message("assistant", "a fox")])
    last, _ = supervised_example(AutoTemplate(), chatml_tok, conv, ProcessorOptions(4096, mask_history=True))
    trained = [t for t in last["labels"] if t != -100]
    assert chatml_tok.decode(trained) == "a fox<|im_end|>\n"
    everything, _ = supervised_example(AutoTemplate(), chatml_tok, conv, ProcessorOptions(4096, train_on_prompt=True))
    assert everything["labels"] == everything["input_ids"]


def test_template_that_rewrites_history_is_refused():
    tok = build_tokenizer(["<|im_start|>", "<|im_end|>"], INCONSISTENT_JINJA, eos_token="<|im_end|>")
    conv = [Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d")]
    with pytest.raises(TemplateError, match="named template"):
        AutoTemplate().render(conv, None, None, tok)


def test_no_chat_template_is_a_clear_error():
    tok = build_tokenizer([], None)
    with pytest.raises(TemplateError, match="has none"):
        AutoTemplate().render([Message("user", "a"), Message("assistant", "b")], None, None, tok)


def test_stop_words_read_off_the_template():
    assert AutoTemplate().stop_words(tokenizers()["chatml"])[0] == "<|im_end|>"
    assert "<|eot_id|>" in AutoTemplate().stop_words(tokenizers()["llama3"])
