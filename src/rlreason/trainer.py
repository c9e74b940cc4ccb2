"""One training loop for every arm; the arms differ only in config.

Per step (RL): sample G completions per prompt, score them with the task's verifier, compute
group advantages, drop rows the gradient filter rejects (before any forward pass), then update
the policy in micro-batches. ``algorithm.preemptive_sampling`` decides whether one generation
call covers the whole step (DASH, PPO) or each micro-batch is sampled and back-propagated in
turn (the standard GRPO the paper measures against). PPO adds off-policy passes over the same
batch (``ppo_epochs`` and ``mini_batch_size``) with a clipped ratio. SFT is the same update with
advantage 1 on reference solutions or teacher demonstrations.

A "step" is one sampled batch of ``prompts_per_step`` prompts; PPO makes several optimizer
updates per step (counted in ``train/optimizer_steps``).

Under ``accelerate launch`` each process samples and back-propagates its share of the step's
prompts and the gradient is the single-process one (see ``rlreason.distributed``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from rlreason.batching import make_batch, token_logprobs
from rlreason.checkpoint import (
    checkpoint_step,
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from rlreason.config import ADVANTAGES, LOSS_AGGS, resolve_model_path, resume_conflicts, validate, with_typed_tasks
from rlreason.loss_agg import UpdateShape
from rlreason.registry import resolve
from rlreason.distributed import Parallel, get_parallel
from rlreason.errors import ConfigError, TrainingDiverged
from rlreason.metrics import METRICS_FILE, MetricsWriter, NullWriter, read_metrics, truncate_metrics
from rlreason.modeling import load_model, load_policy, load_reference, load_tokenizer
from rlreason.progress import Progress
from rlreason.provenance import run_provenance, save_run_config
from rlreason.advantages import zero_std_groups
from rlreason.rl import LossStats, gradient_filter, pass_at_k, policy_loss
from rlreason.sampling import Completions, build_sampler
from rlreason.tasks import Example, Grade, build_task

log = logging.getLogger(__name__)


class PhaseTimer:
    """Wall-clock seconds per phase of a step (sampling, reference, forward_backward, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclass
class UpdateRows:
    """Rows to back-propagate: token ids, advantages, and cached old/reference log-probs."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: torch.Tensor
    old_logp: list[torch.Tensor] | None = None
    ref_logp: list[torch.Tensor] | None = None
    sampler_logp: list[torch.Tensor] | None = None  # the sampler's own log-probs (rollout correction)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, rows: list[int]) -> "UpdateRows":
        return UpdateRows(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            completion_ids=[self.completion_ids[i] for i in rows],
            advantages=self.advantages[rows],
            old_logp=None if self.old_logp is None else [self.old_logp[i] for i in rows],
            ref_logp=None if self.ref_logp is None else [self.ref_logp[i] for i in rows],
            sampler_logp=None if self.sampler_logp is None else [self.sampler_logp[i] for i in rows],
        )


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
        )

    @property
    def completion_tokens(self) -> int:
        return self.completions.num_completion_tokens


@dataclass
class StepTotals:
    """Sums over a step's micro-batches, turned into means once at the end."""

    loss: float = 0.0
    logp_sum: float = 0.0
    entropy_sum: float = 0.0
    train_tokens: int = 0
    stats: LossStats = field(default_factory=LossStats)
    grad_norms: list[float] = field(default_factory=list)
    logp_gap_sum: float = 0.0  # |trainer - sampler| log-prob over tokens (samplers returning log-probs)
    logp_gap_max: float = 0.0
    logp_gap_tokens: float = 0.0
    optimizer_steps: int = 0
    skipped_steps: int = 0


def _pad_rows(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _merge_groups(chosen: list[tuple["Rollout", int]], group_size: int) -> "Rollout":
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


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Trainer:
    """Builds everything from a resolved config and runs the loop; writes into ``run_dir``.

    ``resume=true`` continues from the run directory's last complete checkpoint (or starts at
    step 0 if there is none, so a requeued job can always pass it); without it, a run directory
    that already holds a run is refused rather than mixed with or overwritten.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, parallel: Parallel | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.parallel = parallel or get_parallel()
        validate(cfg, world_size=self.parallel.world_size)  # also when built without the CLI (tests, scripts)
        cfg = self.cfg = with_typed_tasks(cfg)  # task nodes completed with their class's defaults
        if cfg.resume and self.parallel.uses_deepspeed:
            raise ConfigError("resume=true is not supported under DeepSpeed (its optimizer state is sharded); use DDP")
        resume_from = self._checkpoint_to_resume()  # before any slow loading: a conflict fails at once
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        hub_tokenizer = load_tokenizer(resolve_model_path(cfg.model.name_or_path)) if cfg.model.name_or_path else None
        self.task = build_task(cfg.task, tokenizer=hub_tokenizer, sft_source=cfg.sft.source, cache_dir=cfg.cache_dir)
        self.eval_tasks = {name: build_task(task_cfg, tokenizer=hub_tokenizer, cache_dir=cfg.cache_dir, field=f"eval.tasks.{name}")
                           for name, task_cfg in cfg.eval.tasks.items()}
        self.advantage = resolve(cfg.algorithm.advantage, ADVANTAGES, "algorithm.advantage")
        self.loss_agg = resolve(cfg.algorithm.loss_agg, LOSS_AGGS, "algorithm.loss_agg")()
        # Process 0 builds a missing cached base model: transformers' save_pretrained writes nothing on other ranks.
        with self.parallel.main_process_first():
            self.policy, self.tokenizer, self.base_path = load_policy(cfg, self.task, tokenizer=hub_tokenizer)
        self.device = next(self.policy.parameters()).device
        a = cfg.algorithm
        self.reference = (load_reference(self.base_path, cfg.model, dtype=self.parallel.compute_dtype)
                          if a.rl and cfg.kl.beta > 0 else None)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(),
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.data_position = 0
        self.nonfinite_in_row = 0
        self.train_seconds = 0.0
        self.phase_totals: dict[str, float] = defaultdict(float)
        self.evals: dict[int, dict[str, float]] = {}
        if self.parallel.device is not None:  # a GPU (this process's one under accelerate launch)
            self.device = self.parallel.device
            for model in (self.policy, self.reference):
                if model is not None:
                    model.to(self.device)
        if self.reference is not None:
            self.reference = self.parallel.prepare_reference(self.reference)  # training dtype, same autocast
        # After the move: a vLLM engine takes its weights (and their fingerprint) from the policy where it trains.
        self.sampler = build_sampler(cfg.sampler, self.policy, self.tokenizer, model_path=self.base_path, seed=cfg.seed)
        # Seeded after building, so whether the base model came from the cache or was just built
        # (its warm start draws random numbers) does not change what training samples.
        seed_everything(cfg.seed)
        if self.parallel.world_size > 1:
            # Each process samples different completions; the same seed reproduces them.
            torch.manual_seed(cfg.seed * 1_000_003 + self.parallel.rank)
        wandb_id = self._restore(resume_from) if cfg.resume else None
        # The model training forwards go through (DDP/DeepSpeed wrapper; the policy itself on one process).
        self.train_model, self.optimizer = self.parallel.prepare(
            self.policy, self.optimizer, cfg.trainer.micro_batch_size, cfg.optim.max_grad_norm
        )
        if self.parallel.is_main:
            # W&B waits for checkpoints only when there are periodic ones to resume from.
            self.provenance = run_provenance(self.run_dir)  # before config.yaml is rewritten: a resume reads the old one
            self.writer = MetricsWriter(self.run_dir, cfg, wandb_run_id=wandb_id, hold_until_commit=cfg.checkpoint.every > 0,
                                        provenance=self.provenance)
            save_run_config(cfg, self.run_dir / "config.yaml", self.provenance)
        else:
            self.writer = NullWriter()

    # ---------------------------------------------------------------- schedule
    @property
    def rows_per_step(self) -> int:
        """Sequences per step: prompts x group size (SFT takes as many reference rows, so every arm
        back-propagates the same number of sequences per step)."""
        return self.cfg.trainer.prompts_per_step * self.cfg.trainer.group_size

    @property
    def updates_per_step(self) -> int:
        a = self.cfg.algorithm
        if not a.rl:
            return 1
        return a.ppo_epochs * math.ceil(self.rows_per_step / (a.mini_batch_size or self.rows_per_step))

    @property
    def off_policy(self) -> bool:
        """Several updates reuse one sampled batch, so the ratio needs the sampling policy's log-probs."""
        return self.updates_per_step > 1

    def _lr_factor(self, update: int) -> float:
        o = self.cfg.optim
        total = max(1, self.cfg.trainer.steps * self.updates_per_step)
        if o.warmup_steps and update < o.warmup_steps:
            return (update + 1) / o.warmup_steps
        progress = min(1.0, (update - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.schedule == "linear":
            return 1.0 - progress
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train for ``trainer.steps`` steps with evaluations; returns (and writes) the summary."""
        cfg = self.cfg
        start = time.perf_counter()
        evals = self.evals
        status = "failed"
        try:
            if cfg.eval.at_start and self.step == 0:
                evals[0] = self.evaluate(0)
            with Progress(cfg.trainer.steps, enabled=cfg.logger.progress and self.parallel.is_main, start=self.step) as bar:
                while self.step < cfg.trainer.steps and not self.out_of_time:
                    metrics = self.train_step()
                    self.writer.log("train", self.step, metrics)
                    self.stop_if_diverged()
                    bar.update(self.step, metrics)
                    last = self.step == cfg.trainer.steps or self.out_of_time
                    if (cfg.eval.every and self.step % cfg.eval.every == 0) or last:
                        evals[self.step] = self.evaluate(self.step)
                        bar.note(self.step, evals[self.step])
                    if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0) or (last and cfg.checkpoint.save_final):
                        self.save()
            status = "completed"
        finally:
            summary = self.summary(status, evals, time.perf_counter() - start)
            self.writer.finish(summary)
            self.sampler.close()
            for task in (self.task, *self.eval_tasks.values()):
                task.close()
        return summary

    @property
    def out_of_time(self) -> bool:
        """The training-time budget (trainer.max_train_seconds) is spent: arms compared at equal
        wall-clock stop here, after the step that crossed it, with a final evaluation."""
        budget = self.cfg.trainer.max_train_seconds
        return budget is not None and self.train_seconds >= budget

    def train_step(self) -> dict[str, float]:
        timer, totals = PhaseTimer(), StepTotals()
        step_start = time.perf_counter()
        metrics = self._rl_step(timer, totals) if self.cfg.algorithm.rl else self._sft_step(timer, totals)
        self.step += 1
        # Process 0's clock on every process, so time-based decisions agree across processes.
        elapsed = self.parallel.broadcast(time.perf_counter() - step_start)
        self.train_seconds += elapsed
        for name, seconds in timer.seconds.items():
            self.phase_totals[name] += seconds
        self._sum_over_processes(totals)
        tokens = max(1.0, totals.stats.tokens)
        metrics.update({
            "train/loss": totals.loss,
            "train/nll": -totals.logp_sum / tokens,
            "train/entropy": totals.entropy_sum / tokens,
            "train/kl": totals.stats.kl_sum / tokens,
            "train/clip_frac": totals.stats.clipped_tokens / tokens,
            "train/grad_norm": sum(totals.grad_norms) / max(1, len(totals.grad_norms)),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/optimizer_steps": totals.optimizer_steps,
            "train/skipped_steps": totals.skipped_steps,
            "time/step_s": elapsed,
            "time/train_elapsed_s": self.train_seconds,
            "throughput/train_tok_s": totals.train_tokens / max(1e-9, timer.seconds["forward_backward"]),
        })
        if totals.logp_gap_tokens:  # the sampler returned its own log-probs: a weight-sync fault shows here
            metrics["rollout/logp_gap_mean"] = totals.logp_gap_sum / totals.logp_gap_tokens
            metrics["rollout/logp_gap_max"] = totals.logp_gap_max
        for name in ("sampling", "scoring", "reference", "forward_backward", "optimizer"):
            metrics[f"time/{name}_s"] = timer.seconds.get(name, 0.0)
        return metrics

    def _sft_step(self, timer: PhaseTimer, totals: StepTotals) -> dict[str, float]:
        examples = self.task.train_batch(self.data_position, self.rows_per_step)
        self.data_position += len(examples)
        examples = self.parallel.shard(examples)
        source = self.cfg.sft.source
        rows = UpdateRows(
            prompt_ids=[self._encode(e.prompt) for e in examples],
            completion_ids=[self._encode(self.task.sft_target(e, source)) + [self.tokenizer.eos_token_id] for e in examples],
            advantages=torch.ones(len(examples)),
        )
        self.accumulate_gradients(rows, self.rows_per_step, timer, totals)
        self.optimizer_step(timer, totals)
        length, count = self.parallel.sum([sum(len(c) for c in rows.completion_ids), len(rows)])
        return {"completions/mean_length": length / count}

    def _rl_step(self, timer: PhaseTimer, totals: StepTotals) -> dict[str, float]:
        cfg, a = self.cfg, self.cfg.algorithm
        examples = self.task.train_batch(self.data_position, cfg.trainer.prompts_per_step)
        self.data_position += len(examples)
        examples = self.parallel.shard(examples)  # whole groups: each process its contiguous share
        rollouts: list[Rollout] = []
        if a.preemptive_sampling:
            # DASH: one generation call for every sample of the step, then small backprop micro-batches.
            rollout = self.sample_and_score(examples, timer, a.generation_batch_size)
            if cfg.filter.dynamic:
                rollout = self.refill_uninformative_groups(rollout, timer)
            rollout = self.select(rollout, across_processes=True)
            rollouts.append(rollout)
            self.update(rollout, timer, totals)
        else:
            # Standard GRPO: generation batch = backprop batch; weights change only at the step's end.
            per_chunk = cfg.trainer.micro_batch_size // cfg.trainer.group_size
            chunks = list(_chunks(examples, per_chunk))
            # The step's completion-token count is known only once every chunk is sampled: an aggregation
            # that needs it back-propagates numerators and the gradient is scaled once it is known.
            used = self._shape(self.rows_per_step, None)
            for i, chunk in enumerate(chunks):
                rollout = self.select(self.sample_and_score(chunk, timer, None), across_processes=False)
                rollouts.append(rollout)
                rows = rollout.rows()
                self.attach_logprobs(rows, timer, need_old=False)
                self.accumulate_gradients(rows, used, timer, totals, sync=i == len(chunks) - 1)
            tokens = int(self.parallel.sum([float(sum(r.completion_tokens for r in rollouts))])[0])
            self.rescale_gradients(used, self._shape(self.rows_per_step, tokens))
            self.optimizer_step(timer, totals)
        return self.rollout_metrics(rollouts, timer)

    def _shape(self, rows: int, tokens: int | None) -> UpdateShape:
        return UpdateShape(rows=rows, tokens=tokens, max_completion_tokens=self.cfg.task.max_completion_tokens,
                           micro_batch_size=self.cfg.trainer.micro_batch_size)

    # ---------------------------------------------------------------- the paper's steps
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
            rewards = rewards + torch.tensor([self._overlong_penalty(len(c)) for c in completions.completion_ids])
        elif a.truncated == "mask":
            keep = torch.tensor(completions.finished, dtype=torch.bool)
        correct = torch.tensor([bool(x.correct) for x in grades])
        return Rollout(completions, rewards, torch.zeros(len(rewards)), keep, int(zero_std_groups(rewards, g).sum()), correct)

    @property
    def wants_sampler_logprobs(self) -> bool:
        """Ask the sampler for its own log-probs: for the rollout correction, or when it returns them
        anyway (vLLM), so the trainer-sampler gap is logged."""
        return self.cfg.algorithm.rollout_correction != "none" or bool(getattr(self.sampler, "returns_logprobs", False))

    def _overlong_penalty(self, length: int) -> float:
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

    def refill_uninformative_groups(self, rollout: Rollout, timer: PhaseTimer) -> Rollout:
        """DAPO's dynamic sampling: groups whose rewards are all equal are replaced by groups of
        fresh prompts (drawn from the train stream) until the step is full, at most
        ``filter.max_resample_rounds`` rounds; groups still uninformative then stay. Every process
        draws its fresh prompts from one global slice of the stream, so the data position agrees."""
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
            fresh = self.task.train_batch(self.data_position, sum(needs))
            self.data_position += sum(needs)
            mine = fresh[sum(needs[: self.parallel.rank]) : sum(needs[: self.parallel.rank + 1])]
            extra = self.sample_and_score(mine, timer, self.cfg.algorithm.generation_batch_size)
            rounds, samples = rounds + 1, samples + len(extra.rewards)
            extra_groups = len(extra.rewards) // g
            extra_informative = (~zero_std_groups(extra.rewards, g)).tolist() if extra_groups else []
            kept += [(extra, k) for k in range(extra_groups) if extra_informative[k]][:need]
        chosen = (kept + spare)[:n_groups]
        merged = _merge_groups(chosen, g)
        merged.resample_rounds, merged.resampled_samples = rounds, samples
        return merged

    def update(self, rollout: Rollout, timer: PhaseTimer, totals: StepTotals) -> None:
        """On-policy: one update over the whole batch. PPO: ``ppo_epochs`` passes of mini-batches."""
        a = self.cfg.algorithm
        all_rows = rollout.rows()
        self.attach_logprobs(all_rows, timer, need_old=self.off_policy)
        lengths = [len(c) for c in rollout.completions.completion_ids]
        if not self.off_policy:
            tokens = int(self.parallel.sum([float(sum(lengths))])[0])
            self.accumulate_gradients(all_rows, self._shape(self.rows_per_step, tokens), timer, totals)
            self.optimizer_step(timer, totals)
            return
        kept_index = {row: i for i, row in enumerate(i for i in range(len(rollout.rewards)) if bool(rollout.keep[i]))}
        mini = a.mini_batch_size or self.rows_per_step
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        first = self.parallel.rank * len(rollout.rewards)  # this process's rows in the step's global order
        for _ in range(a.ppo_epochs):
            order = torch.randperm(self.rows_per_step, generator=generator).tolist()
            for mini_rows in _chunks(order, mini):
                kept = [kept_index[r - first] for r in mini_rows if r - first in kept_index]
                local_tokens = sum(lengths[r - first] for r in mini_rows if 0 <= r - first < len(lengths))
                tokens = int(self.parallel.sum([float(local_tokens)])[0])
                self.accumulate_gradients(all_rows.subset(kept), self._shape(len(mini_rows), tokens), timer, totals)
                self.optimizer_step(timer, totals)

    @torch.no_grad()
    def attach_logprobs(self, rows: UpdateRows, timer: PhaseTimer, need_old: bool) -> None:
        """Reference log-probs (KL on) and the sampling policy's log-probs (off-policy), once per row."""
        if self.reference is None and not need_old:
            return
        ref, old = [], []
        for chunk in _chunks(list(range(len(rows))), self.cfg.trainer.micro_batch_size):
            batch = self._token_batch(rows, chunk)
            lengths = [len(rows.completion_ids[i]) for i in chunk]
            if self.reference is not None:
                with timer.phase("reference"):
                    ref_logp, _ = token_logprobs(self.reference, batch)
                ref.extend(ref_logp[j, :n].cpu() for j, n in enumerate(lengths))
            if need_old:
                with timer.phase("forward_backward"):
                    old_logp, _ = token_logprobs(self.policy, batch)
                old.extend(old_logp[j, :n].cpu() for j, n in enumerate(lengths))
        rows.ref_logp = ref if self.reference is not None else None
        rows.old_logp = old if need_old else None

    def accumulate_gradients(
        self, rows: UpdateRows, shape: UpdateShape | int, timer: PhaseTimer, totals: StepTotals, sync: bool = True
    ) -> None:
        """Backprop ``rows`` in micro-batches. ``shape`` (the update's global counts: rows sampled
        before filtering, their completion tokens) gives the aggregation's denominator, which makes
        the gradient independent of the split and of what the filter dropped; an int is a row count.
        A denominator not known yet (None) back-propagates numerators: ``rescale_gradients`` follows.
        ``sync`` False: more rows follow before the optimizer step (GRPO's chunks), so processes do
        not exchange gradients yet."""
        if isinstance(shape, int):
            shape = self._shape(shape, sum(len(c) for c in rows.completion_ids))
        denominator = self.loss_agg.denominator(shape) or 1.0
        order = sorted(range(len(rows)), key=lambda i: len(rows.prompt_ids[i]) + len(rows.completion_ids[i]))
        a, beta = self.cfg.algorithm, self.cfg.kl.beta if self.cfg.algorithm.rl else 0.0
        chunks = list(_chunks(order, self.cfg.trainer.micro_batch_size))
        n_micro = self.parallel.micro_batches(len(chunks), sync)
        for k, chunk in enumerate(chunks):
            batch = self._token_batch(rows, chunk)
            width = batch.completion_ids.shape[1]
            old = None if rows.old_logp is None else _pad_rows([rows.old_logp[i] for i in chunk], width).to(self.device)
            ref = None if rows.ref_logp is None else _pad_rows([rows.ref_logp[i] for i in chunk], width).to(self.device)
            sampled = None if rows.sampler_logp is None else _pad_rows([rows.sampler_logp[i] for i in chunk], width).to(self.device)
            with timer.phase("forward_backward"), self.parallel.backward_context(self.train_model, sync and k == n_micro - 1):
                logp, entropy = token_logprobs(self.train_model, batch, with_entropy=True)
                weights = None
                if sampled is not None:
                    behaviour = logp.detach() if old is None else old  # the policy the sampler should have matched
                    self._log_gap(behaviour, sampled, batch.completion_mask, totals)
                    weights = self._rollout_weights(behaviour, sampled, batch.completion_mask)
                loss, stats = policy_loss(
                    logp, batch.completion_mask, rows.advantages[chunk].to(self.device), denominator,
                    old_logp=old, ref_logp=ref, beta=beta, clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
                    ratio_level=a.ratio_level if a.rl else "token", token_weights=weights,
                    aggregation=self.loss_agg, shape=shape,
                )
                self.parallel.backward(loss)
            mask = batch.completion_mask
            totals.loss += float(loss.detach())
            totals.logp_sum += float((logp.detach() * mask).sum())
            totals.entropy_sum += float((entropy * mask).sum()) if entropy is not None else 0.0
            totals.train_tokens += batch.num_tokens
            totals.stats += stats
        for k in range(len(chunks), n_micro):  # another process has more rows: join its gradient exchange
            self._empty_backward(timer, sync and k == n_micro - 1)

    def rescale_gradients(self, used: UpdateShape, final: UpdateShape) -> None:
        """Where the aggregation's denominator was unknown while back-propagating (``used``), scale
        the accumulated gradient by 1 / its value once known (``final``), before clipping."""
        if self.loss_agg.denominator(used) is not None:
            return
        factor = 1.0 / float(self.loss_agg.denominator(final))
        for p in self.policy.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

    def _log_gap(self, trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> None:
        gap = (trainer_logp.detach() - sampler_logp).abs() * mask
        totals.logp_gap_sum += float(gap.sum())
        totals.logp_gap_max = max(totals.logp_gap_max, float(gap.max())) if gap.numel() else totals.logp_gap_max
        totals.logp_gap_tokens += float(mask.sum())

    def _rollout_weights(self, behaviour: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """Importance weights trainer / sampler per token: ``tis`` caps them, ``mis`` zeroes tokens above the cap."""
        a = self.cfg.algorithm
        if a.rollout_correction == "none":
            return None
        weights = torch.exp((behaviour - sampler_logp).clamp(max=20.0)) * mask
        if a.rollout_correction == "tis":
            return weights.clamp(max=a.rollout_correction_cap)
        return torch.where(weights <= a.rollout_correction_cap, weights, torch.zeros_like(weights))

    def _empty_backward(self, timer: PhaseTimer, sync: bool) -> None:
        """A zero-loss forward/backward on one token: adds nothing to the gradient."""
        eos = self.tokenizer.eos_token_id
        batch = make_batch([[eos]], [[eos]], self.tokenizer.pad_token_id, self.device)
        with timer.phase("forward_backward"), self.parallel.backward_context(self.train_model, sync):
            logp, _ = token_logprobs(self.train_model, batch)
            self.parallel.backward(logp.sum() * 0.0)

    def _sum_over_processes(self, totals: StepTotals) -> None:
        """Turn this process's sums into sums over every process (the gradient norm is already global)."""
        if self.parallel.world_size == 1:
            return
        s = totals.stats
        (totals.loss, totals.logp_sum, totals.entropy_sum, train_tokens, s.tokens, s.kl_sum, s.clipped_tokens) = (
            self.parallel.sum([totals.loss, totals.logp_sum, totals.entropy_sum, totals.train_tokens, s.tokens, s.kl_sum,
                               s.clipped_tokens])
        )
        totals.train_tokens = int(train_tokens)

    def optimizer_step(self, timer: PhaseTimer, totals: StepTotals) -> None:
        """Clip and apply the gradient; a non-finite gradient skips the update (and is counted)."""
        with timer.phase("optimizer"):
            norm = self.parallel.clip_grad_norm(self.train_model, self.cfg.optim.max_grad_norm)
            if math.isfinite(norm):
                self.optimizer.step()
                self.sampler.sync_weights(self.policy)  # vLLM: push the new weights (HF: nothing to do)
                self.scheduler.step()
                self.nonfinite_in_row = 0
                totals.grad_norms.append(norm)
                totals.optimizer_steps += 1
            else:
                totals.skipped_steps += 1
                self.nonfinite_in_row += 1
                log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", self.step + 1, self.nonfinite_in_row)
            self.optimizer.zero_grad(set_to_none=True)

    def stop_if_diverged(self) -> None:
        """Stop after ``trainer.max_nonfinite_steps`` skipped updates in a row (checked once the
        step's row is logged, so the skips are on record; no checkpoint is written after it)."""
        limit = self.cfg.trainer.max_nonfinite_steps
        if self.nonfinite_in_row >= limit:
            kept = latest_checkpoint(self.run_dir)
            raise TrainingDiverged(
                f"{self.nonfinite_in_row} non-finite losses or gradients in a row up to step {self.step} "
                f"(trainer.max_nonfinite_steps={limit}); stopped, the last good checkpoint is "
                + (str(kept) if kept else "none (set checkpoint.every to keep some)")
            )

    def rollout_metrics(self, rollouts: list[Rollout], timer: PhaseTimer) -> dict[str, float]:
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
            "completions/truncated_frac": 1.0 - sum(finished) / len(finished),
            "filter/kept_frac": float(keep.float().mean()),
            "filter/mean_abs_adv": float(advantages.abs().mean()),
            "filter/zero_std_group_frac": zero_std / groups,
            **({"filter/resample_rounds": resample[0], "filter/resampled_samples": resample[1]} if self.cfg.filter.dynamic else {}),
            "throughput/sampling_tok_s": sum(lengths) / max(1e-9, timer.seconds["sampling"]),
        }

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy on the training task (``eval/...``) and on every ``eval.tasks`` entry
        (``eval/<name>/...``, e.g. out-of-distribution benchmarks)."""
        start = time.perf_counter()
        examples = self.task.test_examples()
        if self.cfg.task.n_test:
            examples = examples[: self.cfg.task.n_test]
        metrics, shown = self._evaluate_task("eval", self.task, examples)
        for name, task in self.eval_tasks.items():
            extra, _ = self._evaluate_task(f"eval/{name}", task, task.test_examples())
            metrics.update(extra)
        metrics["eval/time_s"] = time.perf_counter() - start
        self.writer.log("eval", step, metrics)
        self.writer.log_completions(step, shown)
        return metrics

    def _evaluate_task(self, prefix: str, task: Any, examples: list[Example]) -> tuple[dict[str, float], list]:
        """Greedy accuracy; sampled pass@1 over ``eval.samples_per_problem`` samples per problem at the
        train temperature, and unbiased pass@k for each k in ``eval.pass_k``."""
        e = self.cfg.eval
        examples = self.parallel.shard(examples)  # each process evaluates its share; sums are added up
        prompts = [ex.prompt for ex in examples]
        metrics: dict[str, float] = {}
        shown: list[tuple[str, str, float]] = []
        for mode in ("greedy", "sampled"):
            if not e[mode]:
                continue
            n = 1 if mode == "greedy" else e.samples_per_problem
            out = (self.sampler.generate(prompts, n=n, greedy=mode == "greedy", batch_size=e.batch_size)
                   if prompts else Completions([], [], [], []))
            grades = task.grade(out.texts, [examples[i // n] for i in range(len(out))]) if len(out) else []
            scores = [float(x.correct) for x in grades]  # the task's own is_correct, whatever its reward
            correct_per_problem = [sum(scores[i * n : (i + 1) * n]) for i in range(len(examples))]
            pass_at = [sum(pass_at_k(n, int(c), k) for c in correct_per_problem) for k in e.pass_k] if n > 1 else []
            total, correct, length, finished, problems, *pass_sums = self.parallel.sum(
                [len(scores), sum(scores), sum(len(c) for c in out.completion_ids), sum(out.finished), len(examples), *pass_at]
            )
            metrics[f"{prefix}/{mode}_acc"] = correct / total
            metrics[f"{prefix}/{mode}_mean_length"] = length / total
            metrics[f"{prefix}/{mode}_truncated_frac"] = 1.0 - finished / total
            for k, value in zip(e.pass_k if n > 1 else [], pass_sums):
                metrics[f"{prefix}/pass@{k}"] = value / problems
            if mode == "sampled" or not shown:
                shown = list(zip([examples[i // n].prompt for i in range(len(out))], out.texts, scores))
                shown = shown[: self.cfg.logger.log_completions]
        return metrics, shown

    # ---------------------------------------------------------------- state
    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "data_position": self.data_position,
            # Under DeepSpeed each process holds a shard of the optimizer state (resume is refused there).
            "optimizer": None if self.parallel.uses_deepspeed else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "nonfinite_in_row": self.nonfinite_in_row,
            "train_seconds": self.train_seconds,
            "phase_totals": dict(self.phase_totals),
            "wandb_run_id": self.writer.wandb_run_id,
        }

    def save(self) -> None:
        """Process 0 checkpoints, then hands W&B the rows the checkpoint covers (see
        metrics.MetricsWriter); every process's sampling RNG is kept so a resume samples the same."""
        rng_per_process = self.parallel.gather(rng_state()) if self.parallel.world_size > 1 else None
        if not self.parallel.is_main:
            return
        state = self.trainer_state()
        if rng_per_process:
            state["rng_per_process"] = rng_per_process
        save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, state, self.cfg.checkpoint.keep)
        self.writer.commit()

    def _checkpoint_to_resume(self) -> Path | None:
        """The checkpoint ``resume=true`` continues from (None: start at step 0).

        Refuses a run directory that already holds a run unless resuming it, and a resume whose
        settings differ from the run's own (config.yaml) where that would change the results.
        """
        latest = latest_checkpoint(self.run_dir)
        logged = read_metrics(self.run_dir) if (self.run_dir / METRICS_FILE).exists() else []
        if not self.cfg.resume:
            if latest or logged:
                done = f"a checkpoint at step {checkpoint_step(latest)}" if latest else f"metrics up to step {logged[-1]['step']}"
                raise ConfigError(
                    f"{self.run_dir} already holds a run ({done}); add resume=true to continue it, "
                    "or choose another hydra.run.dir"
                )
            return None
        saved = self.run_dir / "config.yaml"
        conflicts = resume_conflicts(OmegaConf.load(saved), self.cfg) if saved.exists() and (latest or logged) else []
        if conflicts:
            raise ConfigError(
                f"resume=true in {self.run_dir}, but {conflicts[0]}"
                + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
                + "; resume with the run's settings, or choose another hydra.run.dir"
            )
        return latest

    def _restore(self, path: Path | None) -> str | None:
        """Continue from checkpoint ``path`` (None: from step 0); returns the W&B run id to continue.

        Rows logged after the checkpoint are dropped from metrics.jsonl: the resumed run computes
        those steps again, so every step is logged exactly once.
        """
        if path is None:
            log.info("resume: no checkpoint in %s, starting from step 0", self.run_dir)
            if self.parallel.is_main:
                truncate_metrics(self.run_dir, -1)
            return None
        state = load_trainer_state(path)
        self.policy.load_state_dict(load_model(str(path), self.cfg.model).state_dict())
        self.sampler.sync_weights(self.policy)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        per_process = state.get("rng_per_process")
        if self.parallel.world_size > 1 and per_process and len(per_process) == self.parallel.world_size:
            set_rng_state(per_process[self.parallel.rank])
        self.step, self.data_position = state["step"], state["data_position"]
        self.nonfinite_in_row, self.train_seconds = state["nonfinite_in_row"], state["train_seconds"]
        self.phase_totals.update(state["phase_totals"])
        if self.parallel.is_main:
            truncate_metrics(self.run_dir, self.step)
        for row in read_metrics(self.run_dir, kind="eval"):  # for the summary's base/ and final/ values
            if row["step"] <= self.step:
                self.evals[row["step"]] = {k: v for k, v in row.items() if k not in ("kind", "step")}
        log.info("resumed from %s (step %d)", path, self.step)
        return state.get("wandb_run_id")

    # ---------------------------------------------------------------- helpers
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _token_batch(self, rows: UpdateRows, chunk: list[int]):
        return make_batch(
            [rows.prompt_ids[i] for i in chunk], [rows.completion_ids[i] for i in chunk], self.tokenizer.pad_token_id, self.device
        )

    def summary(self, status: str, evals: dict[int, dict[str, float]], wall_clock_s: float) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {
            "status": status,
            "algorithm": cfg.algorithm.name,
            "kl": cfg.kl.name,
            "filter": cfg.filter.name,
            "task": cfg.task.name,
            "model": cfg.model.name,
            "seed": cfg.seed,
            "steps": self.step,
            "wall_clock_s": wall_clock_s,
            "train_time_s": self.train_seconds,
        }
        for name in ("sampling", "scoring", "reference", "forward_backward", "optimizer"):
            out[f"train_time/{name}_s"] = self.phase_totals.get(name, 0.0)  # time/<phase>_s: per step
        if getattr(self, "provenance", None) is not None:
            out["provenance"] = self.provenance  # code commit, library versions, device
        if evals:
            first, last = evals[min(evals)], evals[max(evals)]
            for key, value in last.items():
                out[f"final/{key.split('/', 1)[1]}"] = value
            if min(evals) == 0:
                for key, value in first.items():
                    out[f"base/{key.split('/', 1)[1]}"] = value
        return out
