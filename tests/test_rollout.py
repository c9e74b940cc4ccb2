"""The rollout parts by hand: overlong handling, DAPO's dynamic sampling, the rollout correction and
the sampler-trainer gap, on the debug trainer's real sampler, task and learner.

Rewards are scripted where a test needs a known pattern (``ScriptedRewards``: our Task interface
with rewards fixed per graded group), so the counts of rounds and samples can be written by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import compose
from rlreason.batching import make_batch, token_logprobs
from rlreason.learner import PhaseTimer, StepTotals, UpdateRows
from rlreason.metrics import read_metrics
from rlreason.tasks import Grade
from rlreason.trainer import Trainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    cfg = compose("debug=true", "logger=none", "kl=off", "filter=dynamic", "algorithm=dash")
    return Trainer(cfg, tmp_path_factory.mktemp("run"))


class ScriptedRewards:
    """The trainer's task, except that the k-th group graded gets ``patterns[k]`` as its rewards."""

    def __init__(self, task, patterns: list[list[float]], group_size: int):
        self.task, self.patterns, self.g = task, patterns, group_size
        self.graded_groups = 0

    def grade(self, completions, examples):
        rewards = []
        for _ in range(len(completions) // self.g):
            rewards += self.patterns[self.graded_groups]
            self.graded_groups += 1
        return [Grade(reward=r, correct=r >= 1) for r in rewards]

    def __getattr__(self, name):
        return getattr(self.task, name)


def test_soft_overlong_penalty_by_hand(trainer):
    """DAPO: 0 up to max_new_tokens - buffer, then linear to -1 at max_new_tokens."""
    trainer.cfg.sampler.max_new_tokens, trainer.cfg.algorithm.overlong_buffer = 64, 16
    penalty = trainer.rollouts.overlong_penalty
    assert [penalty(n) for n in (10, 48, 52, 56, 60, 64)] == pytest.approx([0, 0, -0.25, -0.5, -0.75, -1.0])
    trainer.cfg.algorithm.overlong_buffer = 0  # no buffer: only a completion cut at the limit loses a point
    assert [penalty(n) for n in (63, 64)] == [0.0, -1.0]


def test_soft_penalty_and_mask_in_a_rollout(trainer):
    examples = trainer.task.train_batch(0, 2)
    g = trainer.cfg.trainer.group_size
    try:
        trainer.cfg.sampler.max_new_tokens, trainer.cfg.algorithm.overlong_buffer = 6, 4
        trainer.cfg.algorithm.truncated = "soft_penalty"
        torch.manual_seed(0)
        graded = trainer.rollouts.sample_and_score(examples, PhaseTimer(), None)
        grades = trainer.task.grade(graded.completions.texts, [examples[i // g] for i in range(len(graded.rewards))])
        lengths = [len(c) for c in graded.completions.completion_ids]
        expected = [x.reward + max(-1.0, min(0.0, (6 - 4 - n) / 4)) for x, n in zip(grades, lengths)]
        assert graded.rewards.tolist() == pytest.approx(expected)
        assert any(n > 2 for n in lengths)  # some row really was penalised
        trainer.cfg.algorithm.truncated = "mask"  # truncated rows are left out of the loss, finished ones kept
        torch.manual_seed(0)
        masked = trainer.rollouts.sample_and_score(examples, PhaseTimer(), None)
        assert masked.keep.tolist() == masked.completions.finished and not all(masked.completions.finished)
        assert len(masked.rows()) == sum(masked.completions.finished)
    finally:
        trainer.cfg.sampler.max_new_tokens = trainer.cfg.task.max_completion_tokens
        trainer.cfg.algorithm.truncated, trainer.cfg.algorithm.overlong_buffer = "score", 16


@pytest.mark.parametrize(("rounds", "expect_rounds", "expect_samples", "expect_groups"), [
    # groups graded: 0 [1111] 1 [0000] 2 [1000] 3 [0110] | round 1: 4 [1111] 5 [1010] | round 2: 6 [0001]
    (3, 2, 12, [2, 3, 5, 6]),  # two rounds fill the step; a third is not needed
    (1, 1, 8, [2, 3, 5, 0]),  # one round: one uninformative group stays (the first one)
    (0, 0, 0, [2, 3, 0, 1]),  # no rounds: informative groups first, then the rest
])
def test_dynamic_sampling_refills_uninformative_groups_by_hand(trainer, rounds, expect_rounds, expect_samples,
                                                              expect_groups):
    g = trainer.cfg.trainer.group_size
    patterns = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]]
    assert g == 4 and trainer.cfg.trainer.prompts_per_step == 4
    rollouts, real_task = trainer.rollouts, trainer.rollouts.task
    rollouts.task = ScriptedRewards(real_task, [[float(r) for r in p] for p in patterns], g)
    trainer.cfg.filter.max_resample_rounds = rounds
    drawn: list[int] = []

    def draw(n: int):
        drawn.append(n)
        return trainer.task.train_batch(100 + sum(drawn), n)

    try:
        first = rollouts.sample_and_score(trainer.task.train_batch(0, 4), PhaseTimer(), None)
        merged = rollouts.refill_uninformative_groups(first, PhaseTimer(), draw)
    finally:
        rollouts.task = real_task
    assert (merged.resample_rounds, merged.resampled_samples) == (expect_rounds, expect_samples)
    assert drawn == [2, 1][:expect_rounds]  # fresh prompts: as many as groups still missing
    assert merged.rewards.tolist() == [float(r) for k in expect_groups for r in patterns[k]]
    assert len(merged.completions.texts) == 16
    metrics = rollouts.metrics([rollouts.select(merged, across_processes=False)], PhaseTimer())
    assert (metrics["filter/resample_rounds"], metrics["filter/resampled_samples"]) == (expect_rounds, expect_samples)


def _rows_with_sampler_logprobs(trainer, offsets: list[float]):
    """Two rows whose 'sampler' log-probs are the trainer's minus ``offsets[i]`` on every token."""
    learner = trainer.learner
    prompts = [learner.encode("12+34="), learner.encode("5+6=")]
    completions = [learner.encode("3+4+0=7"), learner.encode("1")]
    with torch.no_grad():
        logp, _ = token_logprobs(trainer.policy, make_batch(prompts, completions, trainer.tokenizer.pad_token_id))
    sampler = [logp[i, : len(c)] - offsets[i] for i, c in enumerate(completions)]
    return UpdateRows(prompt_ids=prompts, completion_ids=completions, advantages=torch.tensor([1.0, -1.0]),
                      sampler_logp=sampler), [len(c) for c in completions]


def test_sampler_trainer_gap_is_logged_by_hand(trainer):
    rows, lengths = _rows_with_sampler_logprobs(trainer, [0.1, -0.4])
    totals = StepTotals()
    learner = trainer.learner
    learner.policy.zero_grad(set_to_none=True)
    learner.accumulate_gradients(rows, learner.shape(2, sum(lengths)), PhaseTimer(), totals)
    learner.policy.zero_grad(set_to_none=True)
    assert totals.logp_gap_tokens == sum(lengths)
    assert totals.logp_gap_sum / totals.logp_gap_tokens == pytest.approx((0.1 * lengths[0] + 0.4 * lengths[1]) / sum(lengths),
                                                                          abs=1e-5)
    assert totals.logp_gap_max == pytest.approx(0.4, abs=1e-5)


def test_tis_caps_and_mis_masks_the_importance_weights_by_hand(trainer):
    learner, a = trainer.learner, trainer.cfg.algorithm
    behaviour = torch.zeros(1, 4)
    sampler = torch.log(torch.tensor([[2.0, 1.0, 1 / 3, 0.25]]))  # weights trainer / sampler: 0.5, 1, 3, 4
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a.rollout_correction_cap = 2.0
    try:
        a.rollout_correction = "tis"
        assert learner._rollout_weights(behaviour, sampler, mask).tolist()[0] == pytest.approx([0.5, 1.0, 2.0, 0.0])
        a.rollout_correction = "mis"
        assert learner._rollout_weights(behaviour, sampler, mask).tolist()[0] == pytest.approx([0.5, 1.0, 0.0, 0.0])
        a.rollout_correction = "none"
        assert learner._rollout_weights(behaviour, sampler, mask) is None
    finally:
        a.rollout_correction = "none"


def test_tis_changes_the_gradient_as_its_weights_say(trainer):
    """With the sampler 0.5 nats above the trainer on row 0 (weight exp(-0.5)) and at it on row 1,
    tis's gradient is the one without correction with row 0 scaled by exp(-0.5)."""
    learner, a = trainer.learner, trainer.cfg.algorithm

    def gradient(rows):
        learner.policy.zero_grad(set_to_none=True)
        learner.accumulate_gradients(rows, learner.shape(2, 10), PhaseTimer(), StepTotals())
        grad = torch.cat([p.grad.flatten() for p in learner.policy.parameters() if p.grad is not None])
        learner.policy.zero_grad(set_to_none=True)
        return grad

    rows, _ = _rows_with_sampler_logprobs(trainer, [-0.5, 0.0])
    try:
        a.rollout_correction, a.rollout_correction_cap = "tis", 2.0
        corrected = gradient(rows)
    finally:
        a.rollout_correction = "none"
    row0, row1 = (gradient(rows.subset([i])) for i in (0, 1))  # each row alone, same denominator
    torch.testing.assert_close(corrected, math.exp(-0.5) * row0 + row1, rtol=1e-4, atol=1e-7)


def test_a_run_with_rollout_correction_logs_a_gap_near_zero_for_the_hf_sampler(tmp_path):
    """The HF sampler samples from the policy itself: trainer and sampler agree up to float noise. (The
    gap is measured on the rows the trainer forwards: filter=off, since the debug model's rewards are
    often all equal and the filter would drop every row.)"""
    from rlreason.cli import run

    summary = run(compose("debug=true", "logger=none", "logger.progress=false", "trainer.steps=2", "filter=off",
                          "algorithm.rollout_correction=tis", "eval.every=0"), tmp_path)
    assert summary["status"] == "completed"
    train = read_metrics(tmp_path, "train")
    assert all(r["rollout/logp_gap_mean"] < 1e-3 and r["rollout/logp_gap_max"] < 1e-2 for r in train), train
