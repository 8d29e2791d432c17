"""Per-token scores of sampled completions: log-probabilities, values and entropies.

A batch of rollouts is packed like any other (data.collator.pack_sequences: prompt + completion, the
completion supervised), so one forward pass gives the final hidden states and the LM head runs only at
completion positions, in chunks. Scores come back flat, one per completion token, in sequence order
(sequence 0's tokens, then sequence 1's, ...), with `sequence_index` saying whose each is; `rows` lays them
out as a right-padded (n, T) matrix for the per-sequence formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.value_head import score, value_head_of
from .forward import final_hidden, fused_head_weight, head_logits, model_inputs
from .loss import token_logprobs
from .rl_loss import entropy_from_logits
from ..labels import IGNORE


@dataclass
class TokenScores:
    logps: torch.Tensor  # (M,) float32
    sequence_index: torch.Tensor  # (M,) which sequence of the batch each token belongs to
    values: torch.Tensor | None = None  # (M,) the value head's estimate before each token
    entropy: torch.Tensor | None = None  # (M,) entropy of the next-token distribution (no gradient)


def completion_scores(model, batch: dict, temperature: float = 1.0, chunk_size: int = 1024,
                      values: bool = False, entropy: bool = False, workspace=None) -> TokenScores:
    """Scores at the batch's supervised positions. Log-probabilities are of the logits divided by
    `temperature`, the distribution the completions were sampled from; workspace: the caller's
    loss.LogitsWorkspace."""
    targets = batch["shift_labels"]
    mask = targets != IGNORE
    hidden = final_hidden(model, model_inputs(batch))[mask]
    picked = targets[mask]
    weight = fused_head_weight(model)
    if weight is not None:  # logits / T == (hidden / T) @ W.T for a plain linear head
        logps = token_logprobs(hidden / temperature if temperature != 1.0 else hidden, weight, picked, chunk_size,
                               workspace)
    else:
        logps = torch.log_softmax(head_logits(model, hidden) / temperature, dim=-1)
        logps = logps.gather(1, picked[:, None]).squeeze(1)
    out = TokenScores(logps, batch["sequence_index"][mask])
    if values:
        out.values = score(value_head_of(model), hidden)
    if entropy:
        out.entropy = _entropy(model, hidden.detach(), temperature, chunk_size)
    return out


@torch.no_grad()
def _entropy(model, hidden: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:
    parts = [entropy_from_logits(head_logits(model, hidden[a:a + chunk_size]) / temperature)
             for a in range(0, hidden.shape[0], chunk_size)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def rows(flat: torch.Tensor, sequence_index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, T) right-padded matrix of per-token values given in sequence order, and its mask. Keeps the
    gradient of `flat`."""
    counts = torch.bincount(sequence_index, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(flat.shape[0], device=flat.device) - starts[sequence_index]
    width = int(counts.max()) if n else 0
    out = flat.new_zeros((n, width)).index_put((sequence_index, column), flat)
    mask = torch.zeros((n, width), dtype=torch.bool, device=flat.device)
    mask[sequence_index, column] = True
    return out, mask
