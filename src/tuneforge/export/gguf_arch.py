"""Per-architecture facts for GGUF: llama.cpp's architecture name, its hyperparameter keys, and the tensor changes
its graphs expect (rotary row order for the Llama graph, Gemma's 1 + weight RMSNorm).

Every configuration that llama.cpp would run differently from transformers is refused here, before any weight is
read: a file that loads and then generates nonsense is worse than no file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import gguf
import numpy as np


logger = logging.getLogger("tuneforge")


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # general.architecture, as llama.cpp names it
    permute_qk: bool  # llama.cpp's Llama graph rotates interleaved pairs; HF rotates the two halves of each head
    norm_offset: float  # added to every RMSNorm weight (Gemma computes x * (1 + w), llama.cpp x * w)
    activation_key: str
    activation: str  # the only activation llama.cpp's graph for this architecture computes


# Hugging Face model_type -> spec. Mistral runs on llama.cpp's Llama graph (as llama.cpp's own converter writes it).
ARCHITECTURES = {
    "llama": ArchSpec("llama", True, 0.0, "hidden_act", "silu"),
    "mistral": ArchSpec("llama", True, 0.0, "hidden_act", "silu"),
    "qwen2": ArchSpec("qwen2", False, 0.0, "hidden_act", "silu"),
    "qwen3": ArchSpec("qwen3", False, 0.0, "hidden_act", "silu"),
    "gemma3_text": ArchSpec("gemma3", False, 1.0, "hidden_activation", "gelu_pytorch_tanh"),
}

# Keys a rope_parameters dict may hold, by rope type, beyond rope_type and rope_theta.
ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}
YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0}  # llama.cpp's fixed values


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """transformers 5 keeps one dict, or one per layer type (Gemma 3: full and sliding attention)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type in params and isinstance(params[layer_type], dict):
        params = dict(params[layer_type])
    params.setdefault("rope_type", "default")
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def config_problem(config) -> Optional[str]:
    """Why llama.cpp would not run this configuration like transformers does, or None."""
    spec = ARCHITECTURES[config.model_type]
    activation = getattr(config, spec.activation_key, None)
    if activation != spec.activation:
        return f"{spec.activation_key} '{activation}' (llama.cpp's {spec.gguf_arch} graph computes {spec.activation})"
    rope = rope_parameters(config)
    kind = rope["rope_type"]
    if kind not in ROPE_KEYS or (kind == "llama3" and not spec.permute_qk):
        return f"rope_type '{kind}' (supported: {', '.join(ROPE_KEYS)}; llama3 on Llama models only)"
    extra = set(rope) - {"rope_type", "rope_theta"} - ROPE_KEYS[kind]
    changed = {k for k, v in YARN_DEFAULTS.items() if kind == "yarn" and k in rope and float(rope[k]) != v}
    if extra or changed:
        return f"rope_parameters {sorted(extra | changed)} for rope_type '{kind}', which llama.cpp does not read"
    if config.model_type in ("llama", "mistral") and getattr(config, "mlp_bias", False):
        return "mlp_bias: true (llama.cpp's Llama graph has no feed-forward biases)"
    if config.model_type == "qwen3" and getattr(config, "attention_bias", False):
        return "attention_bias: true (llama.cpp's Qwen3 graph has no attention biases)"
    if config.model_type in ("qwen2", "qwen3") and getattr(config, "use_sliding_window", False):
        return "use_sliding_window: true (llama.cpp's Qwen graphs attend to the whole context)"
    if config.model_type == "gemma3_text":
        return _gemma3_problem(config)
    return None


def _gemma3_problem(config) -> Optional[str]:
    if getattr(config, "attention_bias", False):
        return "attention_bias: true (llama.cpp's Gemma 3 graph has no attention biases)"
    if getattr(config, "attn_logit_softcapping", None):
        return "attn_logit_softcapping (llama.cpp's Gemma 3 graph does not cap attention logits)"
    if getattr(config, "use_bidirectional_attention", False):
        return "use_bidirectional_attention: true (an embedding model, not a causal LM)"
    # llama.cpp scales queries by 1/sqrt(head_dim), or by 1/sqrt(hidden/heads) for the 62-layer (27B) model.
    expected = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == 62 else head_dim(config)
    if config.query_pre_attn_scalar != expected:
        return f"query_pre_attn_scalar {config.query_pre_attn_scalar} (llama.cpp uses {expected} for this shape)"
    sliding = rope_parameters(config, "sliding_attention")
    if sliding["rope_type"] != "default":
        return f"rope_type '{sliding['rope_type']}' on sliding-window layers (llama.cpp applies none there)"
    return None


def add_hyperparameters(writer, config, vocab_size: int) -> None:
    spec = ARCHITECTURES[config.model_type]
    dim = head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    if dim != config.hidden_size // config.num_attention_heads or spec.gguf_arch == "gemma3":
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    writer.add_rope_dimension_count(dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_size)

    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if rope["rope_type"] == "yarn":
        original = rope.get("original_max_position_embeddings") or config.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(int(original))

    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window and window < config.max_position_embeddings:
        logger.warning("Mistral's sliding window (%d tokens) is not kept: llama.cpp attends to the whole context", window)
    if spec.gguf_arch == "gemma3":
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])
        writer.add_rope_freq_base_swa(float(rope_parameters(config, "sliding_attention")["rope_theta"]))
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def extra_tensors(config) -> dict[str, np.ndarray]:
    """Tensors llama.cpp needs that the model has no parameter for: Llama 3's per-frequency rope factors."""
    rope = rope_parameters(config)
    if rope["rope_type"] != "llama3":
        return {}
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = head_dim(config)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    # llama.cpp divides each rotation frequency by its factor.
    return {"rope_freqs.weight": (plain / scaled.double()).float().numpy()}


def permute_for_rotary_pairs(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorders each head's rows from HF's [first halves | second halves] to llama.cpp's interleaved pairs."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def transform(gguf_name: str, weight: np.ndarray, config) -> np.ndarray:
    """The tensor as llama.cpp's graph for this architecture reads it."""
    spec = ARCHITECTURES[config.model_type]
    if spec.permute_qk and ".attn_q." in gguf_name:
        weight = permute_for_rotary_pairs(weight, config.num_attention_heads)
    elif spec.permute_qk and ".attn_k." in gguf_name:
        weight = permute_for_rotary_pairs(weight, config.num_key_value_heads or config.num_attention_heads)
    if spec.norm_offset and gguf_name.endswith("norm.weight"):
        weight = weight + np.float32(spec.norm_offset)
    return weight
