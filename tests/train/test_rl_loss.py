"""The PPO and GRPO loss formulas against values worked out by hand (see the comments)."""

import math

import pytest
import torch

from tuneforge.train.rl_loss import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    grpo_token_losses,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_policy_losses,
    ppo_value_losses,
    reduce_token_losses,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(x, expected, abs=1e-6):
    expected = torch.tensor(expected, dtype=x.dtype)
    return x.shape == expected.shape and torch.allclose(x, expected, rtol=0, atol=abs)


def test_masked_mean_and_var():
    x, mask = t([1.0, 3.0], [5.0, 7.0]), t([1, 0], [1, 1])
    assert masked_mean(x, mask).item() == pytest.approx(13 / 3)  # (1 + 5 + 7) / 3
    assert close(masked_mean(x, mask, dim=-1), [1.0, 6.0])  # 1 / 1, (5 + 7) / 2
    # mean 13/3; squared deviations (10/3)^2 + (2/3)^2 + (8/3)^2 = 168/9; unbiased: / (3 - 1)
    assert masked_var(x, mask).item() == pytest.approx(28 / 3, abs=1e-5)
    assert masked_var(t([2.0, 9.0]), t([1, 0])).item() == 0.0  # one entry: no Bessel correction, no nan


def test_masked_whiten():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    # mean 2, unbiased var (1 + 0 + 1) / 2 = 1: (x - 2) / 1, padding 0
    assert close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], abs=1e-5)
    assert close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], abs=1e-5)
    # var 4 (x = 2, 4, 6): (x - 4) / 2
    assert close(masked_whiten(t([2.0, 4.0, 6.0]), t([1, 1, 1]).bool()), [[-1.0, 0.0, 1.0]], abs=1e-5)


def test_gae_one_row():
    # gamma 0.9, lam 0.95 (gamma lam = 0.855), rewards 0 0 1, values 0.5 0.6 0.7
    # t=2: delta = 1 - 0.7 = 0.3                           A = 0.3
    # t=1: delta = 0.9 x 0.7 - 0.6 = 0.03                  A = 0.03 + 0.855 x 0.3 = 0.2865
    # t=0: delta = 0.9 x 0.6 - 0.5 = 0.04                  A = 0.04 + 0.855 x 0.2865 = 0.2849575
    advantages, returns = gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=0.9, lam=0.95)
    assert close(advantages, [[0.2849575, 0.2865, 0.3]])
    assert close(returns, [[0.7849575, 0.8865, 1.0]])  # A + V


def test_gae_padded_row():
    # row 1 is real at t=0,1 only; its reward 5 and value 9 at t=2 are padding junk and must not be used
    # t=1: delta = 2 + 0 (no bootstrap past the end) - 0.5 = 1.5     A = 1.5
    # t=0: delta = 0.9 x 0.5 - 1.0 = -0.55                           A = -0.55 + 0.855 x 1.5 = 0.7325
    rewards, values = t([0.0, 0.0, 1.0], [0.0, 2.0, 5.0]), t([0.5, 0.6, 0.7], [1.0, 0.5, 9.0])
    values.requires_grad_(True)
    advantages, returns = gae(rewards, values, t([1, 1, 1], [1, 1, 0]), gamma=0.9, lam=0.95)
    assert close(advantages, [[0.2849575, 0.2865, 0.3], [0.7325, 1.5, 0.0]])
    assert close(returns, [[0.7849575, 0.8865, 1.0], [1.7325, 2.0, 0.0]])
    assert not advantages.requires_grad and not returns.requires_grad


def test_gae_without_discount_is_reward_to_go_minus_value():
    # rewards 1 2 3: to go 6 5 3; minus values 0.5 1 1.5
    advantages, returns = gae(t([1.0, 2.0, 3.0]), t([0.5, 1.0, 1.5]), t([1, 1, 1]), gamma=1.0, lam=1.0)
    assert close(advantages, [[5.5, 4.0, 1.5]]) and close(returns, [[6.0, 5.0, 3.0]])
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    mask = (torch.arange(6) < torch.tensor([[6], [3], [1], [4]])).float()
    to_go = (rewards * mask).flip(-1).cumsum(-1).flip(-1)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, (to_go - values) * mask, atol=1e-5)
    assert torch.allclose(returns, to_go * mask, atol=1e-5)


def test_kl_estimators():
    # d = logp - ref = +1 and -1
    logp, ref = t(-1.0, -2.0), t(-2.0, -1.0)
    assert close(kl_penalty(logp, ref, "k1"), [1.0, -1.0])
    assert close(kl_penalty(logp, ref, "abs"), [1.0, 1.0])
    assert close(kl_penalty(logp, ref, "k2"), [0.5, 0.5])  # 0.5 d^2
    assert close(kl_penalty(logp, ref, "mse"), [0.5, 0.5])
    # exp(-d) + d - 1: e^-1 + 1 - 1 and e^1 - 1 - 1
    assert close(kl_penalty(logp, ref, "k3"), [math.exp(-1), math.e - 2])
    assert close(kl_penalty(logp, ref, "low_var_kl"), [math.exp(-1), math.e - 2])
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logp, ref, "k4")


