"""The tokenizer as llama.cpp reads it from a GGUF file (the `tokenizer.ggml.*` and `tokenizer.chat_template` keys).

Two kinds of Hugging Face fast tokenizer can be described that way: byte-level BPE (GPT-2 style: Llama 3,
SmolLM2, Qwen) is written as `gpt2` with its merges and the name of the pre-tokenizer llama.cpp must use, and
SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma) as `llama` with scores that reproduce the merge
order. The pre-tokenizer name is found by behaviour: the tokenizer's own pre-tokenizer and a reference for each name
llama.cpp knows split a probe text, and the name whose split is identical wins. A tokenizer that matches none is
refused, because llama.cpp would tokenize it differently from training without any sign of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import gguf
from tokenizers import Regex, pre_tokenizers

from tuneforge.errors import ExportError

# The split patterns of Llama 3 (tiktoken style, numbers in groups of three) and Qwen2 (numbers one by one).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _regex_then_bytes(pattern: str):
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) and a Hugging Face pre-tokenizer that splits the same way.
BYTE_LEVEL_PRE_TOKENIZERS: dict[str, Callable[[], object]] = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "llama-bpe": lambda: _regex_then_bytes(LLAMA3_SPLIT),
    "qwen2": lambda: _regex_then_bytes(QWEN2_SPLIT),
}

# Text that tells the pre-tokenizers above apart: digit runs, contractions in both cases, runs of blanks and
# newlines, punctuation, non-Latin scripts and an emoji.
PROBE = (
    "Hello World!  It's 2024-12-31, I'M sure: 1234567 apples\n\n\tcost $3.50...\r\n   indented  "
    "DON'T we'll 你好，世界。 Ünïcödé naïve café 🙂 x=a+b;y==c   end"
)

BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class Vocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    scores: Optional[list[float]] = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: Optional[bool] = None


def read_vocab(tokenizer, vocab_size: int) -> Vocab:
    """Everything GGUF needs from `tokenizer`, padded to the model's `vocab_size` rows; ExportError if it can't be."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(
            f"GGUF export needs a fast (tokenizers-backed) tokenizer; got {type(tokenizer).__name__}"
        )
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise ExportError(
            f"GGUF export supports BPE tokenizers (byte-level or SentencePiece-style); this one is {model.get('type')}"
        )
    if len(tokenizer) > vocab_size:
        raise ExportError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab_size} rows; "
            "resize the model's token embeddings before exporting"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokens = [backend.id_to_token(i) for i in range(vocab_size)]
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]

    byte_level = "ByteLevel" in json.dumps(json.loads(backend.to_str()).get("pre_tokenizer"))
    if byte_level:
        kind, pre, scores, space_prefix = "gpt2", byte_level_pre_name(backend), None, None
    elif model.get("byte_fallback"):
        kind, pre, scores = "llama", "default", sentencepiece_scores(tokens, merges)
        pieces = tokenizer.tokenize("Hello")
        space_prefix = bool(pieces) and pieces[0].startswith("\u2581")
    else:
        raise ExportError(
            "GGUF export supports byte-level BPE and SentencePiece-style BPE (byte fallback) tokenizers; this BPE "
            "tokenizer is neither"
        )

    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    special_ids = {
        key: value
        for key, value in {
            "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id,
            "unk": tokenizer.unk_token_id,
            "pad": tokenizer.pad_token_id,
        }.items()
        if value is not None
    }
    return Vocab(
        model=kind,
        pre=pre,
        tokens=tokens,
        types=token_types(tokenizer, tokens, sentencepiece=kind == "llama"),
        merges=merges,
        scores=scores,
        special_ids=special_ids,
        add_bos=adds_bos(tokenizer),
        add_eos=len(with_special) > len(without) and with_special[-1] == tokenizer.eos_token_id,
        add_space_prefix=space_prefix,
    )


def byte_level_pre_name(backend) -> str:
    """llama.cpp's name for the way this byte-level tokenizer splits text before BPE."""
    if backend.pre_tokenizer is None:
        raise ExportError("the byte-level tokenizer has no pre-tokenizer, which llama.cpp cannot reproduce")
    pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(PROBE)]
    for name, build in BYTE_LEVEL_PRE_TOKENIZERS.items():
        if [piece for piece, _ in build().pre_tokenize_str(PROBE)] == pieces:
            return name
    raise ExportError(
        "the tokenizer's pre-tokenizer splits text unlike any llama.cpp knows here "
        f"({', '.join(BYTE_LEVEL_PRE_TOKENIZERS)}), so llama.cpp would tokenize differently from training"
    )


def sentencepiece_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined token scores highest; a token made
    by an earlier merge must score higher, so the score is minus the rank of the merge that makes it."""
    rank = {}
    for index, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), index)
    unreachable = -float(len(merges))
    return [-float(rank[t]) if t in rank else (0.0 if len(t) == 1 else unreachable) for t in tokens]


def adds_bos(tokenizer) -> bool:
    """Whether encoding adds BOS, by behaviour (Llama 3's tokenizer adds it in its post-processor while its
    add_bos_token attribute says False)."""
    with_special = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    return len(with_special) > len(without) and with_special[0] == tokenizer.bos_token_id


def token_types(tokenizer, tokens: list[str], sentencepiece: bool) -> list[int]:
    T = gguf.TokenType
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if i < len(tokens)}
    types = []
    for i, token in enumerate(tokens):
        if i == tokenizer.unk_token_id:
            # SentencePiece has a real unknown piece; a byte-level BPE's "unk" is a control token (llama.cpp
            # warns about a control-looking token of another type).
            types.append(T.UNKNOWN if sentencepiece else T.CONTROL)
        elif i in added:
            types.append(T.CONTROL if added[i].special else T.USER_DEFINED)
        elif token == f"[PAD{i}]" and i >= len(tokenizer):
            types.append(T.UNUSED)
        elif sentencepiece and BYTE_TOKEN.match(token):
            types.append(T.BYTE)
        else:
            types.append(T.NORMAL)
    return [int(t) for t in types]


def add_vocab(writer: gguf.GGUFWriter, vocab: Vocab, chat_template: Optional[str],
              eot_token_id: Optional[int] = None) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    # llama.cpp ignores merges for SentencePiece vocabularies, but readers such as transformers use them.
    writer.add_token_merges(vocab.merges)
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
    }
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if chat_template:
        writer.add_chat_template(chat_template)
    if eot_token_id is not None and eot_token_id != vocab.special_ids.get("eos"):
        writer.add_eot_token_id(eot_token_id)  # the template's end of turn: llama.cpp stops on it too
