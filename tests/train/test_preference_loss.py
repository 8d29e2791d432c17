"""Each reward/preference loss against values worked out by hand (see the comments)."""

import math

import pytest
import torch

from tuneforge.train.preference_loss import dpo_loss, kto_kl_estimate, kto_loss, pairwise_reward_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_pairwise_reward_loss():
    # -log s(2 - 0.5) = log(1 + e^-1.5)
    assert pairwise_reward_loss(t(2.0), t(0.5)).item() == pytest.approx(0.2014132779827524, abs=1e-6)
    # equal scores: log 2
    assert pairwise_reward_loss(t(1.0), t(1.0)).item() == pytest.approx(math.log(2), abs=1e-6)


# chosen -10, rejected -12, reference -11 for both, beta 0.1: z = (-10 + 11) - (-12 + 11) = 2, beta z = 0.2
CASE = dict(chosen=t(-10.0), rejected=t(-12.0), ref_chosen=t(-11.0), ref_rejected=t(-11.0), beta=0.1)


def test_sigmoid_dpo():
    losses, chosen_rewards, rejected_rewards = dpo_loss("sigmoid", **CASE)
    assert losses.item() == pytest.approx(0.5981388693815918, abs=1e-6)  # log(1 + e^-0.2)
    assert chosen_rewards.item() == pytest.approx(0.1) and rejected_rewards.item() == pytest.approx(-0.1)
    # label smoothing 0.1: 0.9 log(1 + e^-0.2) + 0.1 log(1 + e^0.2)
    smoothed, *_ = dpo_loss("sigmoid", **CASE, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.6181388693815918, abs=1e-6)


def test_policy_equal_to_reference_gives_ln2():
    losses, chosen_rewards, rejected_rewards = dpo_loss("sigmoid", t(-3.0, -7.0), t(-5.0, -1.0),
                                                        t(-3.0, -7.0), t(-5.0, -1.0), beta=0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert chosen_rewards.abs().max() == 0 and rejected_rewards.abs().max() == 0


def test_hinge_and_ipo():
    assert dpo_loss("hinge", **CASE)[0].item() == pytest.approx(0.8, abs=1e-6)  # max(0, 1 - 0.2)
    assert dpo_loss("hinge", **{**CASE, "beta": 1.0})[0].item() == 0.0  # max(0, 1 - 2)
    assert dpo_loss("ipo", **CASE)[0].item() == pytest.approx(9.0, abs=1e-5)  # (2 - 1/(2 x 0.1))^2


def test_orpo():
    # average log-probabilities log 0.5 and log 0.25: log odds 0 and log(1/3), difference log 3;
    # loss = -log 0.5 + 0.1 x -log s(log 3) = log 2 + 0.1 x log(4/3)
    losses, chosen_rewards, _ = dpo_loss("orpo", t(math.log(0.5)), t(math.log(0.25)), beta=0.1)
    assert losses.item() == pytest.approx(math.log(2) + 0.1 * math.log(4 / 3), abs=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.1 * math.log(0.5), abs=1e-6)


def test_simpo():
    # -log s(2 x (-1 + 2) - 0.5) = log(1 + e^-1.5)
    losses, *_ = dpo_loss("simpo", t(-1.0), t(-2.0), beta=2.0, simpo_gamma=0.5)
    assert losses.item() == pytest.approx(0.2014132779827524, abs=1e-6)


def test_kto():
    # ratios +1 (desirable) and -1 (undesirable), kl 0.5, beta 1, weights 1 and 2:
    # 1 - s(1 - 0.5) and 2 (1 - s(0.5 + 1))
    losses, rewards = kto_loss(t(-5.0, -5.0), t(-6.0, -4.0), torch.tensor([True, False]), torch.tensor(0.5),
                               beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    assert losses.tolist() == pytest.approx([1 - 1 / (1 + math.exp(-0.5)), 2 * (1 - 1 / (1 + math.exp(-1.5)))],
                                            abs=1e-6)
    assert rewards.tolist() == pytest.approx([1.0, -1.0])
    # at the start (policy = reference, kl = 0) every loss is 1 - s(0) = 0.5
    start, _ = kto_loss(t(-5.0, -2.0), t(-5.0, -2.0), torch.tensor([True, False]), torch.tensor(0.0))
    assert start.tolist() == [0.5, 0.5]


def test_kto_kl_estimate_is_clamped_and_detached():
    policy = t(-3.0, -5.0).requires_grad_(True)
    assert kto_kl_estimate(policy, t(-4.0, -4.0)).item() == 0.0  # mean(1, -1) = 0
    assert kto_kl_estimate(t(-3.0, -5.0), t(-2.0, -4.0)).item() == 0.0  # mean -1, clamped at 0
    estimate = kto_kl_estimate(t(-3.0, -3.0).requires_grad_(True), t(-4.0, -4.0))
    assert estimate.item() == 1.0 and not estimate.requires_grad
