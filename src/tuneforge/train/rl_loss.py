"""The loss formulas of the online RL stages (PPO and GRPO), as pure torch math.

Conventions: per-token tensors are (B, T) over response tokens, right-padded; `mask` (float or bool, same
shape) is 1 at real response tokens, a contiguous prefix of each row. Losses come back per token so the caller
chooses the reduction (see `reduce_token_losses`), which keeps gradient accumulation exact.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
KL_KINDS = ("k1", "abs", "k2", "mse", "k3", "low_var_kl")


def _select(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with padded entries zeroed, mask as x's dtype); `where` so junk (inf, nan) in padding cannot leak."""
    keep = mask.bool()
    return torch.where(keep, x, torch.zeros_like(x)), keep.to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over real entries only (padding would bias it towards 0); 0 where there are none."""
    x, m = _select(x, mask)
    return x.sum() / m.sum().clamp(min=1) if dim is None else x.sum(dim) / m.sum(dim).clamp(min=1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor, reduce=None) -> tuple[float, float]:
    """(mean, variance) over real entries, the variance unbiased (like torch.var) when there are at least
    two. `reduce` (sums a list of floats over processes) takes them over every process's entries, so two
    DDP processes whiten their buffers as one process with both would. Sums in float64: no gradient."""
    values = x.detach()[mask.bool()].double()
    sums = [float(values.sum()), float((values**2).sum()), float(values.numel())]
    total, squares, count = reduce(sums) if reduce is not None else sums
    mean = total / max(count, 1)
    spread = max(squares - count * mean**2, 0.0)
    return mean, spread / (count - 1) if count > 1 else spread / max(count, 1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Variance over real entries, unbiased (like torch.var) when there are at least two of them."""
    return torch.tensor(masked_moments(x, mask)[1], dtype=x.dtype)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce=None) -> torch.Tensor:
    """Unit variance over real entries (zero mean unless shift_mean is False), padding 0: whitened
    advantages make the policy step independent of the reward scale. `reduce`: see masked_moments."""
    mean, var = masked_moments(x, mask, reduce)
    out = (x - mean) / (var + 1e-8) ** 0.5
    return _select(out if shift_mean else out + mean, mask)[0]


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """(advantages, returns) by generalised advantage estimation (Schulman et al. 2016), padding -> 0.

    delta_t = r_t + gamma V_{t+1} [t+1 real] - V_t,  A_t = delta_t + gamma lam A_{t+1},  returns = A + V.
    The bootstrap stops at the last real token: the response ends there. No gradient: these are targets.
    """
    rewards, m = _select(rewards.detach(), mask)
    values = _select(values.detach(), mask)[0]
    advantages = torch.zeros_like(rewards)
    next_value = next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        next_value = values[:, t]  # already 0 at padding, so the step before a pad does not bootstrap
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * m


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled by the policy (Schulman's k1/k2/k3).

    k1 is unbiased but noisy and can be negative; k2 (mse) is low variance but biased; k3 (low_var_kl),
    exp(-d) + d - 1 with d = logp - ref_logp, is unbiased, low variance and never negative.
    """
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind in ("k2", "mse"):
        return 0.5 * diff**2
    if kind in ("k3", "low_var_kl"):
        return torch.exp(-diff) + diff - 1
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")


def ppo_policy_losses(logp, old_logp, advantages, clip: float):
    """(per-token loss, clipped indicator) of the PPO clipped surrogate (Schulman et al. 2017).

    Taking the max of the two negated terms is the pessimistic bound: moving the ratio beyond 1 +- clip
    in the advantage's direction earns nothing, so one batch cannot push the policy far.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def ppo_value_losses(values, old_values, returns, clip_value: float):
    """(per-token loss, clipped indicator) of the clipped value loss: 0.5 max of the two squared errors.

    Clipping the value change around the rollout's values keeps the critic from jumping on one batch.
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    unclipped, clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy per position, logsumexp(l) - sum softmax(l) l, in float32 (bf16 loses it over a vocabulary)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


class FixedKLController:
    """A constant KL coefficient, with the adaptive controller's interface so the trainer need not care."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:  # nothing to adapt
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Steers the KL coefficient so the measured KL tracks `target` (Ziegler et al. 2019); the error is
    clipped to +-20 % so one odd batch cannot swing it, and `horizon` sets how many steps a correction takes."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        super().__init__(init_kl_coef)
        self.target, self.horizon = float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4):
    """(advantages, group std per completion) for GRPO: reward minus its group's mean, over the std if scale.

    `rewards` holds consecutive groups of `group_size` completions of one prompt; the group mean replaces a
    learned critic as the baseline. The std is unbiased (as TRL); a group of equal rewards gets 0 advantage.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    std = grouped.std(dim=1) if group_size > 1 else torch.zeros_like(grouped[:, 0])
    advantages = rewards - grouped.mean(dim=1).repeat_interleave(group_size)
    std = std.repeat_interleave(group_size)
    if scale:
        advantages = advantages / (std + eps)
    return advantages, std


def grpo_token_losses(logp, old_logp, advantages, eps_low: float, eps_high: float, ref_logp=None,
                      beta: float = 0.0):
    """(per-token loss, clipped indicator) for GRPO; `advantages` (N,) is broadcast over each row's tokens.

    The clipped surrogate with separate lower and upper bounds (DAPO's clip-higher: a larger eps_high lets
    unlikely tokens grow, which keeps exploration), plus beta x the k3 KL to the reference when given.
    """
    adv = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    if beta and ref_logp is not None:
        loss = loss + beta * kl_penalty(logp, ref_logp, "k3")
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return loss, clipped.float()


def reduce_token_losses(token_loss, mask, loss_type: str, max_completion_length: int | None = None):
    """(total, items): summing both over micro-batches and dividing gives the whole batch's loss.

    grpo: mean over sequences of per-sequence token means (long answers weigh no more than short ones);
    dapo: mean over all tokens of the batch; dr_grpo: token sum / max_completion_length per sequence,
    which removes grpo's length bias. `total` keeps the graph; `items` is an int.
    """
    losses, m = _select(token_loss, mask)
    if loss_type == "grpo":
        return (losses.sum(-1) / m.sum(-1).clamp(min=1)).sum(), int(losses.shape[0])
    if loss_type == "dapo":
        return losses.sum(), int(m.sum().item())
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("dr_grpo needs max_completion_length")
        return losses.sum() / max_completion_length, int(losses.shape[0])
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
