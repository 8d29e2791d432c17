"""The model's forward pass as the losses need it: final hidden states without the LM head, the LM head
only at the positions that are scored, and, under DeepSpeed ZeRO-3 or FSDP (where the head's weight is
whole only inside the model's own forward), logits the model computes itself at those positions.

Batches come from data.collator: padding-free (one row, restarting position_ids) or padded (attention
mask); keys may carry a prefix ("kl_") when a batch holds a second set of sequences.
"""

from __future__ import annotations

import torch

from ..models.adapters import unwrap
from ..models.varlen_attention import example_bounds
from ..labels import IGNORE

MODEL_KEYS = ("input_ids", "position_ids", "attention_mask")
_NO_LOGITS = torch.tensor([], dtype=torch.long)


def model_inputs(inputs: dict, prefix: str = "") -> dict:
    """The tensors the model's forward takes, from a batch whose keys may carry a prefix."""
    return {k: inputs[prefix + k] for k in MODEL_KEYS if prefix + k in inputs}


def sequence_lengths(inputs: dict, prefix: str = "") -> list[int]:
    """Real (non-padding) token count of every sequence in a padded or padding-free batch."""
    if prefix + "attention_mask" in inputs:
        return [int(n) for n in inputs[prefix + "attention_mask"].sum(dim=1).tolist()]
    bounds = example_bounds(inputs[prefix + "position_ids"])
    return [b - a for a, b in zip(bounds, bounds[1:])]


def final_hidden(model, batch: dict) -> torch.Tensor:
    """The last hidden states (the LM head's input), computed without running the LM head."""
    out = model(**batch, output_hidden_states=True, logits_to_keep=_NO_LOGITS, use_cache=False)
    return out.hidden_states[-1]


def fused_head_weight(model) -> torch.Tensor | None:
    """The LM head's weight when the head is a plain bias-free linear layer without logit softcapping, so
    the chunked kernels of loss.py apply; None for an odd head (bias, softcap, an adapter on it)."""
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) and head.bias is None and not _softcap(inner):
        return head.weight
    return None


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """float32 logits of the LM head at the given hidden states, softcapped where the model does so."""
    inner = unwrap(model)
    logits = inner.get_output_embeddings()(hidden).float()
    softcap = _softcap(inner)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def sharded_logits(model, batch: dict, targets: torch.Tensor):
    """(logits, targets) at the scored positions, the logits computed by the model's own forward
    (`logits_to_keep` as a tensor of positions; for a padded batch, the union of its rows' positions).
    Returns the positions too, to pick other per-position tensors the same way."""
    positions = (targets != IGNORE).any(dim=0).nonzero().flatten()
    logits = model(**batch, logits_to_keep=positions, use_cache=False).logits.float()
    return logits, targets[:, positions], positions


def _softcap(model):
    return getattr(model.config, "final_logit_softcapping", None)
