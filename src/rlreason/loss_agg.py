"""Loss aggregation: how per-token losses become the update's loss (``algorithm.loss_agg``).

An aggregation splits the loss into a micro-batch's ``numerator`` and the update's
``denominator``; the learner back-propagates numerator / denominator per micro-batch, so the
accumulated gradient is the update's whatever the split. The denominator reads the update's
global counts (``UpdateShape``: rows and completion tokens *sampled* for the update on every
process, before any filter, so a filtered row counts exactly like a row whose gradient is zero).
Where a count is not known before the first backward (``tokens`` under the interleaved GRPO
schedule, which samples as it goes), the learner back-propagates the numerators alone and scales
the accumulated gradient by 1 / denominator once the count is known, before clipping.

A class of your own with these two methods plugs in by import path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class UpdateShape:
    """Global counts of one optimizer update (None: not known yet)."""

    rows: int | None  # rows sampled for the update, all processes, before filtering
    tokens: int | None  # completion tokens of those rows
    max_completion_tokens: int  # task.max_completion_tokens
    micro_batch_size: int  # trainer.micro_batch_size (rows per forward on one process)


class LossAggregation(ABC):
    """Interface: ``numerator`` of one micro-batch, ``denominator`` of the update (None: unknown yet).

    ``sampled_micro_batches``: where the value depends on the split, True cuts the micro-batches
    from the update's rows as sampled (consecutive ``micro_batch_size`` rows, before the selector
    dropped any; each keeps the rows of its own that survived), as the authors' trainer does. False
    (every split-invariant mode) lets the learner cut the kept rows as it likes (by length)."""

    sampled_micro_batches: ClassVar[bool] = False

    @abstractmethod
    def numerator(self, per_token: torch.Tensor, mask: torch.Tensor, shape: UpdateShape) -> torch.Tensor:
        """The micro-batch's part of the loss before division (per_token, mask: [rows, tokens])."""

    @abstractmethod
    def denominator(self, shape: UpdateShape) -> float | None:
        """What the update's numerators are divided by; None while a count it needs is unknown."""


class SeqMeanTokenMean(LossAggregation):
    """Each sequence's mean over its tokens, summed over rows, over the rows sampled (the default)."""

    def numerator(self, per_token, mask, shape):
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()

    def denominator(self, shape):
        return shape.rows


class TokenMean(LossAggregation):
    """Token sum over the update's completion tokens (DAPO; TRL's default ``loss_type``): every
    token weighs the same, so long completions weigh more."""

    def numerator(self, per_token, mask, shape):
        return (per_token * mask).sum()

    def denominator(self, shape):
        return None if shape.tokens is None else max(1, shape.tokens)


class SeqMeanTokenSumNorm(LossAggregation):
    """Token sum over (rows sampled x max completion tokens) (Dr. GRPO): a constant normaliser, so
    no length bias from dividing by a sequence's own length."""

    def numerator(self, per_token, mask, shape):
        return (per_token * mask).sum()

    def denominator(self, shape):
        return shape.rows * shape.max_completion_tokens


class PaperLoss(LossAggregation):
    """The authors' code (TRL's ``dr_grpo`` in their fork): per micro-batch of sampled rows, the
    token sum over (the rows the filter kept in that micro-batch x max completion tokens), averaged
    over the update's micro-batches (its sampled rows / micro-batch size, the gradient-accumulation
    count). A micro-batch the filter thinned takes a larger step, so the gradient depends on the
    split; the invariance tests exempt it."""

    sampled_micro_batches = True

    def numerator(self, per_token, mask, shape):
        rows = per_token.shape[0]
        return (per_token * mask).sum() / (rows * shape.max_completion_tokens)

    def denominator(self, shape):
        return -(-shape.rows // shape.micro_batch_size)
