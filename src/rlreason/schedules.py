"""Step schedules: what one training step does (``algorithm.schedule``).

The arms of the paper differ in when they sample and how often they update, and that is all a
schedule says; the loss, the rollouts and the optimizer are the same objects for every one:

- ``sft``: supervised fine-tuning on reference solutions or demonstrations (advantage 1, no sampling).
- ``interleaved``: standard GRPO as the paper measures it; each micro-batch's prompts are sampled
  and back-propagated in turn (generation batch = backprop batch), one optimizer update per step.
- ``preemptive``: DASH; one generation call covers every sample of the step, then the rows the
  selector keeps are back-propagated in small micro-batches; one on-policy update per step.
- ``ppo``: preemptive sampling, then ``algorithm.ppo_epochs`` passes over the batch in mini-batches
  of ``algorithm.mini_batch_size`` rows, one clipped update each (off-policy after the first).

A schedule of your own subclasses ``Schedule`` and is named by import path
(``algorithm.schedule=my_pkg.MySchedule``); it gets the trainer's parts through ``Trainer``:
``next_examples``, ``rollouts`` (``rlreason.rollout``), ``learner`` (``rlreason.learner``), ``parallel``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rlreason.errors import ConfigError
from rlreason.learner import PhaseTimer, StepTotals, UpdateRows, chunks
from rlreason.registry import check_subclass, resolve

if TYPE_CHECKING:  # the trainer imports this module
    from rlreason.trainer import Trainer

# Built-in schedules by short name (rlreason.registry); a value with a dot is the import path of one's own.
SCHEDULES = {
    "sft": "rlreason.schedules.SFTSchedule",
    "interleaved": "rlreason.schedules.InterleavedSchedule",
    "preemptive": "rlreason.schedules.PreemptiveSchedule",
    "ppo": "rlreason.schedules.PPOSchedule",
}


def schedule_class(value: str) -> type["Schedule"]:
    """The Schedule class ``algorithm.schedule`` names; one line if it is none."""
    return check_subclass(resolve(value, SCHEDULES, "algorithm.schedule"), Schedule, "algorithm.schedule", value)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Schedule(ABC):
    """One training step: which rows are sampled, and which updates are made from them."""

    # Reinforcement learning (samples and rewards), as opposed to supervised fine-tuning: the
    # reference model, the KL penalty and the RL-only config checks follow from it.
    rl: ClassVar[bool] = True
    # Whether the update's completion-token count is known before its first backward; False (GRPO's
    # interleaved sampling) makes an aggregation that needs it rescale the gradient afterwards.
    tokens_known_before_backward: ClassVar[bool] = True

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Start-up checks of the fields this schedule reads (ConfigError, one line)."""
        a = cfg.algorithm
        off_policy = [f"algorithm.ppo_epochs={a.ppo_epochs}"] if a.ppo_epochs != 1 else []
        off_policy += [f"algorithm.mini_batch_size={a.mini_batch_size}"] if a.mini_batch_size is not None else []
        _need(not off_policy, f"{' and '.join(off_policy)} needs algorithm.schedule=ppo, not {a.schedule} "
              "(several updates reuse one sampled batch)")

    @property
    def rows_per_step(self) -> int:
        """Sequences per step: prompts x group size (SFT takes as many reference rows, so every arm
        back-propagates the same number of sequences per step)."""
        return self.cfg.trainer.prompts_per_step * self.cfg.trainer.group_size

    def updates_per_step(self) -> int:
        """Optimizer updates per step (the learning-rate schedule counts them)."""
        return 1

    @abstractmethod
    def step(self, trainer: "Trainer", timer: PhaseTimer, totals: StepTotals) -> dict[str, float]:
        """Run one step on ``trainer``'s parts; returns the step's metrics (the trainer adds the loss's)."""


