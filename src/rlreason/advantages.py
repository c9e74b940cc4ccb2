"""Advantage estimators: ``algorithm.advantage`` names one (or a function of your own with this signature).

Each takes the rewards of a batch laid out group by group (``[N]``, N a multiple of
``group_size``) and returns one advantage per row. The batch is the step's whole batch over every
process (the trainer gathers it), so ``batch_std`` does not depend on the process count; under the
interleaved (GRPO) schedule it is the micro-batch of groups sampled together.
"""

from __future__ import annotations

import torch


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    return rewards.view(-1, group_size)


def grpo(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps), the unbiased std (GRPO, the paper)."""
    grouped = _groups(rewards, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    return (centered / (grouped.std(dim=1, keepdim=True) + eps)).reshape(-1)


def mean_only(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """r - group mean (Dr. GRPO: no std scaling, which over-weights nearly solved groups)."""
    grouped = _groups(rewards, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)


def rloo(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """r - mean of the *other* samples of the group (RLOO: an unbiased baseline);
    equals G/(G-1) times ``mean_only``."""
    if group_size < 2:
        raise ValueError("rloo needs at least 2 samples per group")
    grouped = _groups(rewards, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


def batch_std(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (std of the whole batch's rewards + eps) (Hu et al., REINFORCE++-style
    normalisation: a group's scale no longer depends on its own spread)."""
    grouped = _groups(rewards, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    scale = rewards.std() if rewards.numel() > 1 else torch.tensor(0.0)
    return (centered / (scale + eps)).reshape(-1)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups have identical rewards (every advantage zero: no learning signal)."""
    grouped = rewards.view(-1, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)
