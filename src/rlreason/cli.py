"""What ``train.py`` does with a composed config: validate, train, summarise, report errors.

A user error (bad config value, data file, model path, diverged loss, full disk) is printed as
one line, the run directory keeps what was finished (metrics, checkpoints) plus an
``error.txt``, and in a multirun the other jobs go on. Any other exception (a bug, out of memory)
is recorded the same way, with its traceback; a single run then re-raises it, a multirun job
prints one line and returns so that every launcher (basic, joblib, submitit) runs the remaining
jobs. The sweep's failures are then reported at its end, with a non-zero exit status, by
``rlreason.sweep_status.SweepStatus``. Hydra's own errors for a bad command line (an unknown
option or key, a wrong type) are turned into one line as well, and SIGTERM (what a scheduler
sends before it preempts a job) stops the run cleanly (``command_line``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig

from rlreason.config import validate
from rlreason.errors import UserError, first_line
from rlreason.provenance import collect_provenance

log = logging.getLogger("rlreason")

ERROR_FILE = "error.txt"


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
    finished = finished_summary(cfg, run_dir)
    if finished is not None:
        log.info("resume: %s already completed its %d steps; nothing to do", run_dir, finished["steps"])
        return finished
    summary = Trainer(cfg, run_dir, parallel).fit()
    return summary


def finished_summary(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """With ``resume=true``, the summary of a run that already completed what ``cfg`` asks (its steps,
    or its training-time budget), so a resumed sweep skips finished jobs instead of reloading them;
    None otherwise (a resume whose settings conflict with the run's still fails, in the Trainer)."""
    path = run_dir / "summary.json"
    if not cfg.resume or not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed":
        return None
    from rlreason.resume import checkpoint_to_resume

    checkpoint_to_resume(run_dir, cfg)  # the same refusal as the Trainer's when the settings differ
    budget = cfg.trainer.max_train_seconds
    done = summary.get("steps", -1) >= cfg.trainer.steps or (budget is not None and summary.get("train_time_s", 0.0) >= budget)
    return summary if done else None


def run_and_report(cfg: DictConfig, run_dir: Path, multirun: bool) -> float | None:
    """``run`` for the command line: the summary table on success, one error line on failure."""
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
            _record_failure(run_dir, message + "\n", str(exc))
        if multirun:
            return None
        sys.exit(2)
    except Exception as exc:
        log.exception("run failed")
        error = f"{type(exc).__name__}: {first_line(exc)}"
        if main_process:
            _record_failure(run_dir, traceback.format_exc(), error)
        if multirun:
            print(f"error: {error} (traceback in {run_dir / ERROR_FILE})", file=sys.stderr)
            return None
        raise
    from rlreason.progress import print_summary

    if main_process:
        print_summary(summary)
    return summary.get("final/greedy_acc")


def _record_failure(run_dir: Path, details: str, error: str) -> None:
    """error.txt, and the failure in summary.json (keeping what a partial run already wrote).
    A completed run's summary stays as it is: a refused second attempt in its folder (say, a resume
    with other settings) must not turn finished work into a failure. Best effort: on a full disk the
    error line on stderr is the record."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(details)
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if summary.get("status") == "completed":
            return
        summary.update(status="failed", error=error)
        summary.setdefault("provenance", collect_provenance())  # a run that failed before the trainer wrote it
        path.write_text(json.dumps(summary, indent=2))
    except OSError:
        pass


def hydra_error_line(exc: CompactHydraException) -> str:
    """Hydra's several-line message as one line: its first line, the options, the cause."""
    line = first_line(exc).rstrip(".")
    if isinstance(exc, OverrideParseException) and exc.override not in line:
        line = f"cannot parse override {exc.override!r}: {line}"
    if isinstance(exc, MissingConfigException) and exc.options:
        line += f" (available: {', '.join(exc.options)})"
    if exc.__cause__ is not None:
        line += f": {first_line(exc.__cause__)}"
    return line


def stop_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143): the loop's ``finally`` writes summary.json and closes W&B
    (flushing what it has), a checkpoint being written is discarded whole, and the process exits
    quietly. By default SIGTERM ends Python at once, and wandb-core loses its unwritten buffer."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def command_line(main: Callable[[], Any]) -> None:
    """Run train.py's ``@hydra.main`` function: Hydra's command-line errors as one line (exit 2),
    SIGTERM as a clean stop (exit 143).

    Hydra prints its errors over several lines plus a hint about HYDRA_FULL_ERROR, or re-raises
    them when HYDRA_FULL_ERROR=1 is set, which is how they are caught here; a user who sets it
    keeps Hydra's full traces.
    """
    stop_cleanly_on_sigterm()
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except CompactHydraException as exc:
        print(f"error: {hydra_error_line(exc)}", file=sys.stderr)
        sys.exit(2)
