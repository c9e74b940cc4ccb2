"""The outcome of a sweep, from each job's summary.json: every job ran, which ones failed.

Jobs record their own failure (``rlreason.cli``) and return, so a launcher never stops a sweep
for one bad job. This Hydra callback (``hydra.callbacks`` in conf/config.yaml) then says at the
end how many jobs failed, naming each, and makes the sweep's exit status non-zero, so
``make sweep`` and a cluster script cannot mistake a partly failed sweep for a complete one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SUMMARY_FILE = "summary.json"


def job_statuses(sweep_dir: Path | str) -> dict[Path, dict[str, Any]]:
    """Status and error of every job folder (one holding ``.hydra/``) under ``sweep_dir``.

    A job with no summary.json never got to record anything (killed, or still running): it
    counts as ``incomplete``.
    """
    statuses = {}
    for hydra_dir in sorted(Path(sweep_dir).glob("**/.hydra")):
        job = hydra_dir.parent
        path = job / SUMMARY_FILE
        summary = json.loads(path.read_text()) if path.exists() else {"status": "incomplete"}
        statuses[job] = {"status": summary.get("status", "incomplete"), "error": summary.get("error", "")}
    return statuses


def report(sweep_dir: Path | str) -> int:
    """Print one line per job that did not complete and a count; returns the number of those."""
    statuses = job_statuses(sweep_dir)
    bad = {job: s for job, s in statuses.items() if s["status"] != "completed"}
    for job, s in bad.items():
        print(f"{s['status']}: {job}: {s['error']}".rstrip(": "), file=sys.stderr)
    print(f"sweep {sweep_dir}: {len(statuses) - len(bad)} of {len(statuses)} jobs completed", file=sys.stderr)
    return len(bad)


class SweepStatus(Callback):
    """At the end of a multirun: report the jobs that failed and exit with status 1 if any did."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if report(config.hydra.sweep.dir):
            sys.exit(1)


if __name__ == "__main__":  # python -m rlreason.sweep_status SWEEP_DIR...
    sys.exit(1 if sum(report(d) for d in sys.argv[1:]) else 0)
