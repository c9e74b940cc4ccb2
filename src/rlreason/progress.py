"""Terminal progress: a rich progress bar during training and a summary table at the end."""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

log = logging.getLogger(__name__)


class Progress:
    """Shows the step, reward and seconds per step; evaluation results are logged as lines."""

    def __init__(self, total: int, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self._bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._bar.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> "Progress":
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        parts = []
        if "reward/mean" in metrics:
            parts.append(f"reward {metrics['reward/mean']:.3f}")
        parts.append(f"nll {metrics['train/nll']:.3f}")
        parts.append(f"{metrics['time/step_s']:.2f} s/step")
        self._bar.update(self._task, completed=step, info="  ".join(parts))

    def note(self, step: int, eval_metrics: dict[str, float]) -> None:
        text = "  ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in eval_metrics.items() if k != "eval/time_s")
        log.info("eval @ step %d: %s", step, text)


def print_summary(summary: dict[str, Any]) -> None:
    """The final table a user reads after ``make train``."""
    table = Table(title=f"rlreason: {summary.get('algorithm')} kl={summary.get('kl')} filter={summary.get('filter')}")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("final", justify="right")
    for key in ("greedy_acc", "sampled_acc", "greedy_mean_length", "sampled_mean_length"):
        base, final = summary.get(f"base/{key}"), summary.get(f"final/{key}")
        if final is not None:
            table.add_row(f"held-out {key.replace('_', ' ')}", "-" if base is None else f"{base:.3f}", f"{final:.3f}")
    table.add_row("steps", "", str(summary.get("steps")))
    table.add_row("train time (s)", "", f"{summary.get('train_time_s', 0):.1f}")
    for phase in ("sampling", "reference", "forward_backward", "optimizer"):
        table.add_row(f"  {phase} (s)", "", f"{summary.get(f'train_time/{phase}_s', 0):.1f}")
    Console().print(table)
