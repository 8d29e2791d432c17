"""GGUF export: every supported architecture round-trips through transformers' GGUF reader with the same logits
(exactly, up to each type's quantisation error) and the same tokenizer and chat template."""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tests.models.test_alias import needs_smollm2
from tests.tiny import CHATML_JINJA, CORPUS, chatml_tokenizer, tiny_llama
from tuneforge.errors import ExportError
from tuneforge.export import gguf_arch
from tuneforge.export.gguf_vocab import QWEN2_SPLIT, byte_level_pre_name
from tuneforge.export.gguf_writer import (
    QUANTIZATIONS,
    SUPPORTED_ARCHITECTURES,
    check_exportable,
    plan_tensors,
    write_gguf,
)

CHATML_SPECIALS = ["<|im_start|>", "<|im_end|>"]
TEXTS = {
    "english": "Hello! How are you today? The quick brown fox jumps over the lazy dog.",
    "chinese": "你好，我是一个助手。今天天气很好。你是谁？",
    "special": "<|im_start|>user\nWho are you? 🙂 café<|im_end|>\n<|im_start|>assistant\n",
}

# Largest |logit difference| / largest |logit| against the float32 source. Measured maxima over the five tiny
# models: f32 0, f16 1.2e-3, bf16 8.6e-3, q8_0 3.3e-2, q5_1 0.20, q5_0 0.22, q4_1 0.38, q4_0 0.54; each bound is about
# twice that. The tiny models are deliberately sensitive (initializer_range 0.1: sharp attention, so rotary row order
# matters), which inflates the 4- and 5-bit errors; a wrong Q/K row order gives about 0.7 (see below).
TOLERANCE = {"f32": 1e-5, "f16": 3e-3, "bf16": 2e-2, "q8_0": 7e-2, "q5_1": 0.4, "q5_0": 0.45, "q4_1": 0.75, "q4_0": 1.0}
# Against the source with its weights quantised and dequantised as the file stores them: the writer itself adds no
# error (measured 0 for every architecture and type), so any mistake in names, row order or norms shows here.
EXACT = 1e-4


def _byte_level_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE that splits text like Qwen2's (numbers digit by digit)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", *CHATML_SPECIALS]})
    fast.eos_token, fast.pad_token, fast.chat_template = "<|im_end|>", "<|endoftext|>", CHATML_JINJA
    return fast


def _sentencepiece_vocab(specials: list[str]) -> tuple[dict[str, int], list]:
    """A SentencePiece-style BPE vocabulary: specials, the 256 byte pieces, then pieces with a leading '▁'."""
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.train_from_iterator(CORPUS * 4, trainer=trainers.BpeTrainer(vocab_size=350, show_progress=False))
    trained = tok.get_vocab()
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + sorted(trained, key=trained.get)
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    return vocab, [tuple(merge) for merge in json.loads(tok.to_str())["model"]["merges"]]


