"""Hand-computed checks of the paper's math: advantages, filtering, the k3 KL, clipping, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from rlreason import advantages as estimators
from rlreason.advantages import zero_std_groups
from rlreason.loss_agg import PaperLoss, SeqMeanTokenMean, SeqMeanTokenSumNorm, TokenMean, UpdateShape
from rlreason.rl import gradient_filter, kl_k3, policy_loss


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = estimators.grpo(rewards, group_size=4, eps=0.0)
    # group 1: mean 0.25, unbiased std sqrt(0.25) = 0.5 -> (0.75/0.5, -0.25/0.5 ...)
    assert adv[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    # group 2: all equal -> zero advantage (0/0 avoided by eps in practice; mean-centering gives 0)
    adv2 = estimators.grpo(rewards, group_size=4, eps=1e-4)
    assert adv2[4:].tolist() == [0.0, 0.0, 0.0, 0.0]
    unscaled = estimators.mean_only(rewards, group_size=4)
    assert unscaled[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_rloo_and_batch_std_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    # leave-one-out: 1 - 0/3 = 1, 0 - 1/3; group 2: 1 - 2/3 = 1/3, 0 - 1
    assert estimators.rloo(rewards, 4).tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3, 1 / 3, -1])
    # batch std of 4 ones and 4 zeros (unbiased): sqrt(8/7 * 0.25)
    scale = math.sqrt(0.25 * 8 / 7)
    expected = [0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75]
    assert estimators.batch_std(rewards, 4, eps=0.0).tolist() == pytest.approx([e / scale for e in expected])


def test_loss_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    shape = UpdateShape(rows=4, tokens=10, max_completion_tokens=5, micro_batch_size=2)
    # seq mean: (2 + 4) / 4 rows sampled
    agg = SeqMeanTokenMean()
    assert float(agg.numerator(per_token, mask, shape) / agg.denominator(shape)) == pytest.approx(1.5)
    # token mean: (1+2+3+4) / 10 tokens sampled
    agg = TokenMean()
    assert float(agg.numerator(per_token, mask, shape) / agg.denominator(shape)) == pytest.approx(1.0)
    assert TokenMean().denominator(UpdateShape(4, None, 5, 2)) is None  # unknown yet: rescaled later
    # Dr. GRPO: 10 / (4 rows x 5 tokens)
    agg = SeqMeanTokenSumNorm()
    assert float(agg.numerator(per_token, mask, shape) / agg.denominator(shape)) == pytest.approx(0.5)
    # the paper's: this micro-batch 10 / (2 rows x 5), over ceil(4 / 2) = 2 micro-batches
    agg = PaperLoss()
    assert float(agg.numerator(per_token, mask, shape) / agg.denominator(shape)) == pytest.approx(0.5)


def test_sequence_ratio_is_clipped_per_sequence_by_hand():
    # one row of two tokens: log-ratios 0.2 and 0.0 -> sequence ratio exp(0.1); advantage 1; clip 0.05
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.2, 0.0]], requires_grad=True)
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(logp, mask, torch.tensor([1.0]), 1.0, old_logp=old, clip_eps_low=0.05,
                              clip_eps_high=0.05, ratio_level="sequence")
    assert float(loss) == pytest.approx(-1.05)  # clipped at 1 + 0.05 for the whole sequence
    assert stats.clipped_tokens == 2.0
    loss.backward()
    assert logp.grad.abs().sum() == 0  # clipped: no gradient
    # within the clip range the gradient is the ratio times the token mean of d logp
    logp2 = torch.tensor([[0.02, 0.0]], requires_grad=True)
    loss2, _ = policy_loss(logp2, mask, torch.tensor([1.0]), 1.0, old_logp=old, clip_eps_low=0.05,
                           clip_eps_high=0.05, ratio_level="sequence")
    loss2.backward()
    ratio = math.exp(0.01)
    assert float(loss2) == pytest.approx(-ratio)
    assert logp2.grad.tolist()[0] == pytest.approx([-ratio / 2, -ratio / 2])


def test_rollout_weights_scale_the_policy_term():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    weights = torch.tensor([[2.0, 0.0]])
    loss, _ = policy_loss(logp, torch.ones(1, 2), torch.tensor([1.0]), 1.0, token_weights=weights)
    loss.backward()
    assert logp.grad.tolist()[0] == pytest.approx([-1.0, 0.0])  # -A * w / (2 tokens)


def test_zero_std_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert zero_std_groups(rewards, 2).tolist() == [True, False, True]


def test_gradient_filter_drops_small_advantages_inclusive():
    adv = torch.tensor([0.0, 0.1, -0.1, 0.1001, -2.0])
    assert gradient_filter(adv, enabled=True, threshold=0.1).tolist() == [False, False, False, True, True]
    assert gradient_filter(adv, enabled=True, threshold=0.0).tolist() == [False, True, True, True, True]
    assert gradient_filter(adv, enabled=False, threshold=0.1).all()


def test_kl_k3_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.2)])
    # r = ref/p: 0.5 -> 0.5 - ln 0.5 - 1 ; 1 -> 0
    assert kl_k3(logp, ref).tolist() == pytest.approx([0.5 - math.log(0.5) - 1.0, 0.0])
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_on_policy_loss_value_and_gradient():
    """On-policy the ratio is 1, so the loss is -mean_seq(mean_tok(A)) and d/dlogp = -A/(len*N)."""
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = policy_loss(logp, mask, adv, denominator=4)
    assert float(loss) == pytest.approx((-2.0 + 1.0) / 4)
    loss.backward()
    expected = torch.tensor([[-2.0 / 2 / 4, -2.0 / 2 / 4, 0.0], [1.0 / 4, 0.0, 0.0]])
    assert torch.allclose(logp.grad, expected)
    assert stats.tokens == 3 and stats.clipped_tokens == 0


def test_clipping_by_hand():
    """Ratio 1.5 with A>0 is clipped at 1.2 (no gradient); ratio 0.5 with A>0 is not clipped."""
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(logp, mask, torch.tensor([1.0]), denominator=1, old_logp=old, clip_eps_low=0.2, clip_eps_high=0.2)
    assert float(loss) == pytest.approx(-(1.2 + 0.5) / 2)
    loss.backward()
    assert logp.grad[0, 0] == 0.0  # clipped: no gradient
    assert float(logp.grad[0, 1]) == pytest.approx(-0.5 / 2)  # d(-ratio)/dlogp = -ratio, / tokens
    assert stats.clipped_tokens == 1
    # negative advantage: ratio 0.5 < 0.8 is clipped, ratio 1.5 is not
    loss_neg, stats_neg = policy_loss(logp.detach(), mask, torch.tensor([-1.0]), 1, old_logp=old)
    assert float(loss_neg) == pytest.approx((1.5 + 0.8) / 2)
    assert stats_neg.clipped_tokens == 1


def test_kl_term_added_with_beta():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    mask = torch.ones(1, 1)
    loss, stats = policy_loss(logp, mask, torch.tensor([0.0]), 1, ref_logp=ref, beta=0.04)
    expected_kl = 0.5 - math.log(0.5) - 1.0
    assert float(loss) == pytest.approx(0.04 * expected_kl)
    assert stats.kl_sum == pytest.approx(expected_kl)
    loss_off, stats_off = policy_loss(logp, mask, torch.tensor([0.0]), 1, ref_logp=ref, beta=0.0)
    assert float(loss_off) == 0.0 and stats_off.kl_sum == 0.0


def test_denominator_makes_split_invariant():
    """Two halves with the full-batch denominator sum to the whole-batch loss."""
    torch.manual_seed(0)
    logp = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(6)
    whole, _ = policy_loss(logp, mask, adv, denominator=6)
    halves = sum(policy_loss(logp[s], mask[s], adv[s], denominator=6)[0] for s in (slice(0, 2), slice(2, 6)))
    assert float(whole) == pytest.approx(float(halves), abs=1e-6)


def test_pass_at_k_unbiased_estimator_by_hand():
    from rlreason.rl import pass_at_k

    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))  # 1 - C(3,2)/C(4,2) = 0.5
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # C(3,3)/C(5,3) = 1/10
    assert pass_at_k(3, 2, 2) == 1.0  # fewer wrong samples than k: some draw is always right
