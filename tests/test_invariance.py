"""The math that is easy to get silently wrong: micro-batching and filtering must not change the gradient.

Every ``algorithm.loss_agg`` mode but ``paper`` (the authors' per-micro-batch normalisation, which
depends on the split by design; a test below shows it does) gives the update's gradient whatever
the micro-batch size, whether the rows come in one call or in GRPO's chunks with the denominator
known only at the end, and whether a threshold-0 filter drops the zero-advantage rows. The same on
2 processes is tests/test_distributed.py's 1-vs-2-process test, which runs these modes too.
"""

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


INVARIANT_AGGS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


@pytest.fixture(autouse=True)
def _default_aggregation(trainer):
    yield
    _use_aggregation(trainer, "seq_mean_token_mean")


def _use_aggregation(trainer: Trainer, name: str) -> None:
    from rlreason.config import LOSS_AGGS
    from rlreason.registry import resolve

    trainer.learner.loss_agg = resolve(name, LOSS_AGGS, "algorithm.loss_agg")()


def _gradient(trainer: Trainer, rollout, micro_batch_size: int, filter_enabled: bool, threshold: float, beta: float,
              chunk_rows: int | None = None, totals: StepTotals | None = None):
    """The accumulated gradient of one update over ``rollout``, whose denominator counts every sampled
    row and token (as the schedules pass it). ``chunk_rows``: the rows arrive in chunks of this many,
    with the token count unknown until the end (the interleaved schedule), then the rescale.
    ``totals``: where the update's sums (its loss) go."""
    totals = StepTotals() if totals is None else totals
    trainer.cfg.trainer.micro_batch_size = micro_batch_size
    trainer.cfg.filter.enabled, trainer.cfg.filter.threshold = filter_enabled, threshold
    trainer.cfg.kl.beta = beta
    from rlreason.rl import gradient_filter

    rollout.keep = gradient_filter(rollout.advantages, filter_enabled, threshold)
    learner = trainer.learner
    learner.policy.zero_grad(set_to_none=True)
    final = learner.shape(len(rollout.rewards), rollout.completion_tokens)
    if chunk_rows is None:
        rows = rollout.rows()
        learner.attach_logprobs(rows, PhaseTimer(), need_old=False)
        learner.accumulate_gradients(rows, final, PhaseTimer(), totals)
    else:
        used = learner.shape(len(rollout.rewards), None)
        for start in range(0, len(rollout.rewards), chunk_rows):
            part = _part(rollout, list(range(start, min(start + chunk_rows, len(rollout.rewards)))))
            rows = part.rows()
            learner.attach_logprobs(rows, PhaseTimer(), need_old=False)
            learner.accumulate_gradients(rows, used, PhaseTimer(), totals)
        learner.rescale_gradients(used, final, totals)
    grads = [p.grad.flatten() for p in trainer.policy.parameters() if p.grad is not None]
    return torch.cat(grads) if grads else torch.zeros(0)


def _part(rollout, rows: list[int]):
    from rlreason.rollout import Rollout

    return Rollout(rollout.completions.select(rows), rollout.rewards[rows], rollout.advantages[rows], rollout.keep[rows], 0,
                   rollout.correct[rows])


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


