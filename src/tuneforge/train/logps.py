"""Per-sequence log-probabilities and last-token scores of a batch of sequences.

A batch (see data.collator.pack_sequences) holds several sequences, padding-free in one row or padded,
with `shift_labels` (the next token at supervised positions, -100 elsewhere) and `sequence_index` (which
sequence each position belongs to). The LM head runs only at supervised positions, in chunks, as for SFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loss import token_logprobs
from .trainer import _NO_LOGITS, model_inputs, output_head


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
                   prefix: str = "") -> SequenceLogps:
    """Log-probabilities of the n sequences of a batch (keys with `prefix`, e.g. "kl_")."""
    targets = inputs[prefix + "shift_labels"]
    seq_index = inputs[prefix + "sequence_index"]
    batch = model_inputs(inputs, prefix)
    if sharded:  # the LM head is whole only inside the model's forward: let it compute the logits there
        positions = (targets != -100).any(dim=0).nonzero().flatten()
        logits = model(**batch, logits_to_keep=positions, use_cache=False).logits.float()
        picked, seqs = targets[:, positions], seq_index[:, positions]
        mask = picked != -100
        token = torch.log_softmax(logits[mask], dim=-1).gather(1, picked[mask][:, None]).squeeze(1)
        return SequenceLogps(*_gather_by_sequence(token, seqs[mask], n), int(mask.sum()))
    out = model(**batch, output_hidden_states=True, logits_to_keep=_NO_LOGITS, use_cache=False)
    mask = targets != -100
    hidden, picked = out.hidden_states[-1][mask], targets[mask]
    head, config = output_head(model)
    softcap = getattr(config, "final_logit_softcapping", None)
    if isinstance(head, torch.nn.Linear) and head.bias is None and not softcap:
        token = token_logprobs(hidden, head.weight, picked, chunk_size)
    else:  # odd heads (bias, softcap, adapters on the head): the plain way
        logits = head(hidden).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        token = torch.log_softmax(logits, dim=-1).gather(1, picked[:, None]).squeeze(1)
    return SequenceLogps(*_gather_by_sequence(token, seq_index[mask], n), int(mask.sum()))


def last_token_hidden(model, inputs: dict, prefix: str = "") -> torch.Tensor:
    """The final hidden state at each sequence's last real token, (n, hidden), in sequence order."""
    batch = model_inputs(inputs, prefix)
    out = model(**batch, output_hidden_states=True, logits_to_keep=_NO_LOGITS, use_cache=False)
    hidden = out.hidden_states[-1]
    if "attention_mask" in batch:
        last = batch["attention_mask"].sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([hidden.shape[1]])]) - 1
    return hidden[0, ends]
