"""The math that is easy to get silently wrong: micro-batching and filtering must not change the gradient."""

from __future__ import annotations

import pytest
import torch

from conftest import compose
from rlreason.learner import PhaseTimer, StepTotals
from rlreason.trainer import Trainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    cfg = compose("debug=true", "logger=none", "kl=on", "filter=off", "algorithm=dash")
    return Trainer(cfg, tmp_path_factory.mktemp("run"))


def _gradient(trainer: Trainer, rollout, micro_batch_size: int, filter_enabled: bool, threshold: float, beta: float):
    trainer.cfg.trainer.micro_batch_size = micro_batch_size
    trainer.cfg.filter.enabled, trainer.cfg.filter.threshold = filter_enabled, threshold
    trainer.cfg.kl.beta = beta
    from rlreason.rl import gradient_filter

    rollout.keep = gradient_filter(rollout.advantages, filter_enabled, threshold)
    rows = rollout.rows()
    trainer.learner.attach_logprobs(rows, PhaseTimer(), need_old=False)
    trainer.policy.zero_grad(set_to_none=True)
    trainer.learner.accumulate_gradients(rows, len(rollout.rewards), PhaseTimer(), StepTotals())
    grads = [p.grad.flatten() for p in trainer.policy.parameters() if p.grad is not None]
    return torch.cat(grads) if grads else torch.zeros(0)


def _rollout(trainer: Trainer):
    torch.manual_seed(1)
    examples = trainer.task.train_batch(0, trainer.cfg.trainer.prompts_per_step)
    rollout = trainer.rollouts.sample_and_score(examples, PhaseTimer(), None)
    # A varied reward pattern, so advantages are non-trivial whatever the tiny model's accuracy.
    rollout.rewards = torch.tensor([float(i % 3 == 0) for i in range(len(rollout.rewards))])
    g = trainer.cfg.trainer.group_size
    from rlreason.advantages import grpo as group_advantages

    rollout.advantages = group_advantages(rollout.rewards, g)
    return rollout


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gradient_same_whole_or_micro_batched(trainer, beta):
    rollout = _rollout(trainer)
    whole = _gradient(trainer, rollout, len(rollout.rewards), False, 0.0, beta)
    for micro in (1, 3, 5):
        split = _gradient(trainer, rollout, micro, False, 0.0, beta)
        assert torch.allclose(whole, split, atol=1e-6, rtol=1e-4), f"micro_batch_size={micro}"
    assert whole.abs().sum() > 0


def test_filter_threshold_zero_changes_nothing(trainer):
    rollout = _rollout(trainer)
    # make one group all-equal so threshold 0 really drops rows
    g = trainer.cfg.trainer.group_size
    rollout.rewards[:g] = 1.0
    from rlreason.advantages import grpo as group_advantages

    rollout.advantages = group_advantages(rollout.rewards, g)
    unfiltered = _gradient(trainer, rollout, 4, False, 0.0, 0.0)
    filtered = _gradient(trainer, rollout, 4, True, 0.0, 0.0)
    assert int(rollout.keep.sum()) < len(rollout.rewards)  # some rows really were dropped
    assert torch.allclose(unfiltered, filtered, atol=1e-7)


def test_filtered_rows_are_never_forwarded(trainer):
    rollout = _rollout(trainer)
    calls = []
    handle = trainer.policy.register_forward_hook(lambda m, args, kwargs_out: calls.append(1))
    try:
        grad = _gradient(trainer, rollout, 1, True, 10.0, 0.0)  # threshold above every |advantage|
    finally:
        handle.remove()
    assert calls == [] and grad.numel() == 0
