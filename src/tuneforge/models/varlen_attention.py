"""Attention for padding-free rows that costs what the examples cost, not what the row costs.

With restarting `position_ids`, sdpa attends over the whole packed row under a block-diagonal mask:
quadratic in the row's length (4 examples of 200 tokens cost an 800 x 800 product, 4x the work). This
attention function runs causal sdpa once per example instead. It is registered through transformers'
public AttentionInterface under its own name (nothing of the library is patched), and falls back to
plain sdpa for anything that is not a single packed row (padded batches, generation with a cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import base_model

NAME = "tuneforge_varlen_sdpa"


def example_bounds(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of each example in a packed row, plus the row's end."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    return starts + [position_ids.shape[-1]]


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                        **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (
        position_ids is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
        and position_ids.shape[-1] == query.shape[2]
    )
    bounds = example_bounds(position_ids) if packed else []
    if len(bounds) < 3 or bounds[0] != 0:  # not a row of several examples
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout, scale=scaling,
            is_causal=True, enable_gqa=query.shape[1] != key.shape[1],
        )
        for a, b in zip(bounds, bounds[1:])
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_varlen_attention(model) -> bool:
    """Switches an sdpa model to per-example attention; returns whether it did."""
    base = base_model(model)
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    base.set_attn_implementation(register())
    return True


def restore_sdpa(model) -> None:
    base = base_model(model)
    if getattr(base.config, "_attn_implementation", None) == NAME:
        base.set_attn_implementation("sdpa")