class SFTSchedule(Schedule):
    """Supervised fine-tuning: the task's SFT targets (``sft.source``), advantage 1, one update."""

    rl = False

    @classmethod
    def check(cls, cfg: Any) -> None:
        a = cfg.algorithm
        _need(not cfg.filter.dynamic,
              f"filter={cfg.filter.name} (dynamic sampling) needs an RL schedule, not algorithm.schedule=sft: SFT samples nothing")
        _need(a.ratio_level == "token",
              f"algorithm.ratio_level={a.ratio_level!r} needs an RL schedule, not algorithm.schedule=sft: SFT has no importance ratio")
        super().check(cfg)

    def step(self, trainer: "Trainer", timer: PhaseTimer, totals: StepTotals) -> dict[str, float]:
        learner, parallel = trainer.learner, trainer.parallel
        examples = parallel.shard(trainer.next_examples(self.rows_per_step))
        source = self.cfg.sft.source
        rows = UpdateRows(
            prompt_ids=[learner.encode(e.prompt) for e in examples],
            completion_ids=[learner.encode(trainer.task.sft_target(e, source)) + [learner.tokenizer.eos_token_id] for e in examples],
            advantages=torch.ones(len(examples)),
        )
        length, count = parallel.sum([sum(len(c) for c in rows.completion_ids), len(rows)])
        learner.accumulate_gradients(rows, learner.shape(self.rows_per_step, int(length)), timer, totals)
        learner.optimizer_step(timer, totals)
        return {"completions/mean_length": length / count}


class InterleavedSchedule(Schedule):
    """Standard GRPO: sample a micro-batch's prompts, back-propagate them, next micro-batch; the
    weights change only at the step's end, so the step is on-policy, but every generation call is
    as small as a backprop micro-batch (the cost DASH removes)."""

    tokens_known_before_backward = False

    @classmethod
    def check(cls, cfg: Any) -> None:
        t = cfg.trainer
        _need(t.micro_batch_size % t.group_size == 0,
              f"trainer.micro_batch_size={t.micro_batch_size} must be a multiple of trainer.group_size={t.group_size} "
              "with algorithm.schedule=interleaved (advantages need whole groups)")
        _need(not cfg.filter.dynamic,
              f"filter={cfg.filter.name} (dynamic sampling) needs algorithm.schedule=preemptive or ppo, not interleaved "
              "(it refills the step's groups before any update)")
        super().check(cfg)

    def step(self, trainer: "Trainer", timer: PhaseTimer, totals: StepTotals) -> dict[str, float]:
        rollouts, learner, parallel = trainer.rollouts, trainer.learner, trainer.parallel
        examples = parallel.shard(trainer.next_examples(self.cfg.trainer.prompts_per_step))  # whole groups per process
        per_chunk = self.cfg.trainer.micro_batch_size // self.cfg.trainer.group_size
        parts = list(chunks(examples, per_chunk))
        # The step's completion-token count is known only once every chunk is sampled: an aggregation
        # that needs it back-propagates numerators and the gradient is scaled once it is known.
        used = learner.shape(self.rows_per_step, None)
        done = []
        for i, chunk in enumerate(parts):
            rollout = rollouts.select(rollouts.sample_and_score(chunk, timer, None), across_processes=False)
            done.append(rollout)
            rows = rollout.rows()
            learner.attach_logprobs(rows, timer, need_old=False)
            learner.accumulate_gradients(rows, used, timer, totals, sync=i == len(parts) - 1)
        tokens = int(parallel.sum([float(sum(r.completion_tokens for r in done))])[0])
        learner.rescale_gradients(used, learner.shape(self.rows_per_step, tokens), totals)
        learner.optimizer_step(timer, totals)
        return rollouts.metrics(done, timer)