def test_k3_is_non_negative_and_zero_at_equality():
    torch.manual_seed(0)
    logp, ref = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert kl_penalty(logp, ref, "k3").min() >= 0
    assert kl_penalty(logp, logp, "k3").abs().max() == 0


def test_ppo_policy_losses():
    # clip 0.2; ratios 1.1 (inside), 1.5 (above), 0.5 (below), each with A = +2 and A = -2
    ratio = t(1.1, 1.5, 0.5, 1.1, 1.5, 0.5)
    adv = t(2.0, 2.0, 2.0, -2.0, -2.0, -2.0)
    logp = ratio.log().requires_grad_(True)
    losses, clipped = ppo_policy_losses(logp, torch.zeros(6), adv, clip=0.2)
    # max(-A r, -A clamp(r)):
    #   A=+2: max(-2.2, -2.2), max(-3.0, -2.4) clipped, max(-1.0, -1.6)
    #   A=-2: max( 2.2,  2.2), max( 3.0,  2.4),         max( 1.0,  1.6) clipped
    assert close(losses, [-2.2, -2.4, -1.0, 2.2, 3.0, 1.6], abs=1e-5)
    assert clipped.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert clipped.mean().item() == pytest.approx(2 / 6)  # clip fraction
    # where clipped the gradient vanishes; elsewhere d(-A r)/d logp = -A r
    losses.sum().backward()
    assert close(logp.grad, [-2.2, 0.0, -1.0, 2.2, 3.0, 0.0], abs=1e-5)


def test_ppo_value_losses():
    # old value 1, return 2, clip 0.2, so the clipped value is within 0.8 .. 1.2
    # v=1.5: max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64) clipped;  v=1.1: both 0.81
    # v=2.5: max(0.25, (1.2-2)^2 = 0.64) clipped;                  v=0.5: max(2.25, (0.8-2)^2 = 1.44)
    losses, clipped = ppo_value_losses(t(1.5, 1.1, 2.5, 0.5), torch.ones(4), torch.full((4,), 2.0), 0.2)
    assert close(losses, [0.32, 0.405, 0.32, 1.125], abs=1e-5)  # 0.5 x the max
    assert clipped.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_entropy_from_logits():
    uniform = torch.full((2, 3, 7), 4.0, dtype=torch.bfloat16)
    entropy = entropy_from_logits(uniform)
    assert entropy.dtype == torch.float32 and entropy.shape == (2, 3)
    assert torch.allclose(entropy, torch.full((2, 3), math.log(7)))
    # probabilities 1/4, 3/4: -(0.25 ln 0.25 + 0.75 ln 0.75)
    assert entropy_from_logits(t(0.0, math.log(3))).item() == pytest.approx(0.5623351446, abs=1e-6)


def test_kl_controllers():
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 256)
    assert fixed.value == 0.05
    adaptive = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # kl 9: error 9/6 - 1 = 0.5, clipped to 0.2; x (1 + 0.2 x 256 / 10000) = 1.00512
    adaptive.update(9.0, 256)
    assert adaptive.value == pytest.approx(0.100512)
    # kl 5.4: error 0.9 - 1 = -0.1; x (1 - 0.1 x 1000 / 10000) = 0.99
    adaptive.update(5.4, 1000)
    assert adaptive.value == pytest.approx(0.100512 * 0.99)
    resumed = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(adaptive.state_dict())
    assert resumed.value == adaptive.value
    fixed_resumed = FixedKLController(1.0)
    fixed_resumed.load_state_dict(fixed.state_dict())
    assert fixed_resumed.value == 0.05


