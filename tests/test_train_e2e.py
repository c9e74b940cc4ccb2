"""End-to-end runs on the CPU: it learns, every arm runs, W&B offline logs can be read back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, compose
from rlreason.cli import run
from rlreason.metrics import read_metrics

pytestmark = pytest.mark.slow

# Small enough for CI, large enough that the base model has partial skill and RL has signal.
LEARNING = [
    "logger=none", "logger.progress=false", "task.digits=3", "task.n_test_problems=128",
    "model.warm_start.steps=300", "trainer.steps=16", "eval.every=0",
]


@pytest.mark.heavy
def test_dash_learns_on_the_embedded_task(tmp_path):
    summary = run(compose(*LEARNING), tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 16
    assert 0.05 < summary["base/sampled_acc"] < 0.8, "the warm start should give partial skill"
    assert summary["final/sampled_acc"] >= summary["base/sampled_acc"] + 0.15, summary
    assert summary["final/greedy_acc"] >= summary["base/greedy_acc"] + 0.15, summary
    rows = read_metrics(tmp_path, "train")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[-1]["reward/mean"] > rows[0]["reward/mean"]
    assert (tmp_path / "summary.json").exists() and (tmp_path / "config.yaml").exists()
    assert list((tmp_path / "checkpoints").glob("step-0000016/model.safetensors"))


@pytest.mark.parametrize("algorithm", ["sft", "grpo", "ppo", "ppo_mini", "dash"])
def test_every_algorithm_runs_and_logs_its_metrics(tmp_path, algorithm):
    summary = run(compose("debug=true", "logger=none", f"algorithm={algorithm}", "kl=on", "filter=off"), tmp_path)
    assert summary["status"] == "completed"
    train = read_metrics(tmp_path, "train")
    assert len(train) == summary["steps"]
    row = train[-1]
    for key in ("train/loss", "train/entropy", "time/sampling_s", "time/forward_backward_s", "time/optimizer_s",
                "throughput/train_tok_s", "completions/mean_length"):
        assert key in row, key
    if algorithm == "sft":
        assert "reward/mean" not in row and row["time/sampling_s"] == 0.0
    else:
        for key in ("reward/mean", "filter/kept_frac", "filter/zero_std_group_frac", "train/kl", "train/clip_frac"):
            assert key in row, key
        shortest, longest = row["completions/min_length"], row["completions/max_length"]
        assert shortest <= row["completions/mean_length"] <= longest
        assert 0 <= row["completions/length_std"] <= (longest - shortest) / 2  # a population sd is at most half the range
        assert row["time/reference_s"] > 0  # kl=on loads and runs the reference model
    updates = {"ppo": 3, "ppo_mini": 2}.get(algorithm, 1)  # debug: 16 rows, mini-batches of 8
    assert sum(r["train/optimizer_steps"] for r in train) == updates * len(train)
    # The timed phases account for the step (what is left is batching metadata and metrics), never more.
    phases = sum(r[f"time/{p}_s"] for r in train for p in ("sampling", "scoring", "reference", "forward_backward", "optimizer"))
    steps = sum(r["time/step_s"] for r in train)
    assert 0.8 * steps <= phases <= steps, (phases, steps)
    # Peak memory per step (process RSS on a CPU), and the run's peak in the summary.
    assert all(r["memory/peak_gb"] > 0.05 for r in train)
    assert summary["memory/peak_gb"] == max(r["memory/peak_gb"] for r in train)


def test_cpu_peak_memory_is_the_process_high_water_mark_in_gigabytes():
    from rlreason.learner import peak_memory_gb

    def high_water_kib() -> int:  # the kernel's own figure, in KiB
        status = open("/proc/self/status").read()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))

    before = high_water_kib()
    reported = peak_memory_gb(None)
    after = high_water_kib()
    # ru_maxrss and VmHWM are the same counter in KiB: 1 KiB is 1024 bytes, not 1000.
    assert before * 1024 / 1e9 <= reported <= after * 1024 / 1e9


def test_kl_off_never_loads_the_reference(tmp_path):
    from rlreason.trainer import Trainer

    assert Trainer(compose("debug=true", "logger=none", "kl=off"), tmp_path / "off").reference is None
    assert Trainer(compose("debug=true", "logger=none", "kl=on"), tmp_path / "on").reference is not None


@pytest.mark.heavy
def test_multirun_over_all_16_arms(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "algorithm=sft,grpo,ppo,dash", "kl=on,off", "filter=on,off",
         "debug=true", "logger=none", "logger.progress=false", f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 16
    assert all(s["status"] == "completed" for s in summaries)
    arms = {(s["algorithm"], s["kl"], s["filter"]) for s in summaries}
    assert len(arms) == 16


def test_wandb_offline_history_matches_metrics_file(tmp_path):
    from rlreason.wandb_history import read_history, read_run_info

    import wandb

    run(compose("debug=true", "logger=wandb", "logger.progress=false"), tmp_path)
    wandb.teardown()  # the W&B service writes the offline file asynchronously; read it as a later process would
    history = read_history(tmp_path)
    by_step = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for row in read_metrics(tmp_path, "train"):
        assert by_step[row["step"]]["reward/mean"] == pytest.approx(row["reward/mean"])
        assert by_step[row["step"]]["memory/peak_gb"] == pytest.approx(row["memory/peak_gb"])  # the dashboard has it too
    for row in read_metrics(tmp_path, "eval"):
        assert by_step[row["step"]]["eval/greedy_acc"] == pytest.approx(row["eval/greedy_acc"])
    info = read_run_info(tmp_path)
    assert info["group"] == "dash-kl_off-filter_on"
    assert "algorithm:dash" in info["tags"]
    assert info["config"]["algorithm"]["name"] == "dash"


def test_out_of_distribution_tasks_and_pass_at_k_in_one_run(tmp_path):
    """Evaluate the training task and an extra task (3-digit addition) with pass@k in the same run."""
    cfg = compose("debug=true", "logger=none", "+task@eval.tasks.add3=arithmetic", "eval.tasks.add3.digits=3",
                  "eval.tasks.add3.n_test_problems=16", "eval.samples_per_problem=4", "eval.pass_k=[1,4]")
    summary = run(cfg, tmp_path)
    evals = read_metrics(tmp_path, "eval")
    for row in evals:
        for key in ("eval/greedy_acc", "eval/pass@1", "eval/pass@4", "eval/add3/greedy_acc", "eval/add3/pass@4"):
            assert key in row, key
        assert row["eval/pass@1"] == pytest.approx(row["eval/sampled_acc"])  # unbiased pass@1 = mean accuracy
        assert row["eval/pass@1"] <= row["eval/pass@4"]
    assert "final/add3/greedy_acc" in summary
