"""Sweep folders as a Hydra multirun of train.py writes them (multirun.yaml, and per job
.hydra/hydra.yaml, config.yaml, summary.json, metrics.jsonl), with numbers a test chooses, for
the analysis's real loaders. Shared by test_stats.py and test_figures.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def write_multirun(folder: Path, experiment: str | None) -> Path:
    """The sweep folder with its multirun.yaml (which names the experiment)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"experiment": experiment}}}}))
    return folder


def write_job(folder: Path, num: int, experiment: str | None, arm: str, config: dict[str, Any], summary: dict[str, Any],
              metrics: list[dict[str, Any]]) -> Path:
    """Job ``num`` of the sweep: its Hydra record (job number, arm choice) and the run's files."""
    job = folder / f"{num}_{arm}-seed_{config['seed']}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"job": {"num": num}, "runtime": {"choices": {"experiment": experiment, "arm": arm}}}}))
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "summary.json").write_text(json.dumps(summary))
    (job / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in metrics) + "\n")
    return job


def run_config(algorithm: str, kl: str, filt: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The config.yaml fields the analysis reads (the arm's axes), plus ``extra`` top-level keys."""
    return {"algorithm": {"name": algorithm, "schedule": "preemptive", "generation_batch_size": None},
            "kl": {"name": kl}, "filter": {"name": filt}, "sft": {"source": "teacher"},
            "trainer": {"max_train_seconds": None}, "task": {"name": "arithmetic"}, "model": {"name": "tiny"},
            "seed": seed, **extra}
