"""The loss formulas of the reward and preference stages, on per-sequence log-probabilities or scores.

Every function returns per-item losses (one per pair or example) so the caller can sum them and divide by
the item count of the whole accumulated batch; rewards are returned detached, for logging.

Notation: `chosen`, `rejected` are the policy's log-probabilities of the two responses (summed over their
tokens, or averaged per token for ipo, orpo and simpo, as the caller decides); `ref_*` the reference
model's; beta is `pref_beta`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AVERAGED = ("ipo", "orpo", "simpo")  # losses defined on per-token average log-probabilities


def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward model (Bradley-Terry): -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)


def dpo_loss(kind: str, chosen, rejected, ref_chosen=None, ref_rejected=None, beta: float = 0.1,
             label_smoothing: float = 0.0, simpo_gamma: float = 0.5):
    """(losses, chosen_rewards, rejected_rewards) for pref_loss `kind`.

    sigmoid (DPO):  -(1-e) log s(b z) - e log s(-b z),   z = (chosen - ref_chosen) - (rejected - ref_rejected)
    hinge:          max(0, 1 - b z)
    ipo:            (z - 1/(2b))^2, on average log-probabilities
    orpo:           -chosen + b * -log s(log odds(chosen) - log odds(rejected)),  odds(p) = p / (1 - p)
    simpo:          -log s(b (chosen - rejected) - gamma)
    Rewards are b x (policy - reference) log-probabilities, or b x policy log-probabilities where there is
    no reference (orpo, simpo).
    """
    if kind in ("orpo", "simpo"):
        if kind == "orpo":
            log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
            losses = -chosen - beta * F.logsigmoid(log_odds)
        else:
            losses = -F.logsigmoid(beta * (chosen - rejected) - simpo_gamma)
        return losses, (beta * chosen).detach(), (beta * rejected).detach()
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    z = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    elif kind == "hinge":
        losses = torch.relu(1 - beta * z)
    elif kind == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r}")
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def kto_loss(logps, ref_logps, desirable: torch.Tensor, kl: torch.Tensor, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """(losses, rewards) of KTO: with r = logps - ref_logps (summed over the response) and the batch's KL
    estimate kl (no gradient, at least 0),
        desirable:    w_d (1 - s(b (r - kl)))
        undesirable:  w_u (1 - s(b (kl - r)))
    """
    ratio = logps - ref_logps
    kl = kl.detach()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    return losses, (beta * ratio).detach()


def kto_kl_estimate(kl_logps, ref_kl_logps) -> torch.Tensor:
    """The KTO paper's estimate of KL(policy || reference): the mean log-ratio of responses paired with
    prompts they do not belong to, clamped at 0 and without gradient."""
    if kl_logps.numel() == 0:
        return kl_logps.new_zeros(())
    return (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