class PreemptiveSchedule(Schedule):
    """DASH: one generation call for every sample of the step (``algorithm.generation_batch_size``
    sequences at a time), the sample selector, then one on-policy update in small micro-batches."""

    def step(self, trainer: "Trainer", timer: PhaseTimer, totals: StepTotals) -> dict[str, float]:
        rollouts, parallel = trainer.rollouts, trainer.parallel
        examples = parallel.shard(trainer.next_examples(self.cfg.trainer.prompts_per_step))  # whole groups per process
        rollout = rollouts.sample_and_score(examples, timer, self.cfg.algorithm.generation_batch_size)
        if self.cfg.filter.dynamic:
            rollout = rollouts.refill_uninformative_groups(rollout, timer, trainer.next_examples)
        rollout = rollouts.select(rollout, across_processes=True)
        self.update(trainer, rollout, timer, totals)
        return rollouts.metrics([rollout], timer)

    def update(self, trainer: "Trainer", rollout: Any, timer: PhaseTimer, totals: StepTotals) -> None:
        """One update over the whole batch; the aggregation's counts are the step's rows and tokens."""
        learner = trainer.learner
        rows = rollout.rows()
        learner.attach_logprobs(rows, timer, need_old=False)
        tokens = int(trainer.parallel.sum([float(rollout.completion_tokens)])[0])
        learner.accumulate_gradients(rows, learner.shape(self.rows_per_step, tokens), timer, totals)
        learner.optimizer_step(timer, totals)


class PPOSchedule(PreemptiveSchedule):
    """PPO on DASH's rollouts: ``ppo_epochs`` passes over the sampled batch, each in a fresh random
    order cut into mini-batches of ``mini_batch_size`` rows, one clipped update per mini-batch. The
    ratio is taken against the sampling policy's log-probs, computed once before the first update.
    With one epoch and one mini-batch it is exactly ``preemptive``."""

    @classmethod
    def check(cls, cfg: Any) -> None:
        a, rows = cfg.algorithm, cfg.trainer.prompts_per_step * cfg.trainer.group_size
        _need(a.ppo_epochs >= 1, f"algorithm.ppo_epochs={a.ppo_epochs} must be >= 1")
        if a.mini_batch_size is not None:
            _need(1 <= a.mini_batch_size <= rows,
                  f"algorithm.mini_batch_size={a.mini_batch_size} must be between 1 and the batch ({rows} rows)")

    def updates_per_step(self) -> int:
        a = self.cfg.algorithm
        return a.ppo_epochs * math.ceil(self.rows_per_step / (a.mini_batch_size or self.rows_per_step))

    def update(self, trainer: "Trainer", rollout: Any, timer: PhaseTimer, totals: StepTotals) -> None:
        if self.updates_per_step() == 1:
            super().update(trainer, rollout, timer, totals)
            return
        learner, parallel, a = trainer.learner, trainer.parallel, self.cfg.algorithm
        all_rows = rollout.rows()
        learner.attach_logprobs(all_rows, timer, need_old=True)
        lengths = [len(c) for c in rollout.completions.completion_ids]
        kept_index = {row: i for i, row in enumerate(i for i in range(len(rollout.rewards)) if bool(rollout.keep[i]))}
        mini = a.mini_batch_size or self.rows_per_step
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + trainer.step)
        first = parallel.rank * len(rollout.rewards)  # this process's rows in the step's global order
        for _ in range(a.ppo_epochs):
            order = torch.randperm(self.rows_per_step, generator=generator).tolist()
            for mini_rows in chunks(order, mini):
                mine = [r - first for r in mini_rows if 0 <= r - first < len(lengths)]  # this process's, as sampled
                slots = [slot for slot, r in enumerate(mine) if r in kept_index]
                kept = [kept_index[mine[slot]] for slot in slots]
                tokens = int(parallel.sum([float(sum(lengths[r] for r in mine))])[0])
                update = all_rows.subset(kept, slots=slots)
                learner.accumulate_gradients(update, learner.shape(len(mini_rows), tokens), timer, totals)
                learner.optimizer_step(timer, totals)
