"""Rollouts: sample G completions per prompt, grade them, compute advantages, select rows.

The order is the paper's: the verifier's rewards (and the overlong handling, ``algorithm.truncated``)
come first, then the advantages (``algorithm.advantage``), then the sample selector (the ``filter``
group: the |advantage| filter drops rows before any forward pass; dynamic sampling replaces groups
without signal by fresh prompts). Nothing here touches gradients (``rlreason.learner`` does).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlreason.advantages import zero_std_groups
from rlreason.distributed import Parallel
from rlreason.learner import PhaseTimer, UpdateRows
from rlreason.rl import gradient_filter
from rlreason.sampling import Completions
from rlreason.tasks import Example, Grade


@dataclass
class Rollout:
    """A sampled, scored and filtered batch, laid out group by group."""

    completions: Completions
    rewards: torch.Tensor
    advantages: torch.Tensor
    keep: torch.Tensor
    zero_std_groups: int
    correct: torch.Tensor | None = None  # the task's is_correct per row (train/accuracy)
    resample_rounds: int = 0  # dynamic sampling: rounds of fresh prompts this step
    resampled_samples: int = 0  # dynamic sampling: completions sampled in those rounds

    def rows(self) -> UpdateRows:
        """The rows the sample selector kept."""
        kept = [i for i in range(len(self.rewards)) if bool(self.keep[i])]
        logprobs = self.completions.logprobs
        return UpdateRows(
            prompt_ids=[self.completions.prompt_ids[i] for i in kept],
            completion_ids=[self.completions.completion_ids[i] for i in kept],
            advantages=self.advantages[kept],
            sampler_logp=None if logprobs is None else [torch.tensor(logprobs[i]) for i in kept],
            slots=kept,
        )

    @property
    def completion_tokens(self) -> int:
        return self.completions.num_completion_tokens


def merge_groups(chosen: list[tuple[Rollout, int]], group_size: int) -> Rollout:
    """One rollout from groups of several (dynamic sampling), in the given order."""
    completions = Completions([], [], [], [], None)
    with_logprobs = all(r.completions.logprobs is not None for r, _ in chosen) and bool(chosen)
    if with_logprobs:
        completions.logprobs = []
    rewards, keep, correct = [], [], []
    for rollout, k in chosen:
        rows = list(range(k * group_size, (k + 1) * group_size))
        part = rollout.completions.select(rows)
        completions.prompt_ids += part.prompt_ids
        completions.completion_ids += part.completion_ids
        completions.texts += part.texts
        completions.finished += part.finished
        if with_logprobs:
            completions.logprobs += part.logprobs
        rewards.append(rollout.rewards[rows])
        keep.append(rollout.keep[rows])
        correct.append(rollout.correct[rows])
    rewards_t = torch.cat(rewards) if rewards else torch.zeros(0)
    return Rollout(completions, rewards_t, torch.zeros(len(rewards_t)), torch.cat(keep) if keep else torch.zeros(0, dtype=torch.bool),
                   int(zero_std_groups(rewards_t, group_size).sum()) if len(rewards_t) else 0,
                   torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool))


class Rollouts:
    """Makes rollouts from the train stream with the run's sampler, task, advantage and selector."""

    def __init__(self, cfg: Any, sampler: Any, task: Any, parallel: Parallel, advantage: Callable[..., torch.Tensor]):
        self.cfg, self.sampler, self.task, self.parallel, self.advantage = cfg, sampler, task, parallel, advantage

    @property
    def wants_sampler_logprobs(self) -> bool:
        """Ask the sampler for its own log-probs: for the rollout correction, or when it returns them
        anyway (vLLM), so the trainer-sampler gap is logged."""
        return self.cfg.algorithm.rollout_correction != "none" or self.sampler.returns_logprobs

    def sample_and_score(self, examples: list[Example], timer: PhaseTimer, generation_batch_size: int | None) -> Rollout:
        """Sample G completions per prompt and grade them (rewards, correctness, overlong handling);
        advantages and the selection come after (``select``)."""
        g, a = self.cfg.trainer.group_size, self.cfg.algorithm
        if not examples:  # a process with no prompts this round (dynamic sampling's refills)
            empty = Completions([], [], [], [], [] if self.wants_sampler_logprobs else None)
            return Rollout(empty, torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0, torch.zeros(0, dtype=torch.bool))
        with timer.phase("sampling"):
            completions = self.sampler.generate([e.prompt for e in examples], n=g, batch_size=generation_batch_size,
                                                return_logprobs=self.wants_sampler_logprobs)
        with timer.phase("scoring"):
            grades: list[Grade] = self.task.grade(completions.texts, [examples[i // g] for i in range(len(completions))])
        rewards = torch.tensor([float(x.reward) for x in grades])
        keep = torch.ones(len(rewards), dtype=torch.bool)
        if a.truncated == "soft_penalty":
            rewards = rewards + torch.tensor([self.overlong_penalty(len(c)) for c in completions.completion_ids])
        elif a.truncated == "mask":
            keep = torch.tensor(completions.finished, dtype=torch.bool)
        correct = torch.tensor([bool(x.correct) for x in grades])
        return Rollout(completions, rewards, torch.zeros(len(rewards)), keep, int(zero_std_groups(rewards, g).sum()), correct)

    def overlong_penalty(self, length: int) -> float:
        """DAPO's soft overlong punishment: 0 up to max_new_tokens - buffer, then linearly to -1."""
        limit, buffer = self.cfg.sampler.max_new_tokens, self.cfg.algorithm.overlong_buffer
        if buffer == 0 or length <= limit - buffer:
            return 0.0 if length < limit or buffer > 0 else -1.0
        return max(-1.0, (limit - buffer - length) / buffer)

    def select(self, rollout: Rollout, across_processes: bool) -> Rollout:
        """Advantages (``algorithm.advantage``, over the whole step's batch on every process when
        ``across_processes``), then the rows the gradient filter keeps."""
        g = self.cfg.trainer.group_size
        rewards = rollout.rewards
        if across_processes and self.parallel.world_size > 1:
            parts = self.parallel.gather(rewards)
            first = sum(len(p) for p in parts[: self.parallel.rank])
            advantages = self.advantage(torch.cat(parts), g, self.cfg.algorithm.advantage_eps)[first : first + len(rewards)]
        else:
            advantages = self.advantage(rewards, g, self.cfg.algorithm.advantage_eps) if len(rewards) else rewards
        rollout.advantages = advantages
        rollout.keep = rollout.keep & gradient_filter(advantages, self.cfg.filter.enabled, self.cfg.filter.threshold)
        return rollout

    def refill_uninformative_groups(self, rollout: Rollout, timer: PhaseTimer, draw: Callable[[int], list[Example]]) -> Rollout:
        """DAPO's dynamic sampling: groups whose rewards are all equal are replaced by groups of
        fresh prompts (``draw(n)``: the next n prompts of the train stream) until the step is full,
        at most ``filter.max_resample_rounds`` rounds; groups still uninformative then stay. Every
        process draws its fresh prompts from one global slice of the stream, so the data position agrees."""
        g = self.cfg.trainer.group_size
        n_groups = len(rollout.rewards) // g
        informative = (~zero_std_groups(rollout.rewards, g)).tolist() if n_groups else []
        kept = [(rollout, k) for k in range(n_groups) if informative[k]]
        spare = [(rollout, k) for k in range(n_groups) if not informative[k]]
        rounds = samples = 0
        for _ in range(self.cfg.filter.max_resample_rounds):
            need = n_groups - len(kept)
            needs = self.parallel.gather(need) if self.parallel.world_size > 1 else [need]
            if sum(needs) == 0:
                break
            fresh = draw(sum(needs))
            mine = fresh[sum(needs[: self.parallel.rank]) : sum(needs[: self.parallel.rank + 1])]
            extra = self.sample_and_score(mine, timer, self.cfg.algorithm.generation_batch_size)
            rounds, samples = rounds + 1, samples + len(extra.rewards)
            extra_groups = len(extra.rewards) // g
            extra_informative = (~zero_std_groups(extra.rewards, g)).tolist() if extra_groups else []
            kept += [(extra, k) for k in range(extra_groups) if extra_informative[k]][:need]
        chosen = (kept + spare)[:n_groups]
        merged = merge_groups(chosen, g)
        merged.resample_rounds, merged.resampled_samples = rounds, samples
        return merged

    def metrics(self, rollouts: list[Rollout], timer: PhaseTimer) -> dict[str, float]:
        """The step's reward, accuracy, length and selection metrics, over every process's rows."""
        rewards = torch.cat([r.rewards for r in rollouts])
        correct = torch.cat([r.correct for r in rollouts]).float()
        advantages = torch.cat([r.advantages for r in rollouts])
        keep = torch.cat([r.keep for r in rollouts])
        lengths = [len(c) for r in rollouts for c in r.completions.completion_ids]
        finished = [f for r in rollouts for f in r.completions.finished]
        zero_std = sum(r.zero_std_groups for r in rollouts)
        resample = [sum(r.resample_rounds for r in rollouts), sum(r.resampled_samples for r in rollouts)]
        if self.parallel.world_size > 1:  # the whole step's rows, in the single-process order
            parts = self.parallel.gather((rewards, advantages, keep, lengths, finished, zero_std, correct, resample))
            rewards, advantages, keep = (torch.cat([p[i] for p in parts]) for i in range(3))
            lengths, finished = ([x for p in parts for x in p[i]] for i in (3, 4))
            zero_std = sum(p[5] for p in parts)
            correct = torch.cat([p[6] for p in parts])
            resample = [max(p[7][0] for p in parts), sum(p[7][1] for p in parts)]
        groups = len(rewards) // self.cfg.trainer.group_size
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "train/accuracy": float(correct.mean()),
            "completions/mean_length": sum(lengths) / len(lengths),
            "completions/min_length": min(lengths),
            "completions/max_length": max(lengths),
            "completions/length_std": statistics.pstdev(lengths),
            "completions/truncated_frac": 1.0 - sum(finished) / len(finished),
            "filter/kept_frac": float(keep.float().mean()),
            "filter/mean_abs_adv": float(advantages.abs().mean()),
            "filter/zero_std_group_frac": zero_std / groups,
            **({"filter/resample_rounds": resample[0], "filter/resampled_samples": resample[1]} if self.cfg.filter.dynamic else {}),
            "throughput/sampling_tok_s": sum(lengths) / max(1e-9, timer.seconds["sampling"]),
        }