@pytest.mark.parametrize("aggregation", INVARIANT_AGGS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gradient_same_whole_or_micro_batched(trainer, beta, aggregation):
    _use_aggregation(trainer, aggregation)
    rollout = _rollout(trainer)
    whole = _gradient(trainer, rollout, len(rollout.rewards), False, 0.0, beta)
    for micro in (1, 3, 5):
        split = _gradient(trainer, rollout, micro, False, 0.0, beta)
        assert torch.allclose(whole, split, atol=1e-6, rtol=1e-4), f"micro_batch_size={micro}"
    # The interleaved schedule's layout: chunks of whole groups, denominator known only at the end.
    g = trainer.cfg.trainer.group_size
    chunked = _gradient(trainer, rollout, 2, False, 0.0, beta, chunk_rows=2 * g)
    assert torch.allclose(whole, chunked, atol=1e-6, rtol=1e-4), "chunked with a late denominator"
    assert whole.abs().sum() > 0


def test_the_aggregations_differ(trainer):
    """So the invariance above is not one mode tested three times."""
    rollout = _rollout(trainer)
    grads = []
    for aggregation in INVARIANT_AGGS:
        _use_aggregation(trainer, aggregation)
        grads.append(_gradient(trainer, rollout, 4, False, 0.0, 0.0))
    for i in range(len(grads)):
        for j in range(i + 1, len(grads)):
            assert not torch.allclose(grads[i], grads[j], atol=1e-6, rtol=1e-3), (INVARIANT_AGGS[i], INVARIANT_AGGS[j])


def test_paper_aggregation_is_the_authors_per_sampled_micro_batch_mean(trainer):
    """Micro-batches of 8 sampled rows; the filter (threshold 0) empties half of the first one's rows
    (its first group's rewards are all equal) and none of the second's. The authors' loss: each
    micro-batch's token sum over (its kept rows x L), averaged over the 2 micro-batches, so the
    thinned micro-batch's rows weigh 8/4 = 2x as much as the full one's: by hand, with Dr. GRPO's
    token sum / (rows x L) over each micro-batch's kept rows alone."""
    rollout = _rollout(trainer)
    g = trainer.cfg.trainer.group_size
    assert len(rollout.rewards) == 16 and g == 4
    rollout.rewards[:g] = 1.0
    from rlreason.advantages import grpo as group_advantages

    rollout.advantages = group_advantages(rollout.rewards, g)
    _use_aggregation(trainer, "paper")
    paper = _gradient(trainer, rollout, 8, True, 0.0, 0.0)
    assert rollout.keep[:8].sum() == 4 and rollout.keep[8:].sum() == 8
    _use_aggregation(trainer, "seq_mean_token_sum_norm")
    # Dr. GRPO over one micro-batch's 8 sampled rows, rescaled to its kept rows' count.
    halves = [8 / int(rollout.keep[part].sum()) * _gradient(trainer, _part(rollout, part), 8, True, 0.0, 0.0)
              for part in (list(range(0, 8)), list(range(8, 16)))]
    by_hand = (halves[0] + halves[1]) / 2
    torch.testing.assert_close(paper, by_hand, rtol=1e-4, atol=1e-7)
    # Not Dr. GRPO over the step's sampled rows: the thinned micro-batch takes the larger step.
    dr_grpo = _gradient(trainer, rollout, 8, True, 0.0, 0.0)
    assert not torch.allclose(paper, dr_grpo, atol=1e-6, rtol=1e-3)


def test_a_late_denominator_rescales_the_logged_loss_too(trainer):
    """GRPO's chunks with token_mean: the numerators are back-propagated and the gradient rescaled
    once the step's tokens are known; the loss the step logs is rescaled with it."""
    _use_aggregation(trainer, "token_mean")
    rollout = _rollout(trainer)
    whole, late = StepTotals(), StepTotals()
    _gradient(trainer, rollout, 4, False, 0.0, 0.0, totals=whole)
    _gradient(trainer, rollout, 4, False, 0.0, 0.0, chunk_rows=8, totals=late)
    assert whole.loss != 0 and late.loss == pytest.approx(whole.loss, rel=1e-5)


def test_paper_aggregation_depends_on_the_split_as_documented(trainer):
    """The authors' normalisation divides each micro-batch by the rows kept in it: with a filter that
    drops rows unevenly, the gradient changes with the micro-batch size (why it is exempt above)."""
    _use_aggregation(trainer, "paper")
    rollout = _rollout(trainer)
    g = trainer.cfg.trainer.group_size
    rollout.rewards[:g] = 1.0
    from rlreason.advantages import grpo as group_advantages

    rollout.advantages = group_advantages(rollout.rewards, g)
    one, other = (_gradient(trainer, rollout, micro, True, 0.0, 0.0) for micro in (3, 16))
    assert not torch.allclose(one, other, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("aggregation", INVARIANT_AGGS)
def test_filter_threshold_zero_changes_nothing(trainer, aggregation):
    _use_aggregation(trainer, aggregation)
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
