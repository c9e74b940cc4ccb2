"""`make gpu-check`: the checks a GPU machine should run first, in under 5 minutes, in one table.

1. ``grpo`` vs ``dash_nofilter`` at the Qwen2.5-0.5B shape (random weights, a short run through
   benchmarks/bench.py --shape): seconds per arm and their ratio;
2. the log-prob step's peak memory and time, full logits vs chunked (bench.py --logprobs);
   with the model's activations kept and with gradient checkpointing (what the Qwen2.5 configs run);
3. one LoRA training step;
4. where vLLM is installed: one vLLM sampling step, an optimizer step, the weight push and its check;
   ``--vllm-python PATH`` runs this check with another interpreter (``make gpu-check`` passes
   .venv-vllm's, where ``make install-vllm`` put vLLM, beside the main venv that runs the rest).

``--cpu-smoke`` shrinks the shape (1 layer, width 64, vocabulary 2048, short completions) so the
whole check runs on a CPU in seconds: what the test suite runs. The numbers that count come from a
GPU: record them in docs/benchmarks.md with the device named.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import torch  # noqa: E402

SHAPE = "qwen2.5-0.5b"
# --cpu-smoke: the shape shrunk to seconds on a CPU (the model is still built from the shape's config).
SMOKE = ["model.num_hidden_layers=1", "model.hidden_size=64", "model.intermediate_size=96", "model.num_attention_heads=2",
         "model.num_key_value_heads=1", "model.vocab_size=2048", "sampler.max_new_tokens=8", "task.n_test_problems=4"]
# On a GPU: completions long enough to matter, few steps (the whole check stays under 5 minutes).
GPU = ["sampler.max_new_tokens=256"]


def check_arms(overrides: list[str], steps: int, out: Path) -> dict[str, Any]:
    argv = ["--shape", SHAPE, "--arms", "grpo,dash_nofilter", "--reps", "1", "--steps", str(steps), "--eval-every", "0",
            "--no-curves", "--no-scoring", "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    if bench.main(argv) != 0:
        raise RuntimeError("bench.py --shape failed")
    with open(out / "arms.csv") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    grpo, dash = float(rows["grpo"]["train_s"]), float(rows["dash_nofilter"]["train_s"])
    return {"grpo train s": round(grpo, 2), "dash_nofilter train s": round(dash, 2), "dash/grpo": round(dash / grpo, 3)}


def check_logprobs(overrides: list[str], completion: int) -> dict[str, Any]:
    # On a GPU the median of 3 steps, so the first call's kernel selection is not what is timed.
    full, chunked = bench.logprob_comparison([f"model={SHAPE}-shape", *overrides], completion=completion,
                                             reps=3 if torch.cuda.is_available() else 1)
    return {"full peak MB": round(full["peak_delta_mb"]), "chunked peak MB": round(chunked["peak_delta_mb"]),
            "peak vs full": round(chunked["peak_vs_full"], 3), "throughput vs full": round(chunked["throughput_vs_full"], 3),
            "tokens": f"{full['rows']}x({full['prompt']}+{full['completion']})"}


def check_lora(overrides: list[str]) -> dict[str, Any]:
    from rlreason import modeling
    from rlreason.batching import make_batch, token_logprobs

    model = bench.shape_model([f"model={SHAPE}-shape", *overrides]).to(bench.DEVICE)
    model = modeling.apply_lora(model, {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    batch = make_batch([[1, 2, 3, 4]] * 4, [[5, 6, 7, 8]] * 4, 0, bench.DEVICE)
    start = time.perf_counter()
    token_logprobs(model, batch)[0].sum().backward()
    optimizer.step()
    bench.sync()
    return {"trainable params": sum(p.numel() for p in trainable), "step s": round(time.perf_counter() - start, 3)}


def check_vllm(overrides: list[str]) -> dict[str, Any] | str:
    if importlib.util.find_spec("vllm") is None:
        return "skipped: vllm is not installed here (make install-vllm, then make gpu-check runs this check in .venv-vllm)"
    from rlreason.batching import make_batch, token_logprobs
    from rlreason.vllm_sampler import VLLMSampler

    cfg, task, model, tokenizer = bench.load_base([f"model={SHAPE}-shape", "sampler=vllm", *overrides])
    from rlreason.modeling import base_model_path

    sampler = VLLMSampler(model, tokenizer, cfg.sampler, model_path=base_model_path(cfg, task), seed=0)
    try:
        prompts = [e.prompt for e in task.train_batch(0, 4)]
        start = time.perf_counter()
        first = sampler.generate(prompts, n=2)
        sample_s = time.perf_counter() - start
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = make_batch(first.prompt_ids, [c or [tokenizer.eos_token_id] for c in first.completion_ids],
                           tokenizer.pad_token_id, bench.DEVICE)
        token_logprobs(model, batch)[0].sum().backward()
        optimizer.step()
        sampler.sync_weights(model)
        start = time.perf_counter()
        sampler.generate(prompts, n=2)  # pushes the weights, checks the push, samples
        push_sample_s = time.perf_counter() - start
        return {"engine dtype": str(sampler.dtype).removeprefix("torch."), "max_model_len": sampler.max_model_len,
                "sample s": round(sample_s, 2), "push+check+sample s": round(push_sample_s, 2), "pushes": sampler.pushes}
    finally:
        sampler.close()


def check_vllm_with(python: str, smoke: bool, out: Path) -> dict[str, Any] | str:
    """The vLLM check run by another interpreter (the venv vLLM is installed in), its row read back."""
    import subprocess

    argv = [python, str(Path(__file__).resolve()), "--only", "vllm", "--out", str(out)] + (["--cpu-smoke"] if smoke else [])
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"FAILED: {python}: {error}"
    try:
        return json.loads((out / "gpu_check.json").read_text())[0]["result"]
    except (OSError, ValueError, IndexError, KeyError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"FAILED: {python} exited {done.returncode}: {tail[0][:300]}"


def table(results: list[tuple[str, Any, float]], device: str) -> str:
    lines = [f"## gpu-check on {device}", "", "| check | result | seconds |", "|---|---|---|"]
    for name, result, seconds in results:
        text = result if isinstance(result, str) else ", ".join(f"{k} {v}" for k, v in result.items())
        lines.append(f"| {name} | {text} | {seconds:.1f} |")
    return "\n".join(lines)


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU: " + bench.machine().get("cpu", "unknown")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="a shrunk shape that runs on a CPU in seconds (for tests)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/gpu-check/<time>)")
    parser.add_argument("--vllm-python", default=None,
                        help="run the vLLM check with this interpreter (a venv with vLLM; make gpu-check passes .venv-vllm's)")
    parser.add_argument("--only", default=None, choices=["vllm"], help="run this check alone (what --vllm-python calls)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; run it on a GPU machine, or pass --cpu-smoke for the shrunk CPU version")
        return 2
    overrides = SMOKE if smoke else GPU
    out = args.out or ROOT / "outputs" / "gpu-check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    if smoke:  # the shrunk base model goes to a throw-away cache, not the user's
        os.environ.setdefault("RLREASON_CACHE", tempfile.mkdtemp(prefix="gpu-check-cache-"))
    checks = [
        ("grpo vs dash_nofilter, qwen2.5-0.5b shape", lambda: check_arms(overrides, 1 if smoke else 2, out / "arms")),
        ("log-prob step: full vs chunked", lambda: check_logprobs(overrides, 16 if smoke else 512)),
        ("log-prob step: full vs chunked, gradient checkpointing",
         lambda: check_logprobs([*overrides, "model.gradient_checkpointing=true"], 16 if smoke else 512)),
        ("LoRA step", lambda: check_lora(overrides)),
        ("vLLM sample + push", (lambda: check_vllm_with(args.vllm_python, smoke, out / "vllm")) if args.vllm_python
         and not args.only else (lambda: check_vllm(overrides))),
    ]
    if args.only == "vllm":
        checks = checks[-1:]
    results: list[tuple[str, Any, float]] = []
    for name, run in checks:
        start = time.perf_counter()
        try:
            result: Any = run()
        except Exception as exc:  # one failing check must not hide the others' numbers
            result = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        results.append((name, result, time.perf_counter() - start))
        (out / "gpu_check.json").write_text(json.dumps([{"check": n, "result": r, "seconds": s} for n, r, s in results],
                                                       indent=1, default=str))
    text = table(results, device_name())
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 1 if any(isinstance(r, str) and r.startswith("FAILED") for _, r, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
