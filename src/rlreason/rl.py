"""The paper's math: gradient filtering, the k3 KL, the one policy loss and pass@k (advantages:
``rlreason.advantages``; loss aggregation: ``rlreason.loss_agg``).

Loss normalisation: each sequence's per-token losses are averaged over its own tokens, and the
sum over sequences is divided by a ``denominator`` fixed before any split: the number of rows
*sampled* for the update (before filtering). So the loss and its gradient are the same whether
a batch is taken whole or in micro-batches, and a filtered row counts exactly like a row whose
gradient is zero: filtering with threshold 0 changes nothing when the KL is off. (Dividing by
the rows kept instead would scale the step up as more rows are filtered.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def gradient_filter(advantages: torch.Tensor, enabled: bool, threshold: float) -> torch.Tensor:
    """Rows to keep: with filtering on, drop |advantage| <= threshold before any forward pass."""
    if not enabled:
        return torch.ones_like(advantages, dtype=torch.bool)
    return advantages.abs() > threshold


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(r - p) - (r - p) - 1 >= 0."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


@dataclass
class LossStats:
    """Sums over tokens, so micro-batches add up exactly; the trainer divides at the end."""

    tokens: float = 0.0
    kl_sum: float = 0.0
    clipped_tokens: float = 0.0

    def __iadd__(self, other: "LossStats") -> "LossStats":
        self.tokens += other.tokens
        self.kl_sum += other.kl_sum
        self.clipped_tokens += other.clipped_tokens
        return self


def policy_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    denominator: float,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    ratio_level: str = "token",
    token_weights: torch.Tensor | None = None,
    aggregation: Any = None,
    shape: Any = None,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped policy-gradient loss with an optional k3 KL penalty, for every algorithm.

    logp, old_logp, ref_logp, mask: [B, T] per completion token; advantages: [B].
    old_logp None means on-policy: the ratio is exp(logp - logp.detach()) = 1 with the exact
    policy gradient, and nothing is clipped. SFT is advantages = 1 with old_logp None.
    ratio_level "sequence" (GSPO): one ratio per row, exp of the mean token log-ratio, clipped per row.
    token_weights: rollout-correction weights on the policy term (no gradient).
    aggregation/shape: a ``rlreason.loss_agg`` aggregation and the update's counts; without them the
    default (each row's token mean, summed, over ``denominator``).
    """
    old = logp.detach() if old_logp is None else old_logp
    adv = advantages.unsqueeze(-1)
    if ratio_level == "sequence":
        lengths = mask.sum(-1).clamp(min=1.0)
        seq_log_ratio = ((logp - old) * mask).sum(-1) / lengths
        ratio = torch.exp(seq_log_ratio).unsqueeze(-1).expand_as(logp)
    else:
        ratio = torch.exp(logp - old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights
    stats = LossStats(tokens=float(mask.sum()))
    if old_logp is not None:
        stats.clipped_tokens = float(((clipped > unclipped).float() * mask).sum())
    if ref_logp is not None and beta > 0:
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + beta * kl
        stats.kl_sum = float((kl.detach() * mask).sum())
    if aggregation is None:
        per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sequence.sum() / denominator, stats
    return aggregation.numerator(per_token, mask, shape) / denominator, stats


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
    as a product so it stays exact for large n."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))
