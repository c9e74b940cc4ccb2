"""The one metrics writer: every row goes to ``metrics.jsonl`` and, when enabled, to W&B.

Metric names are stable and namespaced (``reward/mean``, ``time/sampling_s``, ``eval/greedy_acc``)
so dashboards and the analysis notebooks can rely on them. W&B never blocks a run: with no
credentials it runs offline (and says how to sync), and if it cannot start at all training goes
on with the local files and one warning.

Resume: W&B refuses a step lower than one it already has, so W&B must never hold a step that a
resume from the last checkpoint computes again. When the run checkpoints periodically, W&B rows
are therefore held back until the checkpoint covering them is written (``commit``); a crash
loses only rows the resumed run logs again, and ``metrics.jsonl`` is cut back to the checkpoint
(``truncate_metrics``). The W&B dashboard lags by at most ``checkpoint.every`` steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlreason.config import arm_label
from rlreason.errors import OutputError, first_line
from rlreason.provenance import collect_provenance

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def run_group(cfg: DictConfig) -> str:
    """The W&B group, from the ablation axes: one group per arm, seeds inside it."""
    return arm_label(cfg.algorithm.name, cfg.kl.name, cfg.filter.name, cfg.sft.source)


def run_tags(cfg: DictConfig) -> list[str]:
    return [
        f"algorithm:{cfg.algorithm.name}",
        f"kl:{cfg.kl.name}",
        f"filter:{cfg.filter.name}",
        f"task:{cfg.task.name}",
        f"model:{cfg.model.name}",
        *cfg.tags,
    ]


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become null instead of invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Writes each metrics row once to every sink.

    ``hold_until_commit``: W&B rows wait for ``commit()`` (the trainer commits after each
    checkpoint); metrics.jsonl always gets them at once.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: DictConfig,
        wandb_run_id: str | None = None,
        hold_until_commit: bool = False,
        provenance: dict[str, Any] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self.hold_until_commit = hold_until_commit
        self._held: list[tuple[int, dict[str, Any]]] = []
        # Code commit, library versions, device (rlreason.provenance): in the W&B config beside the run's config.
        self.provenance = provenance if provenance is not None else collect_provenance()
        self.wandb_run = self._start_wandb(cfg, wandb_run_id) if cfg.logger.wandb else None

    @property
    def wandb_run_id(self) -> str | None:
        return None if self.wandb_run is None else self.wandb_run.id

    def _start_wandb(self, cfg: DictConfig, run_id: str | None) -> Any:
        from rlreason.wandb_history import credentials_available

        mode = os.environ.get("WANDB_MODE") or cfg.logger.mode
        if mode == "auto":
            mode = "online" if credentials_available() else "offline"
        if mode == "disabled":
            return None
        try:
            import wandb

            run = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=run_group(cfg),
                tags=run_tags(cfg),
                config={**OmegaConf.to_container(cfg, resolve=True), "provenance": self.provenance},
                dir=str(self.run_dir),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(silent=True, init_timeout=cfg.logger.init_timeout_s),
            )
        except Exception as exc:  # W&B unreachable or refusing the key: keep training on local logs
            log.warning("W&B could not start (%s); logging to %s only", first_line(exc), self.path)
            return None
        if mode == "offline":
            log.info("W&B is offline (no credentials): sync later with `wandb sync %s`", Path(run.dir).parent)
        return run

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        """One row: ``kind`` is train or eval; ``step`` the optimizer step it was taken after."""
        row = {"kind": kind, "step": step, **{k: _clean(v) for k, v in metrics.items()}}
        try:
            self._file.write(json.dumps(row) + "\n")
        except OSError as exc:
            raise OutputError(
                f"could not write {self.path} at step {step} ({exc.strerror or first_line(exc)}); the rows "
                "before it and the last checkpoint are intact: resume=true continues from that checkpoint"
            ) from exc
        self._to_wandb(step, metrics)

    def log_completions(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        """A small table of sampled completions (prompt, completion, reward), to W&B only."""
        if self.wandb_run is None or not rows:
            return
        import wandb

        table = wandb.Table(columns=["step", "prompt", "completion", "reward"], data=[[step, *r] for r in rows])
        self._to_wandb(step, {"eval/completions": table})

    def _to_wandb(self, step: int, metrics: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        if self.hold_until_commit:
            self._held.append((step, metrics))
        else:
            self.wandb_run.log(metrics, step=step)

    def commit(self) -> None:
        """Send the held W&B rows: a checkpoint now covers them, so no resume logs them again."""
        if self.wandb_run is None or not self._held:
            return
        for step, metrics in self._held:
            self.wandb_run.log(metrics, step=step, commit=False)
        self.wandb_run.log({}, step=self._held[-1][0], commit=True)  # write the last step's row now
        self._held.clear()

    def finish(self, summary: dict[str, Any]) -> None:
        """Write summary.json and close the sinks; a completed run sends its held rows to W&B."""
        if summary.get("status") == "completed":
            self.commit()
        elif self._held:
            first, last = self._held[0][0], self._held[-1][0]
            held = f"step {first} is" if first == last else f"steps {first}-{last} are"
            log.warning("W&B has the steps up to the last checkpoint; %s only in %s (a resume computes them again)",
                        held, self.path)
        try:
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2))
        except OSError as exc:  # a full disk: W&B still gets the summary below
            log.warning("could not write %s (%s)", self.run_dir / SUMMARY_FILE, exc.strerror or first_line(exc))
        self.close(summary)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:  # the failed write's buffered remainder; log() has already reported it
                pass
        if self.wandb_run is not None:
            if summary:
                for key, value in summary.items():
                    if isinstance(value, (int, float, str)):
                        self.wandb_run.summary[key] = value
            self.wandb_run.finish(exit_code=0 if summary and summary.get("status") == "completed" else 1)
            self.wandb_run = None


class NullWriter:
    """The writer of processes other than 0 under ``accelerate launch``: process 0 logs for all."""

    wandb_run_id = None

    def log(self, kind: str, step: int, metrics: dict[str, Any]) -> None:
        pass

    def log_completions(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        pass

    def commit(self) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass

    def close(self, summary: dict[str, Any] | None = None) -> None:
        pass


def truncate_metrics(run_dir: Path | str, last_step: int) -> None:
    """Keep only rows up to ``last_step`` (the checkpoint a run resumes from), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [row for row in read_metrics(run_dir) if row["step"] <= last_step]
    tmp = path.with_name(f".{METRICS_FILE}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)


def read_metrics(run_dir: Path | str, kind: str | None = None) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (optionally one kind); a torn last line is skipped."""
    rows = []
    path = Path(run_dir) / METRICS_FILE
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows
