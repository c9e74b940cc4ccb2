"""Exact resume: what a checkpoint holds besides the weights, which checkpoint a run continues
from, and putting the trainer back where it was (weights, optimizer, lr schedule, every RNG,
the data position, the loop's counters and the logged metrics).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from rlreason.checkpoint import checkpoint_step, latest_checkpoint, load_trainer_state, rng_state, set_rng_state
from rlreason.config import resume_conflicts
from rlreason.errors import ConfigError
from rlreason.metrics import METRICS_FILE, read_metrics, truncate_metrics
from rlreason.modeling import load_checkpoint_weights

if TYPE_CHECKING:
    from rlreason.trainer import Trainer

log = logging.getLogger(__name__)


def checkpoint_to_resume(run_dir: Path, cfg: DictConfig) -> Path | None:
    """The checkpoint ``resume=true`` continues from (None: start at step 0).

    Refuses a run directory that already holds a run unless resuming it, and a resume whose
    settings differ from the run's own (config.yaml) where that would change the results.
    """
    latest = latest_checkpoint(run_dir)
    logged = read_metrics(run_dir) if (run_dir / METRICS_FILE).exists() else []
    if not cfg.resume:
        if latest or logged:
            done = f"a checkpoint at step {checkpoint_step(latest)}" if latest else f"metrics up to step {logged[-1]['step']}"
            raise ConfigError(
                f"{run_dir} already holds a run ({done}); add resume=true to continue it, "
                "or choose another hydra.run.dir"
            )
        return None
    saved = run_dir / "config.yaml"
    conflicts = resume_conflicts(OmegaConf.load(saved), cfg) if saved.exists() and (latest or logged) else []
    if conflicts:
        raise ConfigError(
            f"resume=true in {run_dir}, but {conflicts[0]}"
            + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
            + "; resume with the run's settings, or choose another hydra.run.dir"
        )
    return latest


def trainer_state(trainer: "Trainer") -> dict[str, Any]:
    """Everything but the weights that a resume needs to continue exactly."""
    return {
        "step": trainer.step,
        "data_position": trainer.data_position,
        # Under DeepSpeed each process holds a shard of the optimizer state (resume is refused there).
        "optimizer": None if trainer.parallel.uses_deepspeed else trainer.learner.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "rng": rng_state(),
        "nonfinite_in_row": trainer.learner.nonfinite_in_row,
        "train_seconds": trainer.train_seconds,
        "phase_totals": dict(trainer.phase_totals),
        "peak_memory_gb": trainer.peak_memory_gb,  # the summary's peak covers the steps before the resume too
        "wandb_run_id": trainer.writer.wandb_run_id,
    }


def restore(trainer: "Trainer", path: Path | None) -> str | None:
    """Continue from checkpoint ``path`` (None: from step 0); returns the W&B run id to continue.

    Rows logged after the checkpoint are dropped from metrics.jsonl: the resumed run computes
    those steps again, so every step is logged exactly once.
    """
    run_dir, parallel = trainer.run_dir, trainer.parallel
    if path is None:
        log.info("resume: no checkpoint in %s, starting from step 0", run_dir)
        if parallel.is_main:
            truncate_metrics(run_dir, -1)
        return None
    state = load_trainer_state(path)
    load_checkpoint_weights(trainer.policy, path, trainer.cfg.model)  # with LoRA: the adapter
    trainer.sampler.sync_weights(trainer.policy)
    trainer.learner.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    per_process = state.get("rng_per_process")
    if parallel.world_size > 1 and per_process and len(per_process) == parallel.world_size:
        set_rng_state(per_process[parallel.rank])
    trainer.step, trainer.data_position = state["step"], state["data_position"]
    trainer.learner.nonfinite_in_row, trainer.train_seconds = state["nonfinite_in_row"], state["train_seconds"]
    trainer.phase_totals.update(state["phase_totals"])
    trainer.peak_memory_gb = state.get("peak_memory_gb", 0.0)  # absent from checkpoints written before it was kept
    if parallel.is_main:
        truncate_metrics(run_dir, trainer.step)
    for row in read_metrics(run_dir, kind="eval"):  # for the summary's base/ and final/ values
        if row["step"] <= trainer.step:
            trainer.evals[row["step"]] = {k: v for k, v in row.items() if k not in ("kind", "step")}
    log.info("resumed from %s (step %d)", path, trainer.step)
    return state.get("wandb_run_id")
