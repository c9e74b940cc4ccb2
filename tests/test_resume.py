"""Crash and resume, and determinism, on the embedded task (CPU, fixed seed).

A training process killed with SIGKILL part-way and re-run with ``resume=true`` in the same run
directory ends at the same step, with every step in metrics.jsonl exactly once and the metrics
of a run that was never interrupted; the W&B run continues under its id with each step once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import wandb

from conftest import ROOT, compose
from rlreason.checkpoint import latest_checkpoint, load_trainer_state
from rlreason.cli import run, stop_cleanly_on_sigterm
from rlreason.errors import ConfigError
from rlreason.metrics import read_metrics
from rlreason.trainer import Trainer
from rlreason.wandb_history import read_history, read_run_info

# 1-digit sums, so the debug model gets a few right and some steps update the weights (the
# optimizer state then matters); checkpoints after steps 3 and 6, evaluations at 0, 4 and 8.
STEPS = 8
RUN = (
    "debug=true", "task.digits=1", "trainer.group_size=8", f"trainer.steps={STEPS}", "checkpoint.every=3",
    "eval.every=4", "task.n_test_problems=16", "threads=1", "logger.progress=false",
)
PROMPTS_PER_STEP = 4  # trainer.prompts_per_step under debug=true
TIMING = ("time/", "throughput/", "eval/time_s", "memory/")  # measured, not computed: they differ run to run


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without wall-clock measurements, which differ between any two runs."""
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def steps(run_dir: Path, kind: str) -> list[int]:
    return [row["step"] for row in read_metrics(run_dir, kind)]