def _gemma_tokenizer():
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    vocab, merges = _sentencepiece_vocab(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": CHATML_SPECIALS})
    tok.chat_template = CHATML_JINJA
    return tok


def _mistral_tokenizer():
    from transformers.models.llama.tokenization_llama import LlamaTokenizer

    vocab, merges = _sentencepiece_vocab(["<unk>", "<s>", "</s>"])
    tok = LlamaTokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": CHATML_SPECIALS})
    tok.chat_template = CHATML_JINJA
    return tok


def _small(config_class, tokenizer, extra_rows=0, **kwargs):
    settings = dict(
        vocab_size=len(tokenizer) + extra_rows,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return config_class(**{**settings, **kwargs})


@functools.lru_cache(maxsize=None)
def build_case(arch: str):
    """(model, tokenizer, kwargs transformers needs to rebuild what its GGUF reader does not read, expected pre)."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "llama":
        tokenizer = chatml_tokenizer()
        return tiny_llama(tokenizer, initializer_range=0.1).eval(), tokenizer, {}, "gpt-2"
    if arch == "mistral":  # SentencePiece with a prefix space; ffn_down rows of 80 values fall back from 32-blocks
        tokenizer = _mistral_tokenizer()
        config = _small(MistralConfig, tokenizer, intermediate_size=80, sliding_window=None, tie_word_embeddings=False)
        return MistralForCausalLM(config).eval(), tokenizer, {}, "default"
    if arch == "qwen2":  # tied embeddings, q/k/v biases, and more embedding rows than tokens (like Qwen2.5)
        tokenizer = _byte_level_qwen_tokenizer()
        config = _small(Qwen2Config, tokenizer, extra_rows=13, tie_word_embeddings=True, rope_theta=1e6)
        model = Qwen2ForCausalLM(config)
        with torch.no_grad():
            for layer in model.model.layers:  # random biases, so a misplaced bias shows in the logits
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
        return model.eval(), tokenizer, {}, "qwen2"
    if arch == "qwen3":  # head_dim 32 differs from hidden/heads (GGUF key_length; transformers' reader ignores it)
        tokenizer = _byte_level_qwen_tokenizer()
        config = _small(Qwen3Config, tokenizer, head_dim=32, tie_word_embeddings=False)
        return Qwen3ForCausalLM(config).eval(), tokenizer, {"head_dim": 32}, "qwen2"
    if arch == "gemma3_text":  # SentencePiece without prefix space, 1 + w norms, a sliding window shorter than the text
        tokenizer = _gemma_tokenizer()
        config = _small(
            Gemma3TextConfig, tokenizer, head_dim=32, query_pre_attn_scalar=32, sliding_window=8, num_key_value_heads=1
        )
        model = Gemma3ForCausalLM(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):  # Gemma initialises them to 0; random ones test the +1 convention
                    param.normal_(0, 0.3)
        return model.eval(), tokenizer, {"query_pre_attn_scalar": 32}, "default"
    raise KeyError(arch)


def _prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello! Who are you? 你好，今天天气很好。 The quick brown fox."}], tokenize=False
    )
    return torch.tensor([tokenizer.encode(text)])


def _quantised_copy(model, quantization: str):
    """The source with each weight quantised and dequantised as the writer stores it."""
    copied = copy.deepcopy(model)
    wanted = QUANTIZATIONS[quantization].tensor_type
    types = {item.source.data_ptr(): item.tensor_type for item in plan_tensors(model, wanted)}
    with torch.no_grad():
        for param, source in zip(copied.parameters(), model.parameters()):
            qtype = types.get(source.data_ptr(), gguf.GGMLQuantizationType.F32)
            if qtype != gguf.GGMLQuantizationType.F32:
                data = gguf.quants.quantize(source.detach().float().numpy(), qtype)
                param.copy_(torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(param.shape)))
    return copied


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _load(folder: Path, name: str, kwargs: dict):
    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, **kwargs).eval()


ROUND_TRIPS = [("llama", q) for q in QUANTIZATIONS] + [
    (arch, q) for arch in ("mistral", "qwen2", "qwen3", "gemma3_text") for q in ("f32", "f16", "q8_0", "q4_0")
]


@pytest.mark.parametrize("arch,quantization", ROUND_TRIPS)
def test_logits_round_trip(arch, quantization, tmp_path):
    model, tokenizer, load_kwargs, _ = build_case(arch)
    write_gguf(model, tokenizer, tmp_path / "model.gguf", quantization)
    loaded = _load(tmp_path, "model.gguf", load_kwargs)
    ids = _prompt_ids(tokenizer)
    with torch.no_grad():
        out, ref = loaded(ids).logits, model(ids).logits
        exact = _quantised_copy(model, quantization)(ids).logits
    assert _relative_error(out, exact) < EXACT
    assert _relative_error(out, ref) < TOLERANCE[quantization]


def test_tolerances_catch_a_wrong_rotary_row_order(tmp_path, monkeypatch):
    model, tokenizer, _, _ = build_case("llama")
    unpermuted = gguf_arch.ArchSpec("llama", False, 0.0, "hidden_act", "silu")
    monkeypatch.setitem(gguf_arch.ARCHITECTURES, "llama", unpermuted)
    write_gguf(model, tokenizer, tmp_path / "wrong.gguf", "f32")
    ids = _prompt_ids(tokenizer)
    with torch.no_grad():
        error = _relative_error(_load(tmp_path, "wrong.gguf", {})(ids).logits, model(ids).logits)
    assert error > 1000 * EXACT and error > 5 * max(TOLERANCE[q] for q in ("f32", "f16", "bf16", "q8_0"))


@pytest.mark.parametrize("arch", SUPPORTED_ARCHITECTURES)
def test_tokenizer_and_chat_template_round_trip(arch, tmp_path):
    model, tokenizer, _, expected_pre = build_case(arch)
    write_gguf(model, tokenizer, tmp_path / "model.gguf", "q8_0", name="tiny")
    read_back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    for text in TEXTS.values():
        assert read_back.encode(text) == tokenizer.encode(text), text
    assert read_back.chat_template == tokenizer.chat_template

    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.name") == "tiny"
    assert field("tokenizer.ggml.pre") == expected_pre
    assert field("tokenizer.ggml.model") == ("gpt2" if expected_pre != "default" else "llama")
    assert field("tokenizer.ggml.add_bos_token") == (tokenizer("a").input_ids[0] == tokenizer.bos_token_id)
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    types = field("tokenizer.ggml.token_type")
    assert len(types) == model.get_input_embeddings().weight.shape[0]
    assert types[tokenizer.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    names = {t.name: t.tensor_type for t in reader.tensors}
    assert ("output.weight" in names) != model.config.tie_word_embeddings
    assert names["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert names["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    if arch == "mistral":  # rows of 80 values do not split into blocks of 32
        assert names["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    if arch == "gemma3_text":
        assert list(field("gemma3.attention.sliding_window_pattern")) == [True, True]
        assert field("gemma3.attention.key_length") == 32
        assert field("tokenizer.ggml.add_space_prefix") is False


def _tiny_config(model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, pad_token_id=0
    )


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_unsupported_architecture_is_one_line_error(model_type, tmp_path):
    config = _tiny_config(model_type)
    with pytest.raises(ExportError) as error:
        check_exportable(config, "f16")
    message = str(error.value)
    assert "\n" not in message and model_type in message and all(a in message for a in SUPPORTED_ARCHITECTURES)

    from transformers import AutoModelForCausalLM as Auto

    with pytest.raises(ExportError):
        write_gguf(Auto.from_config(config), chatml_tokenizer(), tmp_path / "x.gguf")
    assert not os.path.exists(tmp_path / "x.gguf")


def test_unknown_quantization_is_one_line_error():
    model, _, _, _ = build_case("llama")
    with pytest.raises(ExportError) as error:
        check_exportable(model.config, "q4_k_m")
    assert "\n" not in str(error.value) and "q4_k_m" in str(error.value) and "q8_0" in str(error.value)


def test_configs_llama_cpp_would_run_differently_are_refused():
    model, _, _, _ = build_case("qwen2")
    config = copy.deepcopy(model.config)
    config.use_sliding_window = True
    with pytest.raises(ExportError, match="use_sliding_window"):
        check_exportable(config, "f16")
    config = copy.deepcopy(build_case("gemma3_text")[0].config)
    config.query_pre_attn_scalar = 256
    with pytest.raises(ExportError, match="query_pre_attn_scalar"):
        check_exportable(config, "f16")


def _backend(pre_tokenizer):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    return tok


def test_pre_tokenizer_names_are_found_by_behaviour():
    P = pre_tokenizers
    llama3 = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    )
    cases = {
        "gpt-2": P.ByteLevel(add_prefix_space=False),
        "smollm": P.Sequence([P.Digits(individual_digits=True), P.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": P.Sequence([P.Split(Regex(llama3), "isolated"), P.ByteLevel(add_prefix_space=False, use_regex=False)]),
        "qwen2": P.Sequence([P.Split(Regex(QWEN2_SPLIT), "isolated"), P.ByteLevel(add_prefix_space=False, use_regex=False)]),
    }
    for name, pre in cases.items():
        assert byte_level_pre_name(_backend(pre)) == name
    with pytest.raises(ExportError, match="pre-tokenizer"):
        byte_level_pre_name(_backend(P.ByteLevel(add_prefix_space=True)))


def test_llama3_rope_scaling_is_written_as_frequency_factors():
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=131072,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    check_exportable(config, "f16")
    factors = gguf_arch.extra_tensors(config)["rope_freqs.weight"]
    assert factors.shape == (8,) and factors.dtype == np.float32
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(8.0)  # fast rotations kept, slow ones x8


@pytest.fixture
def smollm2(monkeypatch):
    from tests.models.test_alias import TEST_MODEL_CACHE
    from tuneforge.config.args import FinetuneArgs, ModelArgs
    from tuneforge.models.loader import load_model, load_tokenizer

    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE", TEST_MODEL_CACHE)
    args = ModelArgs(model_name_or_path="smollm2-135m-instruct")
    tokenizer = load_tokenizer(args)
    return load_model(args, FinetuneArgs(), tokenizer, is_trainable=False).eval(), tokenizer


@pytest.mark.slow
@needs_smollm2
def test_smollm2_f16_round_trip(smollm2, tmp_path):
    model, tokenizer = smollm2
    write_gguf(model, tokenizer, tmp_path / "smollm2.gguf", "f16")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? 你好"}], tokenize=False, add_generation_prompt=True
    )
    read_back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="smollm2.gguf")
    assert read_back.encode(text) == tokenizer.encode(text)
    assert read_back.chat_template == tokenizer.chat_template
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        out, ref = _load(tmp_path, "smollm2.gguf", {})(ids).logits, model(ids).logits
    assert _relative_error(out, ref) < 3e-3  # measured 1.1e-3
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
