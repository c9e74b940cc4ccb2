"""What ``train.py`` does with a composed config: validate, train, summarise, report errors.

A user error (bad config value, data file, model path, diverged loss) is printed as one line,
the run directory keeps what was finished (metrics, checkpoints) plus an ``error.txt``, and in a
multirun the other jobs go on. Any other exception (a bug, out of memory) is recorded the same way,
with its traceback; a single run then re-raises it, a multirun job returns so that every launcher
(basic, joblib, submitit) runs the remaining jobs. The sweep's failures are then reported at its
end, with a non-zero exit status, by ``rlreason.sweep_status.SweepStatus``.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rlreason.config import validate
from rlreason.errors import UserError

log = logging.getLogger("rlreason")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate ``cfg``, train in ``run_dir`` and return the summary (also in summary.json)."""
    from rlreason.distributed import launched_world_size

    validate(cfg, world_size=launched_world_size())
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from rlreason.distributed import get_parallel
    from rlreason.trainer import Trainer  # after validation: a config error should not wait for torch

    parallel = get_parallel()
    run_dir = Path(parallel.broadcast(str(run_dir)))  # under accelerate launch: process 0's run folder
    summary = Trainer(cfg, run_dir, parallel).fit()
    return summary


def run_and_report(cfg: DictConfig, run_dir: Path, multirun: bool) -> float | None:
    """``run`` for the command line: the summary table on success, one error line on bad input."""
    from rlreason.distributed import launched_rank

    main_process = launched_rank() == 0  # under accelerate launch, only process 0 writes and reports
    if not main_process:
        log.setLevel(logging.WARNING)
    try:
        summary = run(cfg, run_dir)
    except UserError as exc:
        message = f"error: {exc}"
        print(message, file=sys.stderr)
        if main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(message + "\n")
            _mark_failed(run_dir, str(exc))
        if multirun:
            return None
        sys.exit(2)
    except Exception as exc:
        log.exception("run failed")
        if main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            _mark_failed(run_dir, f"{type(exc).__name__}: {exc}")
        if multirun:
            return None
        raise
    from rlreason.progress import print_summary

    if main_process:
        print_summary(summary)
    return summary.get("final/greedy_acc")


def _mark_failed(run_dir: Path, error: str) -> None:
    """Record the failure in summary.json (keeping what a partial run already wrote)."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(status="failed", error=error)
    path.write_text(json.dumps(summary, indent=2))