def wandb_segments(run_dir: Path) -> list[Path]:
    """The run's offline W&B files, one per process that ran it, oldest first."""
    files = {p.resolve() for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")}
    return sorted(files, key=lambda p: p.parent.name)  # offline-run-<start time>-<id>


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run(compose(*RUN, "logger=none"), run_dir)
    return run_dir


def test_uninterrupted_run_updates_the_policy_after_the_first_checkpoint(uninterrupted: Path) -> None:
    """Guards the other tests: resuming must restore optimizer state that is actually used."""
    norms = {row["step"]: row["train/grad_norm"] for row in read_metrics(uninterrupted, "train")}
    assert any(norms[s] > 0 for s in range(4, STEPS + 1)), norms
    assert any(row["reward/mean"] > 0 for row in read_metrics(uninterrupted, "train"))


def test_same_seed_and_config_give_identical_metrics(uninterrupted: Path, tmp_path: Path) -> None:
    run(compose(*RUN, "logger=none"), tmp_path)
    assert comparable(read_metrics(tmp_path)) == comparable(read_metrics(uninterrupted))


def test_sigkill_then_resume_matches_an_uninterrupted_run(uninterrupted: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}"]
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").exists() or max(steps(run_dir, "train"), default=0) < 4:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached step 4"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    checkpoint = load_trainer_state(latest_checkpoint(run_dir))
    assert checkpoint["step"] < max(steps(run_dir, "train")), "the kill should leave rows after the checkpoint"

    resumed = subprocess.run(command + ["resume=true"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # Every step exactly once, and the numbers an uninterrupted run logs.
    assert steps(run_dir, "train") == list(range(1, STEPS + 1))
    assert steps(run_dir, "eval") == [0, 4, STEPS]
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(uninterrupted))
    final = load_trainer_state(latest_checkpoint(run_dir))
    assert (final["step"], final["data_position"]) == (STEPS, STEPS * PROMPTS_PER_STEP)
    # The run's peak memory covers the steps before the kill too (kept in the checkpoint).
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["memory/peak_gb"] == max(r["memory/peak_gb"] for r in read_metrics(run_dir, "train"))
    assert final["scheduler"]["last_epoch"] == load_trainer_state(latest_checkpoint(uninterrupted))["scheduler"]["last_epoch"]

    # W&B: the same run id; the killed process never sent a step past its checkpoint (wandb-core
    # also loses its unflushed buffer on SIGKILL), the resumed one sent each later step once.
    killed, resumed_file = wandb_segments(run_dir)
    assert killed.name == resumed_file.name == f"run-{checkpoint['wandb_run_id']}.wandb"
    assert read_run_info(resumed_file)["id"] == checkpoint["wandb_run_id"]
    assert all(row["_step"] <= checkpoint["step"] for row in read_history(killed))
    history = read_history(resumed_file)
    assert [row["_step"] for row in history] == list(range(checkpoint["step"] + 1, STEPS + 1))
    logged = {row["step"]: row for row in read_metrics(run_dir, "train")}
    for row in history:
        assert row["reward/mean"] == logged[row["_step"]]["reward/mean"]
        assert row["train/grad_norm"] == logged[row["_step"]]["train/grad_norm"]


def test_sigterm_stops_cleanly_and_the_resumed_run_has_each_step_once_in_wandb(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler's SIGTERM (in-process, with train.py's handler) closes W&B properly, so both
    segments of the W&B run are on disk: together they hold every step once."""
    original = Trainer.train_step

    def sigterm_in_step_5(self: Trainer) -> dict[str, float]:
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    previous_handler = signal.getsignal(signal.SIGTERM)
    stop_cleanly_on_sigterm()
    try:
        monkeypatch.setattr(Trainer, "train_step", sigterm_in_step_5)
        with pytest.raises(SystemExit) as stopped:
            run(compose(*RUN), tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    assert stopped.value.code == 128 + signal.SIGTERM
    wandb.teardown()  # as the process exit would: the W&B service finishes writing the file
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert steps(tmp_path, "train") == [1, 2, 3, 4], read_metrics(tmp_path)

    monkeypatch.setattr(Trainer, "train_step", original)
    run(compose(*RUN, "resume=true"), tmp_path)
    wandb.teardown()  # the W&B service writes the offline file asynchronously; read it as a later process would
    segments = wandb_segments(tmp_path)
    assert len(segments) == 2, segments
    assert read_run_info(segments[0])["id"] == read_run_info(segments[1])["id"]
    first, second = (read_history(f) for f in segments)
    assert [row["_step"] for row in first] == [0, 1, 2, 3], first  # up to the checkpoint after step 3
    assert [row["_step"] for row in second] == [4, 5, 6, 7, 8], second
    logged = {(row["step"], row["kind"]): row for row in read_metrics(tmp_path)}
    for row in first + second:
        if (row["_step"], "train") in logged:
            assert row["reward/mean"] == logged[row["_step"], "train"]["reward/mean"]
        if (row["_step"], "eval") in logged:
            assert row["eval/sampled_acc"] == logged[row["_step"], "eval"]["eval/sampled_acc"]
    assert comparable(read_metrics(tmp_path)) == comparable(read_metrics(uninterrupted))


def test_a_run_directory_holding_a_run_is_not_reused_without_resume(uninterrupted: Path) -> None:
    before = (uninterrupted / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run \(a checkpoint at step 8\); add resume=true"):
        run(compose(*RUN, "logger=none"), uninterrupted)
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_resume_with_different_settings_is_refused(uninterrupted: Path) -> None:
    with pytest.raises(ConfigError, match=r"resume=true in .*, but seed=1 here, 0 in the run;"):
        run(compose(*RUN, "logger=none", "resume=true", "seed=1"), uninterrupted)


def test_a_refused_resume_keeps_a_completed_runs_summary(uninterrupted: Path, tmp_path: Path) -> None:
    """In a resumed sweep, a job whose settings differ is refused; its finished run stays completed."""
    import shutil

    from rlreason.cli import run_and_report

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    before = (run_dir / "summary.json").read_text()
    assert run_and_report(compose(*RUN, "logger=none", "resume=true", "seed=1"), run_dir, multirun=True) is None
    assert (run_dir / "summary.json").read_text() == before
    assert "seed=1 here, 0 in the run" in (run_dir / "error.txt").read_text()


def test_resuming_a_completed_run_skips_it_and_one_asking_for_more_steps_continues(uninterrupted: Path, tmp_path: Path) -> None:
    """A resumed sweep (`-m ... resume=true` with a fixed sweep folder) must not redo finished jobs:
    the job returns its summary without building a trainer, and its files stay as they were."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()}
    summary = run(compose(*RUN, "logger=none", "resume=true"), run_dir)
    assert summary == json.loads((uninterrupted / "summary.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()} == before
    # A resume that asks for more steps is not finished: it continues from the last checkpoint.
    longer = run(compose(*RUN, "logger=none", "resume=true", f"trainer.steps={STEPS + 1}"), run_dir)
    assert longer["steps"] == STEPS + 1 and steps(run_dir, "train") == list(range(1, STEPS + 2))