def test_group_advantages():
    # groups (1, 2, 3): mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; (5, 5, 5): std 0 -> advantage 0
    rewards = t(1.0, 2.0, 3.0, 5.0, 5.0, 5.0)
    advantages, std = group_advantages(rewards, 3)
    assert close(advantages, [-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0])
    assert close(std, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    unscaled, _ = group_advantages(rewards, 3, scale=False)
    assert close(unscaled, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # (0, 4): mean 2, std sqrt((4 + 4) / 1) = sqrt 8
    advantages, std = group_advantages(t(0.0, 4.0), 2)
    assert close(advantages, [-2 / (8**0.5 + 1e-4), 2 / (8**0.5 + 1e-4)])
    assert close(std, [8**0.5, 8**0.5])
    with pytest.raises(ValueError):
        group_advantages(t(1.0, 2.0, 3.0, 4.0, 5.0), 2)


def test_grpo_loss_at_ratio_one_is_minus_advantage():
    logp = t([-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5])
    losses, clipped = grpo_token_losses(logp, logp.clone(), t(0.5, -2.0), eps_low=0.2, eps_high=0.2)
    assert close(losses, [[-0.5] * 3, [2.0] * 3]) and clipped.sum() == 0


def test_grpo_asymmetric_clipping():
    # eps_low 0.2, eps_high 0.28: ratio kept within 0.8 .. 1.28; ratios 1.25, 1.5, 0.7, A = +1 / -1 per row
    ratio = t([1.25, 1.5, 0.7], [1.25, 1.5, 0.7])
    losses, clipped = grpo_token_losses(ratio.log(), torch.zeros(2, 3), t(1.0, -1.0), 0.2, 0.28)
    # A=+1: -min(1.25, 1.25), -min(1.5, 1.28) clipped, -min(0.7, 0.8)
    # A=-1: -min(-1.25, -1.25), -min(-1.5, -1.28), -min(-0.7, -0.8) clipped
    assert close(losses, [[-1.25, -1.28, -0.7], [1.25, 1.5, 0.8]], abs=1e-5)
    assert clipped.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    # with a symmetric 0.2, 1.25 is clipped too: -min(1.25, 1.2)
    symmetric, clipped = grpo_token_losses(ratio.log(), torch.zeros(2, 3), t(1.0, -1.0), 0.2, 0.2)
    assert symmetric[0, 0].item() == pytest.approx(-1.2) and clipped[0, 0] == 1


def test_grpo_kl_term():
    # ratio 1, A 0.5, d = logp - ref = 1: -0.5 + 0.1 x (e^-1 + 1 - 1)
    logp, ref = t([-1.0]), t([-2.0])
    losses, _ = grpo_token_losses(logp, logp, t(0.5), 0.2, 0.2, ref_logp=ref, beta=0.1)
    assert losses.item() == pytest.approx(-0.5 + 0.1 * math.exp(-1), abs=1e-6)
    assert grpo_token_losses(logp, logp, t(0.5), 0.2, 0.2, ref_logp=ref)[0].item() == -0.5  # beta 0
    assert grpo_token_losses(logp, logp, t(0.5), 0.2, 0.2, beta=0.1)[0].item() == -0.5  # no reference


# rows with 3, 1 and 3 real tokens (the 100s are padding): sums 6, 4, 21; means 2, 4, 7
LOSSES = t([1.0, 2.0, 3.0], [4.0, 100.0, 100.0], [5.0, 7.0, 9.0])
MASK = t([1, 1, 1], [1, 0, 0], [1, 1, 1])
EXPECTED = {"grpo": (13.0, 3),  # 2 + 4 + 7 over 3 sequences
            "dapo": (31.0, 7),  # 6 + 4 + 21 over 7 tokens
            "dr_grpo": (31 / 4, 3)}  # 31 / max_completion_length 4 over 3 sequences


@pytest.mark.parametrize("loss_type", sorted(EXPECTED))
def test_reduce_token_losses(loss_type):
    losses = LOSSES.clone().requires_grad_(True)
    total, items = reduce_token_losses(losses, MASK, loss_type, max_completion_length=4)
    assert total.item() == pytest.approx(EXPECTED[loss_type][0]) and items == EXPECTED[loss_type][1]
    assert isinstance(items, int) and total.requires_grad
    # micro-batches (row 0) and (rows 1, 2): summed totals over summed items give the whole batch's value
    parts = [reduce_token_losses(LOSSES[rows], MASK[rows], loss_type, 4) for rows in (slice(0, 1), slice(1, 3))]
    split = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    assert split.item() == pytest.approx(total.item() / items)


def test_reduce_token_losses_naive_micro_batch_mean_is_wrong_for_dapo():
    # what the split check guards against: averaging per-micro-batch means gives (6/3 + 25/4) / 2 = 4.125,
    # not the batch's 31/7 = 4.43, so the split above is uneven enough to tell the two apart
    parts = [reduce_token_losses(LOSSES[rows], MASK[rows], "dapo", 4) for rows in (slice(0, 1), slice(1, 3))]
    assert sum(p[0].item() / p[1] for p in parts) / 2 == pytest.approx(4.125)


def test_reduce_token_losses_rejects_bad_arguments():
    with pytest.raises(ValueError, match="grpo, dapo, dr_grpo"):
        reduce_token_losses(LOSSES, MASK, "mean", 4)
    with pytest.raises(ValueError, match="max_completion_length"):
        reduce_token_losses(LOSSES, MASK, "dr_grpo")


def test_non_finite_padding_does_not_leak():
    # padded positions may hold inf or nan (e.g. exp of a junk log-ratio); 0 x inf would give nan
    losses, mask = t([1.0, float("inf")], [3.0, float("nan")]), t([1, 0], [1, 0])
    assert reduce_token_losses(losses, mask, "dapo")[0].item() == 4.0  # 1 + 3
    assert reduce_token_losses(losses, mask, "grpo")[0].item() == 4.0  # 1/1 + 3/1
    assert masked_mean(losses, mask).item() == 2.0
    assert close(masked_whiten(losses, mask), [[-1 / 2**0.5, 0.0], [1 / 2**0.5, 0.0]], abs=1e-5)  # var 2
