"""Bad input gets one clear line naming the problem, and never costs finished work.

Through ``python train.py`` (a subprocess: exactly one line on stderr, exit status 2, no
traceback) for the command line and sweeps; the rest in-process through the same
``cli.run_and_report`` train.py calls, which is much faster on a busy machine and lets a failure
be injected (a NaN loss, a full disk).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from safetensors.torch import load_file

from conftest import ROOT, compose
from rlreason import metrics as metrics_module
from rlreason import learner as learner_module
from rlreason.checkpoint import DONE_MARK, latest_checkpoint, list_checkpoints, load_trainer_state
from rlreason.cli import run, run_and_report
from rlreason.metrics import read_metrics
from rlreason.trainer import Trainer

# A short, cheap run: SFT always has a loss and a gradient, whatever the debug model's skill.
SHORT = ("debug=true", "algorithm=sft", "eval.at_start=false", "task.n_test_problems=8", "threads=1",
         "logger.progress=false")


def train_py(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert proc.returncode == 2
    return lines[0]


# --- the command line and the config ----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["algorithm=foo"], ["Could not find 'algorithm/foo'", "available: dapo, dash, dr_grpo, grpo, gspo, ppo, ppo_mini, rloo, sft"]),
        (["trainer.stepz=3"], ["Could not override 'trainer.stepz': Key 'stepz' not in 'TrainerConfig'"]),
        (["+trainer.stepz=3"], ["unknown config key(s): trainer.stepz"]),
        (["trainer.steps=many"], ["trainer.steps=many", "'many' of type 'str' could not be converted to Integer"]),
        (["trainer.steps=["], ["cannot parse override 'trainer.steps=['"]),
        (["algorithm=grpo", "trainer.group_size=1"], ["trainer.group_size=1: grpo needs at least 2 samples"]),
        (["trainer.micro_batch_size=1000"], ["trainer.micro_batch_size=1000 is larger than the batch"]),
        (["-m", "algorithm=dash,foo"], ["Could not find 'algorithm/foo'"]),
    ],
    ids=["unknown-option", "unknown-key", "unknown-added-key", "wrong-type", "malformed", "grpo-group-of-1", "micro-batch",
         "sweep-with-unknown-option"],
)
def test_bad_command_line_is_one_line(overrides: list[str], fragments: list[str], tmp_path: Path) -> None:
    proc = train_py(*overrides, "logger=none", f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep")
    assert_one_error_line(proc, *fragments)
    assert not list(tmp_path.rglob("metrics.jsonl")), "no job may start"


# --- data and model paths -----------------------------------------------------------------------------


def test_missing_model_path_is_one_line(tmp_path: Path) -> None:
    proc = train_py("model.name_or_path=/nonexistent/model", "logger=none", f"hydra.run.dir={tmp_path}")
    assert_one_error_line(proc, "model path '/nonexistent/model' does not exist")


def test_a_broken_cached_base_model_is_built_again(tmp_path: Path) -> None:
    """A base-model folder without config.json (as a build on a non-zero rank once left) is rebuilt."""
    from rlreason.modeling import ensure_warm_start
    from rlreason.tasks import build_task

    cfg = compose("debug=true", "model.warm_start.steps=2", f"cache_dir={tmp_path}")
    task = build_task(cfg.task)
    built = ensure_warm_start(cfg, task)
    weights = (built / "model.safetensors").read_bytes()
    (built / "config.json").unlink()
    (built / "model.safetensors").unlink()
    assert ensure_warm_start(cfg, task) == built
    assert (built / "config.json").exists() and (built / "model.safetensors").read_bytes() == weights


def test_a_vocabulary_smaller_than_the_tokenizer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = compose(*SHORT, "model.vocab_size=4", f"cache_dir={tmp_path / 'cache'}", "logger=none")
    assert report(cfg, tmp_path / "run", capsys) == "error: model.vocab_size=4 is smaller than the tokenizer's 16 tokens"


def report(cfg, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``run_and_report`` as train.py calls it; returns its one stderr line (it must exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run_and_report(cfg, run_dir, multirun=False)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    return lines[0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, ": no such file"),
        ("\n\n", ": empty file"),
        ('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": \n', " line 2: invalid JSON"),
    ],
    ids=["missing", "empty", "malformed-row"],
)
def test_bad_data_file_is_one_line_naming_file_and_line(content: str | None, fragment: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "test.jsonl"
    if content is not None:
        data.write_text(content)
    cfg = compose("task=gsm8k", f"++task.data_files={{train: {data}, test: {data}}}", "logger=none")
    line = report(cfg, tmp_path / "run", capsys)
    assert line.startswith(f"error: {data}{fragment}")
    assert (tmp_path / "run" / "error.txt").read_text() == line + "\n"


# --- failures during training ---------------------------------------------------------------------------


def test_nonfinite_losses_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_loss, real_step = learner_module.policy_loss, Trainer.train_step

    def nan_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return loss * float("nan"), stats

    def train_step(self: Trainer) -> dict[str, float]:
        if self.step == 2:  # from step 3 on, every loss is NaN
            monkeypatch.setattr(learner_module, "policy_loss", nan_loss)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    cfg = compose(*SHORT, "trainer.steps=6", "checkpoint.every=1", "checkpoint.keep=3", "trainer.max_nonfinite_steps=2",
                  "logger=none")
    line = report(cfg, tmp_path, capsys)
    last_good = tmp_path / "checkpoints" / "step-0000003"
    assert line == (
        "error: 2 non-finite losses or gradients in a row up to step 4 (trainer.max_nonfinite_steps=2); "
        f"stopped, the last good checkpoint is {last_good}"
    )
    rows = read_metrics(tmp_path, "train")
    assert [(r["step"], r["train/skipped_steps"], r["train/optimizer_steps"]) for r in rows] == [
        (1, 0, 1), (2, 0, 1), (3, 1, 0), (4, 1, 0)
    ]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001", "step-0000002", "step-0000003"]
    # The skipped step changed nothing: checkpoint 3 holds checkpoint 2's (finite) weights.
    before, after = (load_file(tmp_path / "checkpoints" / name / "model.safetensors")
                     for name in ("step-0000002", "step-0000003"))
    assert all(torch.isfinite(t).all() and torch.equal(t, before[k]) for k, t in after.items())


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_save = torch.save

    def disk_fills_at_step_2(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_step_2)
    cfg = compose(*SHORT, "trainer.steps=3", "checkpoint.every=1", "logger=none")
    line = report(cfg, tmp_path, capsys)
    previous = tmp_path / "checkpoints" / "step-0000001"
    assert line == (
        f"error: could not write checkpoint {tmp_path / 'checkpoints' / 'step-0000002'} (No space left on device); "
        f"the last complete checkpoint, {previous}, is intact"
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000001"]  # no partial folder
    assert (previous / DONE_MARK).exists() and load_trainer_state(previous)["step"] == 1
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]

    # Once there is space again, the run resumes from the intact checkpoint and finishes.
    monkeypatch.setattr(torch, "save", real_save)
    run(compose(*SHORT, "trainer.steps=3", "checkpoint.every=1", "logger=none", "resume=true"), tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3]
    assert load_trainer_state(latest_checkpoint(tmp_path))["step"] == 3


def test_full_disk_while_writing_metrics_is_one_line_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class DiskFillsAtStep2:
        """metrics.jsonl as the disk fills: the row of step 2 cannot be written."""

        def __init__(self, file):
            self.file = file

        def write(self, text: str) -> int:
            if text.startswith('{"kind": "train", "step": 2,'):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(text)

        def __getattr__(self, name: str):
            return getattr(self.file, name)

    def opening(path, *args, **kwargs):
        file = open(path, *args, **kwargs)
        return DiskFillsAtStep2(file) if Path(path).name == "metrics.jsonl" else file

    with monkeypatch.context() as patch:
        patch.setattr(metrics_module, "open", opening, raising=False)
        line = report(compose(*SHORT, "trainer.steps=3", "checkpoint.every=1", "logger=none"), tmp_path, capsys)
    assert line == (
        f"error: could not write {tmp_path / 'metrics.jsonl'} at step 2 (No space left on device); the rows before "
        "it and the last checkpoint are intact: resume=true continues from that checkpoint"
    )
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1]
    assert load_trainer_state(latest_checkpoint(tmp_path))["step"] == 1

    run(compose(*SHORT, "trainer.steps=3", "checkpoint.every=1", "logger=none", "resume=true"), tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2, 3]


# --- W&B ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_wandb():
    """W&B keeps its settings (server, key) in a process-wide singleton: start and end clean."""
    wandb.teardown()
    yield
    wandb.teardown()


def test_unreachable_wandb_server_warns_once_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_wandb: None
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    summary = run(compose(*SHORT, "trainer.steps=2", "logger.mode=online", "logger.init_timeout_s=2"), tmp_path)
    assert summary["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("rlreason")]
    assert len(warnings) == 1 and warnings[0].startswith("W&B could not start (Timed out")
    assert warnings[0].endswith(f"logging to {tmp_path / 'metrics.jsonl'} only")
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]


def test_refused_wandb_key_warns_once_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_wandb: None
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "fake")  # wandb refuses it before connecting
    summary = run(compose(*SHORT, "trainer.steps=1", "logger.mode=online"), tmp_path)
    assert summary["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("rlreason")]
    assert len(warnings) == 1 and "W&B could not start" in warnings[0] and "API key" in warnings[0]
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1]


# --- sweeps ------------------------------------------------------------------------------------------


def test_a_failed_job_in_a_sweep_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    proc = train_py("-m", "optim.lr=5e-5,-1,1e-4", *SHORT, "trainer.steps=1", "logger=none",
                    f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [
        "error: optim.lr=-1.0 must be > 0",  # when the job fails
        f"failed: {tmp_path / '1'}: optim.lr=-1.0 must be > 0",  # at the end of the sweep (SweepStatus)
        f"sweep {tmp_path}: 2 of 3 jobs completed",
    ]
    statuses = [json.loads((tmp_path / str(job) / "summary.json").read_text())["status"] for job in range(3)]
    assert statuses == ["completed", "failed", "completed"]
    assert (tmp_path / "1" / "error.txt").read_text() == "error: optim.lr=-1.0 must be > 0\n"


def test_a_crashing_sweep_job_is_recorded_with_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Not only bad input: any exception in one sweep job is recorded and the sweep goes on."""

    def crash(cfg, run_dir):
        raise RuntimeError("CUDA out of memory\nmore detail")

    monkeypatch.setattr("rlreason.cli.run", crash)
    assert run_and_report(compose(), tmp_path, multirun=True) is None
    error_file = tmp_path / "error.txt"
    assert capsys.readouterr().err == f"error: RuntimeError: CUDA out of memory (traceback in {error_file})\n"
    assert "Traceback" in error_file.read_text() and "in crash" in error_file.read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
