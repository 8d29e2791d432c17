"""Per-sequence log-probabilities and last-token scores of a batch of sequences.

A batch (see data.collator.pack_sequences) holds several sequences, padding-free in one row or padded,
with `shift_labels` (the next token at supervised positions, -100 elsewhere) and `sequence_index` (which
sequence each position belongs to). The LM head runs only at supervised positions, in chunks, as for SFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.varlen_attention import example_bounds
from .forward import final_hidden, fused_head_weight, head_logits, model_inputs, sharded_logits
from .loss import token_logprobs
from ..labels import IGNORE


@dataclass
class SequenceLogps:
    sums: torch.Tensor  # (n,) float32: summed log-probability of each sequence's supervised tokens
    counts: torch.Tensor  # (n,) supervised tokens of each sequence
    supervised: int  # supervised positions in the batch (where the LM head ran)

    def averaged(self) -> torch.Tensor:
        return self.sums / self.counts.clamp(min=1)


def _gather_by_sequence(token_logps, seq_index, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = torch.zeros(n, dtype=torch.float32, device=token_logps.device).index_add(0, seq_index, token_logps.float())
    counts = torch.bincount(seq_index, minlength=n)
    return sums, counts


def sequence_logps(model, inputs: dict, n: int, chunk_size: int = 1024, sharded: bool = False,
                   prefix: str = "", workspace=None) -> SequenceLogps:
    """Log-probabilities of the n sequences of a batch (keys with `prefix`, e.g. "kl_"); workspace: the
    caller's loss.LogitsWorkspace."""
    targets = inputs[prefix + "shift_labels"]
    seq_index = inputs[prefix + "sequence_index"]
    batch = model_inputs(inputs, prefix)
    if sharded:
        logits, picked, positions = sharded_logits(model, batch, targets)
        mask = picked != IGNORE
        token = torch.log_softmax(logits[mask], dim=-1).gather(1, picked[mask][:, None]).squeeze(1)
        return SequenceLogps(*_gather_by_sequence(token, seq_index[:, positions][mask], n), int(mask.sum()))
    mask = targets != IGNORE
    hidden, picked = final_hidden(model, batch)[mask], targets[mask]
    weight = fused_head_weight(model)
    if weight is not None:
        token = token_logprobs(hidden, weight, picked, chunk_size, workspace)
    else:
        token = torch.log_softmax(head_logits(model, hidden), dim=-1).gather(1, picked[:, None]).squeeze(1)
    return SequenceLogps(*_gather_by_sequence(token, seq_index[mask], n), int(mask.sum()))


def last_token_hidden(model, inputs: dict) -> torch.Tensor:
    """The final hidden state at each sequence's last real token, (n, hidden), in sequence order."""
    batch = model_inputs(inputs)
    hidden = final_hidden(model, batch)
    if "attention_mask" in batch:
        last = batch["attention_mask"].sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    ends = torch.tensor(example_bounds(batch["position_ids"])[1:], device=hidden.device) - 1
    return hidden[0, ends]
