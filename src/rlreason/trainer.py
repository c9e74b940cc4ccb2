"""One training loop for every arm; the arms differ only in config.

The trainer wires the parts together and runs the loop, the evaluations, the checkpoints and the
summary. What a step does is the schedule's (``rlreason.schedules``: SFT, interleaved GRPO,
preemptive DASH, PPO epochs and mini-batches); rollouts, the learner, evaluation and resume each
live in their own module (``rollout``, ``learner``, ``evaluation``, ``resume``).

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
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from rlreason.checkpoint import latest_checkpoint, rng_state, save_checkpoint, seed_everything
from rlreason.config import ADVANTAGES, LOSS_AGGS, resolve_model_path, validate, with_typed_tasks
from rlreason.distributed import Parallel, get_parallel
from rlreason.errors import ConfigError, TrainingDiverged
from rlreason.evaluation import Evaluator
from rlreason.learner import Learner, PhaseTimer, StepTotals, peak_memory_gb, reset_peak_memory
from rlreason.loss_agg import UpdateShape
from rlreason.metrics import MetricsWriter, NullWriter
from rlreason.modeling import (AdaptersOffReference, FrozenReference, Reference, export_merged, is_lora, load_policy,
                               load_reference, load_tokenizer, trainable_parameters)
from rlreason.progress import Progress
from rlreason.provenance import run_provenance, save_run_config
from rlreason.registry import resolve
from rlreason.resume import checkpoint_to_resume, restore, trainer_state
from rlreason.rollout import Rollouts
from rlreason.sampling import build_sampler
from rlreason.schedules import schedule_class
from rlreason.tasks import Example, build_task

log = logging.getLogger(__name__)

# The phases a step's time is split into (time/<phase>_s per step, train_time/<phase>_s in the summary).
PHASES = ("sampling", "scoring", "reference", "forward_backward", "optimizer")


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
        resume_from = checkpoint_to_resume(self.run_dir, cfg)  # before any slow loading: a conflict fails at once
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.schedule = schedule_class(cfg.algorithm.schedule)(cfg)
        hub_tokenizer = load_tokenizer(resolve_model_path(cfg.model.name_or_path)) if cfg.model.name_or_path else None
        self.task = build_task(cfg.task, tokenizer=hub_tokenizer, sft_source=cfg.sft.source, cache_dir=cfg.cache_dir)
        self.eval_tasks = {name: build_task(task_cfg, tokenizer=hub_tokenizer, cache_dir=cfg.cache_dir, field=f"eval.tasks.{name}")
                           for name, task_cfg in cfg.eval.tasks.items()}
        advantage = resolve(cfg.algorithm.advantage, ADVANTAGES, "algorithm.advantage")
        loss_agg = resolve(cfg.algorithm.loss_agg, LOSS_AGGS, "algorithm.loss_agg")()
        unknown_tokens = UpdateShape(rows=1, tokens=None, max_completion_tokens=1, micro_batch_size=1)
        if (self.parallel.uses_deepspeed and not self.schedule.tokens_known_before_backward
                and loss_agg.denominator(unknown_tokens) is None):
            raise ConfigError(
                f"algorithm.loss_agg={cfg.algorithm.loss_agg} divides by the step's completion tokens, which "
                f"algorithm.schedule={cfg.algorithm.schedule} knows only after its last backward, and DeepSpeed steps "
                "inside that backward, so the gradient cannot be rescaled: use DDP or algorithm.schedule=preemptive")
        # Process 0 builds a missing cached base model: transformers' save_pretrained writes nothing on other ranks.
        with self.parallel.main_process_first():
            self.policy, self.tokenizer, self.base_path = load_policy(cfg, self.task, tokenizer=hub_tokenizer)
        self.device = next(self.policy.parameters()).device
        kl_on = self.schedule.rl and cfg.kl.beta > 0
        # With LoRA the reference is the policy with its adapters disabled: no second model is loaded.
        reference_model = (load_reference(self.base_path, cfg.model, dtype=self.parallel.compute_dtype)
                           if kl_on and not is_lora(self.policy) else None)
        optimizer = torch.optim.AdamW(
            trainable_parameters(self.policy),  # with LoRA: the adapters only
            lr=cfg.optim.lr,
            betas=(cfg.optim.beta1, cfg.optim.beta2),
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self.step = 0
        self.data_position = 0
        self.train_seconds = 0.0
        self.peak_memory_gb = 0.0  # the largest memory/peak_gb of the steps this process ran
        self.phase_totals: dict[str, float] = defaultdict(float)
        self.evals: dict[int, dict[str, float]] = {}
        if self.parallel.device is not None:  # a GPU (this process's one under accelerate launch)
            self.device = self.parallel.device
            for model in (self.policy, reference_model):
                if model is not None:
                    model.to(self.device)
        self.reference: Reference | None = None
        if reference_model is not None:  # in the training dtype, under the same autocast
            self.reference = FrozenReference(self.parallel.prepare_reference(reference_model))
        elif kl_on:
            self.reference = AdaptersOffReference(self.policy)
        # After the move: a vLLM engine takes its weights (and their fingerprint) from the policy where it trains.
        self.sampler = build_sampler(cfg.sampler, self.policy, self.tokenizer, model_path=self.base_path, seed=cfg.seed)
        self.learner = Learner(cfg, self.policy, self.reference, optimizer, self.scheduler, self.sampler, self.parallel,
                               self.tokenizer, self.device, loss_agg, rl=self.schedule.rl)
        self.rollouts = Rollouts(cfg, self.sampler, self.task, self.parallel, advantage)
        self.evaluator = Evaluator(cfg, self.sampler, self.task, self.eval_tasks, self.parallel)
        # Seeded after building, so whether the base model came from the cache or was just built
        # (its warm start draws random numbers) does not change what training samples.
        seed_everything(cfg.seed)
        if self.parallel.world_size > 1:
            # Each process samples different completions; the same seed reproduces them.
            torch.manual_seed(cfg.seed * 1_000_003 + self.parallel.rank)
        wandb_id = restore(self, resume_from) if cfg.resume else None
        # The model training forwards go through (DDP/DeepSpeed wrapper; the policy itself on one process).
        self.learner.train_model, self.learner.optimizer = self.parallel.prepare(
            self.policy, optimizer, cfg.trainer.micro_batch_size, cfg.optim.max_grad_norm
        )
        if self.parallel.is_main:
            # W&B waits for checkpoints only when there are periodic ones to resume from.
            self.provenance = run_provenance(self.run_dir)  # before config.yaml is rewritten: a resume reads the old one
            self.writer = MetricsWriter(self.run_dir, cfg, wandb_run_id=wandb_id, hold_until_commit=cfg.checkpoint.every > 0,
                                        provenance=self.provenance)
            save_run_config(cfg, self.run_dir / "config.yaml", self.provenance)
        else:
            self.writer = NullWriter()

    def next_examples(self, n: int) -> list[Example]:
        """The next ``n`` prompts of the train stream (the same on every process); advances the data position."""
        examples = self.task.train_batch(self.data_position, n)
        self.data_position += len(examples)
        return examples

    def _lr_factor(self, update: int) -> float:
        o = self.cfg.optim
        total = max(1, self.cfg.trainer.steps * self.schedule.updates_per_step())
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
            if cfg.checkpoint.merged_export and self.parallel.is_main:
                log.info("merged model written to %s", export_merged(self.policy, self.tokenizer, self.run_dir / "merged"))
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
        """One step of the schedule, with its loss, optimizer and timing metrics."""
        timer, totals = PhaseTimer(self.device), StepTotals()
        self.learner.current_step = self.step + 1
        reset_peak_memory(self.device)
        step_start = time.perf_counter()
        metrics = self.schedule.step(self, timer, totals)
        self.step += 1
        # Process 0's clock on every process, so time-based decisions agree across processes.
        elapsed = self.parallel.broadcast(time.perf_counter() - step_start)
        self.train_seconds += elapsed
        for name, seconds in timer.seconds.items():
            self.phase_totals[name] += seconds
        self.learner.sum_over_processes(totals)
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
        for name in PHASES:
            metrics[f"time/{name}_s"] = timer.seconds.get(name, 0.0)
        metrics["memory/peak_gb"] = peak_memory_gb(self.device)
        self.peak_memory_gb = max(self.peak_memory_gb, metrics["memory/peak_gb"])
        return metrics

    def stop_if_diverged(self) -> None:
        """Stop after ``trainer.max_nonfinite_steps`` skipped updates in a row (checked once the
        step's row is logged, so the skips are on record; no checkpoint is written after it)."""
        limit = self.cfg.trainer.max_nonfinite_steps
        if self.learner.nonfinite_in_row >= limit:
            kept = latest_checkpoint(self.run_dir)
            raise TrainingDiverged(
                f"{self.learner.nonfinite_in_row} non-finite losses or gradients in a row up to step {self.step} "
                f"(trainer.max_nonfinite_steps={limit}); stopped, the last good checkpoint is "
                + (str(kept) if kept else "none (set checkpoint.every to keep some)")
            )

    # ---------------------------------------------------------------- evaluation and state
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out accuracy on the training task (``eval/...``) and on every ``eval.tasks`` entry
        (``eval/<name>/...``, e.g. out-of-distribution benchmarks), logged at ``step``."""
        metrics, shown = self.evaluator.evaluate()
        self.writer.log("eval", step, metrics)
        self.writer.log_completions(step, shown)
        return metrics

    def save(self) -> None:
        """Process 0 checkpoints, then hands W&B the rows the checkpoint covers (see
        metrics.MetricsWriter); every process's sampling RNG is kept so a resume samples the same."""
        rng_per_process = self.parallel.gather(rng_state()) if self.parallel.world_size > 1 else None
        if not self.parallel.is_main:
            return
        state = trainer_state(self)
        if rng_per_process:
            state["rng_per_process"] = rng_per_process
        save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, state, self.cfg.checkpoint.keep)
        self.writer.commit()

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
        for name in PHASES:
            out[f"train_time/{name}_s"] = self.phase_totals.get(name, 0.0)  # time/<phase>_s: per step
        out["memory/peak_gb"] = self.peak_memory_gb
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
