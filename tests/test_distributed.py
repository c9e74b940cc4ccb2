"""Data-parallel training under ``accelerate launch``: 2 CPU processes (gloo) give the 1-process result.

The end-to-end tests start real processes with ``accelerate launch`` and the CPU config shipped
in conf/accelerate/ddp_cpu.yaml. To compare with one process on the same data, the worker
(tests/ddp_worker.py) seeds each prompt's sampling from the prompt itself and rewards a fixed
function of the text, so both runs see identical rollouts; what differs is only how rows are
split over processes and micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CONF, ROOT, compose
from rlreason.checkpoint import latest_checkpoint, load_trainer_state
from rlreason.config import validate
from rlreason.distributed import Parallel, hydra_overrides_for_rank
from rlreason.errors import ConfigError

ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
LAUNCH = [ACCELERATE, "launch", "--config_file", str(CONF / "accelerate" / "ddp_cpu.yaml"), "--num_processes", "2"]
FAST = ["debug=true", "threads=1", "logger=none", "logger.progress=false", "trainer.steps=2", "sampler.max_new_tokens=32",
        "task.n_test=8", "eval.every=0", "checkpoint.save_final=false"]
# Micro-batches of 4 rows, and filtering on: processes keep different numbers of rows, so some
# run empty micro-batches to join the gradient exchange. Covers one generation call per step (dash),
# per-chunk sampling (grpo), several updates per step on shuffled mini-batches (ppo_mini), SFT, and every
# loss aggregation that is meant not to depend on the split.
RUNS = [
    ["algorithm=dash", "kl=on", "filter=on", "trainer.micro_batch_size=4"],
    ["algorithm=grpo", "kl=off", "filter=on", "trainer.micro_batch_size=4", "eval.at_start=false", "eval.sampled=false"],
    ["algorithm=ppo_mini", "kl=off", "filter=on", "trainer.micro_batch_size=4", "eval.at_start=false", "eval.sampled=false"],
    ["algorithm=sft", "eval.at_start=false", "eval.sampled=false"],
    # The other loss aggregations (tests/test_invariance.py has the 1-process half; paper is exempt):
    # token_mean's denominator is the step's tokens over both processes, known late under grpo.
    ["algorithm=grpo", "algorithm.loss_agg=token_mean", "kl=off", "filter=on", "trainer.micro_batch_size=4",
     "eval.at_start=false", "eval.sampled=false", "eval.greedy=false"],
    ["algorithm=dash", "algorithm.loss_agg=token_mean", "kl=off", "filter=on", "trainer.micro_batch_size=4",
     "eval.at_start=false", "eval.sampled=false", "eval.greedy=false"],
    ["algorithm=ppo_mini", "algorithm.loss_agg=seq_mean_token_sum_norm", "kl=off", "filter=on", "trainer.micro_batch_size=4",
     "eval.at_start=false", "eval.sampled=false", "eval.greedy=false"],
    # SFT's token_mean: the step's reference tokens over both processes, not each process's own.
    ["algorithm=sft", "algorithm.loss_agg=token_mean", "eval.at_start=false", "eval.sampled=false", "eval.greedy=false"],
    # The authors' loss: micro-batches of 4 sampled rows are the same whole or split over 2 processes of 8 rows.
    ["algorithm=dash", "algorithm.loss_agg=paper", "kl=off", "filter=on", "trainer.micro_batch_size=4",
     "eval.at_start=false", "eval.sampled=false", "eval.greedy=false"],
    # DAPO's dynamic sampling: fresh prompts from one global slice of the stream, refilled on every process.
    ["algorithm=dash", "kl=off", "filter=dynamic", "trainer.micro_batch_size=4",
     "eval.at_start=false", "eval.sampled=false", "eval.greedy=false"],
    # LoRA under DDP, KL on: only the adapters train and are all-reduced, the reference is the policy with its
    # adapters disabled (through the DDP wrapper).
    ["algorithm=dash", "kl=on", "filter=on", "trainer.micro_batch_size=4", "model.lora.rank=4",
     "eval.at_start=false", "eval.sampled=false"],
]
# Quantities that must be equal exactly (computed from the same rollouts, gathered in the same order).
EXACT = ("reward/", "completions/", "filter/", "eval/greedy", "eval/sampled", "train/accuracy", "train/lr",
         "train/optimizer_steps", "train/skipped_steps")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["TMPDIR"] = str(tmp_path / "scratch")  # process 1's throw-away Hydra folder
    (tmp_path / "scratch").mkdir(exist_ok=True)
    return env


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_prompts_per_step_must_divide_by_the_process_count():
    cfg = compose("trainer.prompts_per_step=6")
    validate(cfg, world_size=3)
    with pytest.raises(ConfigError, match=r"prompts_per_step=6 must be a multiple of the number of processes \(4\)"):
        validate(cfg, world_size=4)


def test_other_processes_write_nothing_into_the_run_folder(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert hydra_overrides_for_rank(["algorithm=grpo"]) == []
    monkeypatch.setenv("RANK", "1")
    extra = hydra_overrides_for_rank(["algorithm=grpo", "hydra.run.dir=/runs/a"])
    assert "hydra.output_subdir=null" in extra and "hydra/job_logging=stdout" in extra
    assert not any(e.startswith("hydra.run.dir=") for e in extra)  # the user's folder is shared
    assert any(e.startswith("hydra.sweep.dir=") for e in extra)
    monkeypatch.delenv("WORLD_SIZE")
    assert hydra_overrides_for_rank([]) == []


def test_a_late_token_count_under_deepspeed_fails_at_start_up(tmp_path: Path):
    """GRPO's interleaved schedule learns the step's token count after its last backward, and
    DeepSpeed steps inside that backward: token_mean could not be rescaled, so it is refused."""
    from rlreason.trainer import Trainer

    class DeepSpeedLike(Parallel):  # what AccelerateParallel reports under a DeepSpeed config
        uses_deepspeed = True

    cfg = compose("debug=true", "logger=none", "algorithm=grpo", "algorithm.loss_agg=token_mean")
    with pytest.raises(ConfigError, match=r"algorithm.loss_agg=token_mean divides by the step's completion tokens.*"
                                          r"algorithm.schedule=interleaved") as error:
        Trainer(cfg, tmp_path / "a", parallel=DeepSpeedLike())
    assert "\n" not in str(error.value)
    for fine in (("algorithm=dash", "algorithm.loss_agg=token_mean"), ("algorithm=grpo",)):  # known in time
        Trainer(compose("debug=true", "logger=none", *fine), tmp_path / fine[-1], parallel=DeepSpeedLike())


def test_one_process_is_the_identity():
    p = Parallel()
    assert (p.rank, p.world_size, p.is_main) == (0, 1, True)
    items = list(range(7))
    assert p.shard(items) is items and p.sum([1.5, 2]) == [1.5, 2] and p.micro_batches(3, sync=True) == 3


@pytest.mark.heavy
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path: Path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([FAST + run for run in RUNS]))
    worker = [str(ROOT / "tests" / "ddp_worker.py")]
    env = _env(tmp_path)
    # Both at once: the machine has few cores and most of the time is start-up and sampling.
    one = subprocess.Popen([sys.executable, *worker, str(tmp_path / "one"), str(spec)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    two = subprocess.run([*LAUNCH, *worker, str(tmp_path / "two"), str(spec)], env=env, capture_output=True, text=True,
                         timeout=300)
    one_out = one.communicate(timeout=300)[0]
    assert one.returncode == 0, one_out[-3000:]
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]

    empty_backwards = 0
    for i, overrides in enumerate(RUNS):
        a, b = tmp_path / "one" / str(i), tmp_path / "two" / str(i)
        empty_backwards += sum(json.loads((b.parent / f"{i}.rank{r}.json").read_text())["empty_backwards"] for r in (0, 1))
        rows_a, rows_b = _metrics(a), _metrics(b)
        assert [(r["kind"], r["step"]) for r in rows_a] == [(r["kind"], r["step"]) for r in rows_b], overrides
        for ra, rb in zip(rows_a, rows_b):
            for key, value in ra.items():
                if key.startswith(EXACT):
                    assert rb[key] == value, (overrides, ra["step"], key)
                elif key.startswith(("train/loss", "train/nll", "train/entropy", "train/kl", "train/grad_norm")):
                    assert rb[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (overrides, ra["step"], key)
        # The gradient of every update (norm and projections): equal, not off by the process count.
        grads_a = torch.tensor(json.loads((a / "gradients.json").read_text()))
        grads_b = torch.tensor(json.loads((b / "gradients.json").read_text()))
        assert grads_a.shape == grads_b.shape and grads_a[:, 0].min() > 0
        torch.testing.assert_close(grads_b, grads_a, rtol=1e-4, atol=1e-6, msg=lambda m: f"{overrides}: {m}")
        weights_a, weights_b = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
        for name, w in weights_a.items():
            torch.testing.assert_close(weights_b[name], w, rtol=0, atol=1e-6, msg=lambda m: f"{overrides} {name}: {m}")
        assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())
    assert empty_backwards > 0, "no process ever ran an empty micro-batch: the uneven case is not covered"


@pytest.mark.heavy
@pytest.mark.slow
def test_accelerate_launch_train_py_writes_one_run_folder(tmp_path: Path):
    """The real entry point: one run folder (process 0's), every step logged once, a checkpoint.
    From an empty cache: process 0 builds the base model while the others wait (transformers'
    save_pretrained writes nothing on other ranks, so a base model built there would be empty)."""
    changed = {"trainer.steps": "3", "eval.every": "2", "checkpoint.save_final": "true"}
    fast = [o for o in FAST if o.split("=")[0] not in changed] + [f"{k}={v}" for k, v in changed.items()]
    args = [*LAUNCH, str(ROOT / "train.py"), *fast, "algorithm=dash", "filter=on"]
    env = {**_env(tmp_path), "RLREASON_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    runs = [p.parent for p in (tmp_path / "outputs").rglob("metrics.jsonl")]
    assert len(runs) == 1 and len(list((tmp_path / "outputs").glob("*/*/*"))) == 1
    run = runs[0]
    rows = _metrics(run)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 3]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "checkpoints" / "step-0000003" / "COMPLETE").exists()
    assert [p.name for p in (tmp_path / "empty-cache").glob("base-*/config.json")] == ["config.json"]
    state = torch.load(run / "checkpoints" / "step-0000003" / "trainer_state.pt", weights_only=False)
    assert len(state["rng_per_process"]) == 2 and state["data_position"] == 3 * 4
    assert done.stdout.count("held-out greedy acc") == 1  # one summary table, from process 0


@pytest.mark.heavy
@pytest.mark.slow
def test_sigterm_to_the_job_stops_every_process_cleanly_and_the_run_resumes(tmp_path: Path):
    """A scheduler's preemption (SIGTERM to the whole job) under accelerate launch: every process
    leaves its loop, the run folder keeps a complete checkpoint, and resume=true finishes with each
    step logged once. (torch's launcher then prints its own SignalException traceback.)"""
    run = tmp_path / "run"
    changed = {"trainer.steps": "30", "checkpoint.every": "2"}
    fast = [o for o in FAST if o.split("=")[0] not in changed] + [f"{k}={v}" for k, v in changed.items()]
    args = [*LAUNCH, str(ROOT / "train.py"), *fast, "algorithm=dash", f"hydra.run.dir={run}"]
    job = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:
        if (run / "metrics.jsonl").exists() and len([r for r in _metrics(run) if r["kind"] == "train"]) >= 3:
            break
        time.sleep(0.1)
    assert job.poll() is None, "the run ended before it could be stopped: " + job.communicate()[1][-3000:]
    os.killpg(job.pid, signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode != 0
    assert json.loads((run / "summary.json").read_text())["status"] == "failed", stderr[-3000:]
    logged = [r["step"] for r in _metrics(run) if r["kind"] == "train"]
    kept = latest_checkpoint(run)
    assert kept is not None and load_trainer_state(kept)["step"] <= logged[-1] < 30

    done = subprocess.run([*args, "resume=true"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert [r["step"] for r in _metrics(run) if r["kind"] == "train"] == list(range(1, 31))


# A rank that reports how it was set up, then blocks: rank 0 sleeps, the others wait for it in a collective.
_PROBE = '''
import json, os, sys, time
import torch
from rlreason.distributed import get_parallel
p = get_parallel()
class Probe(torch.nn.Linear):
    def forward(self, x):
        self.seen = super().forward(x).dtype  # inside the forward: accelerate casts outputs back to fp32
        return super().forward(x)
layer = Probe(4, 4)
model, _ = p.prepare(layer, torch.optim.SGD(layer.parameters(), lr=0.1), 1, 1.0)
model(torch.ones(1, 4))
out = layer.seen
ref = p.prepare_reference(torch.nn.Linear(4, 4))
Path = __import__("pathlib").Path
Path(sys.argv[1], f"rank{p.rank}.json").write_text(json.dumps({
    "pid": os.getpid(), "kind": type(p).__name__, "world_size": p.world_size, "out_dtype": str(out),
    "ref_param_dtype": str(next(ref.parameters()).dtype), "ref_out_dtype": str(ref(torch.ones(1, 4)).dtype)}))
if len(sys.argv) > 2:
    if p.rank == 0:
        time.sleep(120)
    p.barrier()
'''


def _probe(tmp_path: Path) -> Path:
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    return script


def test_one_process_accelerate_launch_goes_through_accelerate(tmp_path: Path):
    """`accelerate launch --num_processes 1 --mixed_precision bf16` (the README's one-GPU launch): accelerate's
    autocast applies to the policy and the reference (cast to bf16), and collectives are skipped."""
    launch = [ACCELERATE, "launch", "--config_file", str(CONF / "accelerate" / "ddp_cpu.yaml"), "--num_processes", "1",
              "--mixed_precision", "bf16"]
    done = subprocess.run([*launch, str(_probe(tmp_path)), str(tmp_path)], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    got = json.loads((tmp_path / "rank0.json").read_text())
    assert got["kind"] == "AccelerateParallel" and got["world_size"] == 1
    assert got["out_dtype"] == "torch.bfloat16"  # the prepared policy's forward ran under autocast
    assert got["ref_param_dtype"] == "torch.bfloat16" and got["ref_out_dtype"] == "torch.bfloat16"


@pytest.mark.heavy
def test_lora_under_bf16_mixed_precision_trains_against_its_disabled_adapters(tmp_path: Path):
    """LoRA + KL under `accelerate launch --mixed_precision bf16`: the reference (adapters off) computes under
    the policy's autocast, so at step 1, before any update (lora_B is zero), policy and reference agree and
    the KL is exactly 0; after the updates it is not; the adapters stay fp32 (master weights) in the checkpoint."""
    launch = [ACCELERATE, "launch", "--config_file", str(CONF / "accelerate" / "ddp_cpu.yaml"), "--num_processes", "1",
              "--mixed_precision", "bf16"]
    changed = {"trainer.steps": "3", "checkpoint.save_final": "true"}
    fast = [o for o in FAST if o.split("=")[0] not in changed] + [f"{k}={v}" for k, v in changed.items()]
    args = [*launch, str(ROOT / "train.py"), *fast, "algorithm=dash", "kl=on", "filter=off", "model.lora.rank=4",
            "optim.lr=1e-2", "eval.at_start=false", "eval.sampled=false"]
    done = subprocess.run(args, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    run = next(p.parent for p in (tmp_path / "outputs").rglob("metrics.jsonl"))
    kl = [r["train/kl"] for r in _metrics(run) if r["kind"] == "train"]
    assert len(kl) == 3 and all(k == k for k in kl)  # no NaN
    # Exactly 0: the same ops on the same inputs. A reference outside the policy's autocast (fp32) gives about
    # 3e-7 here (k3 is second order in the log-prob gap), so nothing looser than equality tells the two apart.
    assert kl[0] == 0.0 and max(kl[1:]) > 1e-4, kl
    adapter = next((run / "checkpoints" / "step-0000003").rglob("adapter_model.safetensors"))
    from safetensors.torch import load_file

    tensors = load_file(adapter)
    assert tensors and {str(t.dtype) for t in tensors.values()} == {"torch.float32"}
    assert any(float(t.abs().max()) > 0 for name, t in tensors.items() if "lora_B" in name)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited already


def test_workers_die_with_a_killed_launcher(tmp_path: Path):
    """SIGKILL to the `accelerate launch` process of a 2-process job: no rank outlives it (PR_SET_PDEATHSIG)."""
    job = subprocess.Popen([*LAUNCH, str(_probe(tmp_path)), str(tmp_path), "block"], env=_env(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    files = [tmp_path / "rank0.json", tmp_path / "rank1.json"]
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(f.exists() for f in files):
            assert job.poll() is None, "the job ended before it could be killed"
            time.sleep(0.1)
        time.sleep(0.5)  # both ranks written: rank 0 sleeps, rank 1 waits in the barrier
        pids = [json.loads(f.read_text())["pid"] for f in files]
        assert all(_alive(pid) for pid in pids)
        job.kill()
        job.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        left = [pid for pid in pids if _alive(pid)]
        assert not left, f"ranks {left} outlived their launcher"
    finally:
        for pid in pids:  # never leave a rank behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if job.poll() is None:
            job.kill()
