"""Tiny tokenizers and models built from configs, so tests never download anything."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "Hello! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Who are you? I am Forge, an assistant built with tuneforge.",
    "你好，我是一个助手。你是谁？今天天气很好。",
    "def add(a, b):\n    return a + b\n",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "Translate to French: good morning -> bonjour. Numbers 0123456789.",
    "system user assistant tool function observation human gpt model",
]


@functools.lru_cache(maxsize=None)
def _trained(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok.to_str()


def build_tokenizer(
    special_tokens: list[str],
    chat_template: str | None = None,
    bos_token: str | None = None,
    eos_token: str = "<|endoftext|>",
    pad_token: str | None = None,
    vocab_size: int = 400,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the given special tokens and Jinja chat template."""
    tok = Tokenizer.from_str(_trained(vocab_size))
    names = [t for t in dict.fromkeys([eos_token, bos_token, pad_token, *special_tokens]) if t]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": names})
    fast.eos_token = eos_token
    if bos_token:
        fast.bos_token = bos_token
    fast.pad_token = pad_token or eos_token
    fast.chat_template = chat_template
    return fast


CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer(["<|im_start|>", "<|im_end|>"], CHATML_JINJA, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def tiny_llama(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0, initializer_range: float = 0.02):
    """A random-weight Llama small enough for a CPU test (~100k parameters). A larger initializer_range
    gives larger logits, so LoRA can move the next-token distribution far (the RL tests need that)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model


def save_tiny_model(path, tokenizer=None, **model_kwargs):
    """Writes a tiny chatml Llama + tokenizer as a Hugging Face folder; returns the path as str."""
    tokenizer = tokenizer or chatml_tokenizer()
    model = tiny_llama(tokenizer, **model_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
