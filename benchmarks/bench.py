"""`make bench`: DASH's wall-clock cut measured side by side, against GRPO and against TRL.

One invocation, on the embedded default (tiny Qwen2, 4-digit addition, 16 prompts x 8 samples
per step, micro-batches of 8, lr 5e-5 constant, KL off), all arms from the same cached base
model, the same prompts in the same order and the same sampling seed within a repetition:

1. ``grpo`` (one generate call per micro-batch of 8, no filter), ``dash_nofilter`` (one generate
   call of 128 per step), ``dash`` (the same plus gradient filtering): train wall-clock in total
   and to a common held-out accuracy, split into sampling / scoring / reference /
   forward_backward / optimizer, and final greedy accuracy on the 256 held-out problems.
2. Curves: sampling tokens/s against generation batch size; backprop tokens/s and peak memory
   against micro-batch size (table and PNG).
3. The peer: TRL's GRPOTrainer on the same model, data, group size, batch, steps and learning
   rate, in its default layout (one generate of 128 per step) and in the layout of our ``grpo``
   (one generate per micro-batch of 8); its final accuracy measured by our evaluator.
4. Training FLOP/s (FLOPs counted by torch's FlopCounterMode) as a fraction of the fp32 matmul
   peak measured in the same run.
5. Code scoring (benchmarks/sandbox_bench.py): completions scored per second by the sandbox, with
   1 and 2 workers, for the embedded code task (task=codegen) and MBPP+'s canonical solutions.

Arms are interleaved within each repetition (the order rotates), so slow drift of the machine
hits every arm alike; the reported figures are medians over repetitions. Evaluation time is
excluded from every arm's wall-clock (ours and TRL's alike).

    python benchmarks/bench.py                # the full benchmark (about 15-20 min on 2 cores)
    python benchmarks/bench.py --quick        # a smoke test of every part (about 30 s)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sandbox_bench  # noqa: E402

log = logging.getLogger("bench")
# Every arm and curve runs here: the GPU when there is one (as the Trainer picks it), else the CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# --shape NAME: time conf/model/NAME-shape.yaml (a real model's shape, random weights) at realistic lengths.
SHAPES = ("qwen2.5-0.5b",)
SHAPE_MAX_NEW_TOKENS = 512  # about the paper's response lengths at the end of training (548-627 tokens)
SHAPE_MAX_MICRO_BATCH = 16  # --shape: the backprop curve's largest micro-batch
# What the memory curve measures: the resident set of a fresh process (CPU) or the allocator's peak (GPU).
MEMORY_KIND = "GPU allocator" if DEVICE.type == "cuda" else "RSS (fresh process)"


def sync() -> None:
    """Wait for queued GPU work, so a clock read after it measures it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()

# The arms of part 1: Hydra overrides on top of the embedded default.
ARMS: dict[str, list[str]] = {
    "grpo": ["algorithm=grpo", "filter=off"],
    "dash_nofilter": ["algorithm=dash", "filter=off"],
    "dash": ["algorithm=dash", "filter=on"],
}
# TRL layouts: steps_per_generation = None (TRL default: one generate per optimizer step) or 1
# (one generate per micro-batch, the layout of our grpo arm).
TRL_ARMS: dict[str, int | None] = {"trl": None, "trl_microgen": 1}
PHASES = ("sampling", "scoring", "reference", "forward_backward", "optimizer")


# ---------------------------------------------------------------------------- setup
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import rlreason.config  # noqa: F401  (schema + ${debug:...} resolver)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
    }


def matmul_peak(seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """Best matmul FLOP/s over a few square sizes in the model's dtype (the device's practical peak, now)."""
    best = 0.0
    for n in (512, 1024, 2048) if DEVICE.type == "cpu" else (2048, 4096, 8192):
        a, b = (torch.randn(n, n, dtype=dtype, device=DEVICE) for _ in range(2))
        torch.mm(a, b)
        sync()
        reps, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, 2 * n**3 * reps / elapsed)
    return best


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# Samples per held-out problem for the final sampled accuracy of every arm (the curves use 1).
FINAL_SAMPLES = 4


def held_out_accuracy(sampler, task, cfg, greedy: bool, n: int = 1) -> float:
    """Held-out accuracy through the trainer's own evaluator (rlreason.evaluation): greedy, or sampled
    pass@1 (the mean over ``n`` samples per problem at the training temperature)."""
    from omegaconf import OmegaConf

    from rlreason.evaluation import evaluate_task, held_out

    test = held_out(task, cfg.task)
    mode = OmegaConf.merge(cfg.eval, {"greedy": greedy, "sampled": not greedy, "samples_per_problem": n, "pass_k": []})
    metrics, _ = evaluate_task(sampler, task, test, mode)
    return metrics["eval/greedy_acc" if greedy else "eval/sampled_acc"]


# ---------------------------------------------------------------------------- part 1: our arms
def run_arm(name: str, base_overrides: list[str], rep: int, out: Path) -> dict[str, Any]:
    """Train one arm with the project's own Trainer; returns the summary plus curves."""
    from rlreason.config import validate
    from rlreason.metrics import read_metrics
    from rlreason.trainer import Trainer

    cfg = compose(base_overrides + ARMS[name])
    validate(cfg)
    run_dir = out / "runs" / f"{name}-rep{rep}"
    trainer = Trainer(cfg, run_dir)
    base_greedy = held_out_accuracy(trainer.sampler, trainer.task, cfg, greedy=True)
    torch.manual_seed(1000 + rep)  # the sampling seed of this repetition, the same for every arm
    load = load_average()
    summary = trainer.fit()
    # fit() closed the trainer's sampler (a vLLM engine is shut down then): the final accuracies come from
    # transformers' generate on the trained policy, with the same sampling settings.
    from rlreason.sampling import HFSampler

    final = HFSampler(trainer.policy, trainer.tokenizer, cfg.sampler)
    final_greedy = held_out_accuracy(final, trainer.task, cfg, greedy=True)
    final_sampled = held_out_accuracy(final, trainer.task, cfg, greedy=False, n=FINAL_SAMPLES)
    train_rows = read_metrics(run_dir, "train")
    eval_rows = read_metrics(run_dir, "eval")
    elapsed = {0: 0.0, **{r["step"]: r["time/train_elapsed_s"] for r in train_rows}}
    train_tokens = sum(r["throughput/train_tok_s"] * r["time/forward_backward_s"] for r in train_rows)
    gen_tokens = sum(r["completions/mean_length"] * cfg.trainer.prompts_per_step * cfg.trainer.group_size for r in train_rows)
    row = {
        "arm": name,
        "rep": rep,
        "load_avg": load,
        "threads": torch.get_num_threads(),
        "steps": summary["steps"],
        "completions": summary["steps"] * cfg.trainer.prompts_per_step * cfg.trainer.group_size,
        "train_s": summary["train_time_s"],
        **{f"{p}_s": summary[f"train_time/{p}_s"] for p in PHASES},
        "final_acc": final_sampled,
        "final_greedy_acc": final_greedy,
        "base_acc": summary.get("base/sampled_acc"),
        "base_greedy_acc": base_greedy,
        "kept_frac": median([r["filter/kept_frac"] for r in train_rows]),
        "train_tokens": train_tokens,
        "gen_tokens": gen_tokens,
        "curve": [(elapsed[r["step"]], r["step"], r["eval/sampled_acc"]) for r in eval_rows],
    }
    return row


# ---------------------------------------------------------------------------- part 3: TRL
def run_trl(name: str, base_overrides: list[str], rep: int, out: Path) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same base model, prompts, group, batch, steps and lr."""
    import transformers
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlreason.config import validate
    from rlreason.modeling import base_model_path, load_model, load_tokenizer
    from rlreason.sampling import build_sampler
    from rlreason.tasks import build_task

    transformers.utils.logging.set_verbosity_error()
    cfg = compose(base_overrides + ARMS["dash_nofilter"])
    validate(cfg)
    t = cfg.trainer
    task = build_task(cfg.task)
    path = base_model_path(cfg, task)
    tokenizer = load_tokenizer(path)
    model = load_model(path, cfg.model)
    examples = task.train_batch(0, t.steps * t.prompts_per_step)  # the prompts our arms see, in order
    by_prompt = {e.prompt: e for e in examples}
    dataset = Dataset.from_dict({"prompt": [e.prompt for e in examples]})

    def correct(completions: list[str], prompts: list[str], **_: Any) -> list[float]:
        return [task.score(c, by_prompt[p]) for c, p in zip(completions, prompts)]

    sampler = build_sampler(cfg.sampler, model, tokenizer)

    def evaluate(greedy: bool = False, n: int = 1) -> float:
        sampler.sync_weights(model)  # TRL trained the model since the last look (a vLLM engine must get its weights)
        return held_out_accuracy(sampler, task, cfg, greedy, n=n)

    timing = {"sampling": 0.0, "eval": 0.0}
    curve: list[tuple[float, int, float]] = []

    class EvalEvery(TrainerCallback):
        """Our evaluator every eval.every steps; its time is taken out of TRL's wall-clock."""

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if (cfg.eval.every and state.global_step % cfg.eval.every == 0) or state.global_step == t.steps:
                start = time.perf_counter()
                acc = evaluate()
                timing["eval"] += time.perf_counter() - start
                curve.append((time.perf_counter() - timing["start"] - timing["eval"], state.global_step, acc))

    steps_per_generation = TRL_ARMS[name]
    args = GRPOConfig(
        output_dir=str(out / "runs" / f"{name}-rep{rep}"),
        use_cpu=DEVICE.type == "cpu",
        bf16=False,  # TRL turns on bf16 autocast by default, even on CPU; our arms compute in the model's dtype
        gradient_checkpointing=False,  # on by default in TRL; ours is off
        learning_rate=cfg.optim.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1,
        adam_beta2=cfg.optim.beta2,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=t.steps,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.prompts_per_step * t.group_size // t.micro_batch_size,
        steps_per_generation=steps_per_generation,
        num_generations=t.group_size,
        max_completion_length=cfg.sampler.max_new_tokens,
        temperature=cfg.sampler.temperature,
        top_k=cfg.sampler.top_k,
        top_p=cfg.sampler.top_p,
        beta=cfg.kl.beta,
        loss_type="grpo",  # per-sequence token mean, as ours
        scale_rewards="group",
        shuffle_dataset=False,  # the same prompt order as our arms
        logging_steps=10**9,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=1000 + rep,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=correct, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[EvalEvery()])
    generate = trainer._generate_and_score_completions

    def timed_generate(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            timing["sampling"] += time.perf_counter() - start

    trainer._generate_and_score_completions = timed_generate
    base_acc, base_greedy = evaluate(), evaluate(greedy=True)
    curve.append((0.0, 0, base_acc))
    load = load_average()
    timing["start"] = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - timing["start"] - timing["eval"]
    final_greedy = evaluate(greedy=True)
    final_sampled = evaluate(greedy=False, n=FINAL_SAMPLES)
    sampler.close()
    return {
        "arm": name,
        "rep": rep,
        "load_avg": load,
        "threads": torch.get_num_threads(),
        "steps": trainer.state.global_step,
        "completions": trainer.state.global_step * t.prompts_per_step * t.group_size,
        "train_s": train_s,
        "sampling_s": timing["sampling"],  # TRL's generate + score (+ old log-probs when it needs them)
        "forward_backward_s": train_s - timing["sampling"],  # TRL's backprop and optimizer, together
        "final_acc": final_sampled,
        "final_greedy_acc": final_greedy,
        "base_acc": base_acc,
        "base_greedy_acc": base_greedy,
        "curve": curve,
    }


# ---------------------------------------------------------------------------- parts 2 and 4
def load_base(base_overrides: list[str]):
    from rlreason.modeling import base_model_path, load_model, load_tokenizer
    from rlreason.tasks import build_task

    cfg = compose(base_overrides)
    task = build_task(cfg.task)
    path = base_model_path(cfg, task)
    return cfg, task, load_model(path, cfg.model).to(DEVICE), load_tokenizer(path)


def sample_rows(cfg, task, model, tokenizer, n_rows: int):
    """Real completions of the base model (realistic lengths) as (prompt_ids, completion_ids)."""
    from rlreason.sampling import build_sampler

    sampler = build_sampler(cfg.sampler, model, tokenizer)
    g = cfg.trainer.group_size
    try:
        out = sampler.generate([e.prompt for e in task.train_batch(0, max(1, n_rows // g))], n=g)
    finally:
        sampler.close()  # a vLLM engine holds its share of the GPU until closed
    return out.prompt_ids, out.completion_ids


def generation_curve(cfg, task, model, tokenizer, batch_sizes: list[int], reps: int) -> list[dict[str, Any]]:
    """New tokens per second of one ``generate`` call against its batch size."""
    from rlreason.sampling import build_sampler

    sampler = build_sampler(cfg.sampler, model, tokenizer)
    g = cfg.trainer.group_size
    total = max(batch_sizes)
    prompts = [e.prompt for e in task.train_batch(50_000, max(1, total // g))]
    results: dict[int, list[float]] = {b: [] for b in batch_sizes}
    try:
        for rep in range(reps):
            for b in batch_sizes[rep % 2 :: 1] + batch_sizes[: rep % 2]:
                # at least `total` sequences per point, in calls of b (a small batch runs several calls)
                start = time.perf_counter()
                done = sampler.generate(prompts, n=g, batch_size=b)
                results[b].append(done.num_completion_tokens / (time.perf_counter() - start))
    finally:
        sampler.close()
    return [{"generation_batch": b, "sampling_tok_s": median(v), "load_avg": load_average()} for b, v in results.items()]


def unit_advantage_loss(model, batch, denominator: int) -> torch.Tensor:
    """The trainer's policy loss on a batch with every advantage 1: one micro-batch's backprop work."""
    from rlreason.batching import token_logprobs
    from rlreason.rl import policy_loss

    logp, _ = token_logprobs(model, batch)
    mask = batch.completion_mask
    return policy_loss(logp, mask, torch.ones(mask.shape[0], device=mask.device), denominator)[0]


def backprop_curve(cfg, model, rows, micro_sizes: list[int], reps: int) -> list[dict[str, Any]]:
    """Forward+backward tokens/s over the same rows in micro-batches of each size, and the bytes
    autograd saves for backward per micro-batch (activation memory, counted exactly); on a GPU also
    the allocator's peak growth over one forward+backward of the longest rows."""
    from rlreason.batching import make_batch

    prompts, completions = rows
    pad = model.config.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    model.train()
    results: dict[int, list[float]] = {m: [] for m in micro_sizes}
    saved: dict[int, int] = {}
    for rep in range(reps):
        for m in micro_sizes:
            tokens, start = 0, time.perf_counter()
            for s in range(0, len(order), m):
                chunk = order[s : s + m]
                batch = make_batch([prompts[i] for i in chunk], [completions[i] for i in chunk], pad, DEVICE)
                unit_advantage_loss(model, batch, len(order)).backward()
                tokens += batch.num_tokens
            sync()
            results[m].append(tokens / (time.perf_counter() - start))
            model.zero_grad(set_to_none=True)
    peak_growth: dict[int, float] = {}
    for m in micro_sizes:
        if DEVICE.type == "cuda":  # the CPU's counterpart is rss_curve, in fresh processes
            batch = make_batch([prompts[i] for i in order[-m:]], [completions[i] for i in order[-m:]], pad, DEVICE)
            sync()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            unit_advantage_loss(model, batch, m).backward()
            sync()
            peak_growth[m] = (torch.cuda.max_memory_allocated() - before) / 2**20
            model.zero_grad(set_to_none=True)
        chunk = order[len(order) // 2 : len(order) // 2 + m] if m < len(order) else order
        batch = make_batch([prompts[i] for i in chunk], [completions[i] for i in chunk], pad, DEVICE)
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = unit_advantage_loss(model, batch, len(chunk))
        loss.backward()
        model.zero_grad(set_to_none=True)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved[m] = sum(n for ptr, n in seen.items() if ptr not in params)
    return [{"micro_batch": m, "backprop_tok_s": median(results[m]), "saved_activations_mb": saved[m] / 2**20,
             "peak_mem_delta_mb": peak_growth.get(m), "load_avg": load_average()} for m in micro_sizes]


def rss_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: max RSS growth of one forward+backward at micro-batch size m."""
    from rlreason.batching import make_batch, token_logprobs
    from rlreason.modeling import load_model

    cfg = compose(spec["overrides"])
    model = load_model(spec["path"], cfg.model)
    model.train()
    prompts, completions = spec["prompts"], spec["completions"]
    batch = make_batch(prompts, completions, model.config.pad_token_id)
    # one tiny pass first, so lazily initialised kernels and buffers are not counted
    small = make_batch(prompts[:1], completions[:1], model.config.pad_token_id)
    token_logprobs(model, small)[0].sum().backward()
    model.zero_grad(set_to_none=False)
    try:  # Linux: reset the peak-RSS mark (VmHWM) to the current RSS, so loading the model does not hide the peak
        Path("/proc/self/clear_refs").write_text("5")
        before, read_peak = _proc_status_kb("VmRSS"), lambda: _proc_status_kb("VmHWM")
    except OSError:  # elsewhere: max RSS since start (a lower bound on the growth if loading peaked higher)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        read_peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    unit_advantage_loss(model, batch, len(prompts)).backward()
    return {"rss_before_mb": before / 1024, "peak_rss_delta_mb": (read_peak() - before) / 1024}


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


def rss_curve(base_overrides: list[str], path: str, rows, micro_sizes: list[int]) -> dict[int, float]:
    prompts, completions = rows
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(completions[i]))
    out = {}
    for m in micro_sizes:
        chunk = order[-m:]  # the longest rows: the peak a step of this micro-batch size reaches
        spec = {"overrides": base_overrides, "path": path, "prompts": [prompts[i] for i in chunk],
                "completions": [completions[i] for i in chunk]}
        proc = subprocess.run([sys.executable, __file__, "--rss-worker", json.dumps(spec)], capture_output=True,
                              text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        out[m] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_delta_mb"]
    return out


# The log-prob memory comparison (--logprobs): rows x (prompt + completion) random tokens at the model's shape.
LOGPROB_ROWS, LOGPROB_PROMPT, LOGPROB_COMPLETION = 8, 32, 128


def shape_model(overrides: list[str], seed: int = 0):
    """A random-weight model of the composed config's shape (no tokenizer, no warm start, no hub)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = compose(overrides).model
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=m.vocab_size or 64, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                         num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                         num_key_value_heads=m.num_key_value_heads, max_position_embeddings=m.max_position_embeddings,
                         tie_word_embeddings=True, pad_token_id=0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, m.dtype))
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def logprob_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: peak memory growth and time of one log-prob forward+backward, full or chunked.

    Gradients are allocated beforehand (a small pass, then zeroed in place), so the growth is what the
    step itself needs: activations, logits and their gradients. CPU: the RSS high-water mark (VmHWM,
    reset through /proc/self/clear_refs); GPU: the allocator's peak."""
    from rlreason.batching import make_batch
    from rlreason.batching import token_logprobs as logprobs
    from rlreason.rl import policy_loss

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    model = shape_model(spec["overrides"]).to(DEVICE)
    model.train()
    chunk = None if spec["variant"] == "full" else spec.get("chunk_elements") or "default"
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    rows, p_len, c_len = spec["rows"], spec["prompt"], spec["completion"]
    prompts = torch.randint(1, vocab, (rows, p_len), generator=g).tolist()
    completions = torch.randint(1, vocab, (rows, c_len), generator=g).tolist()
    batch = make_batch(prompts, completions, 0, DEVICE)

    def step(b) -> None:
        logp, _ = logprobs(model, b, with_entropy=True, chunk_elements=chunk)
        mask = b.completion_mask
        policy_loss(logp, mask, torch.ones(mask.shape[0], device=mask.device), mask.shape[0])[0].backward()

    step(make_batch(prompts[:1], [c[:4] for c in completions[:1]], 0, DEVICE))
    model.zero_grad(set_to_none=False)
    sync()
    if DEVICE.type == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        read_peak = lambda: torch.cuda.max_memory_allocated()  # noqa: E731
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before, read_peak = _proc_status_kb("VmRSS") * 1024, lambda: _proc_status_kb("VmHWM") * 1024
    seconds = []
    for _ in range(spec.get("reps", 1)):
        start = time.perf_counter()
        step(batch)
        sync()
        seconds.append(time.perf_counter() - start)
    return {"variant": spec["variant"], "peak_delta_mb": (read_peak() - before) / 2**20, "step_s": median(seconds),
            "tokens_per_s": batch.num_tokens / median(seconds), "rows": rows, "prompt": p_len, "completion": c_len,
            "vocab": vocab, "device": DEVICE.type}


def logprob_comparison(overrides: list[str], rows: int = LOGPROB_ROWS, prompt: int = LOGPROB_PROMPT,
                       completion: int = LOGPROB_COMPLETION, reps: int = 1, threads: int | None = None,
                       chunk_elements: int | None = None) -> list[dict[str, Any]]:
    """The log-prob step (forward+backward) with the full logits and chunked, each in a fresh process."""
    out = []
    for variant in ("full", "chunked"):
        spec = {"overrides": overrides, "variant": variant, "rows": rows, "prompt": prompt, "completion": completion,
                "reps": reps, "threads": threads, "chunk_elements": chunk_elements}
        proc = subprocess.run([sys.executable, __file__, "--logprob-worker", json.dumps(spec)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        if proc.returncode != 0:
            raise RuntimeError(f"log-prob worker ({variant}) failed: {proc.stderr.strip()[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full, chunked = out
    chunked["peak_vs_full"] = chunked["peak_delta_mb"] / full["peak_delta_mb"]
    chunked["throughput_vs_full"] = chunked["tokens_per_s"] / full["tokens_per_s"]
    return out


def logprob_markdown(results: list[dict[str, Any]], title: str) -> str:
    r = results[0]
    lines = [f"## Log-prob step memory: full logits vs chunked ({title})", "",
             f"{r['rows']} rows x ({r['prompt']} prompt + {r['completion']} completion) tokens, vocabulary {r['vocab']}, "
             f"one forward+backward with entropy, {r['device']}; peak growth: "
             + ("GPU allocator" if r["device"] == "cuda" else "RSS high-water mark (VmHWM), fresh process per variant"), "",
             "| variant | peak growth (MB) | step (s) | tokens/s | peak vs full | throughput vs full |", "|---|---|---|---|---|---|"]
    for x in results:
        lines.append(f"| {x['variant']} | {x['peak_delta_mb']:.0f} | {x['step_s']:.2f} | {x['tokens_per_s']:.0f} | "
                     f"{fmt(x.get('peak_vs_full'))} | {fmt(x.get('throughput_vs_full'))} |")
    return "\n".join(lines)


def flops_per_token(model, rows) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per real token, counted by FlopCounterMode on real rows
    without padding (one row at a time), so padding and masked positions are not counted as work."""
    from torch.utils.flop_counter import FlopCounterMode

    from rlreason.batching import make_batch, token_logprobs

    prompts, completions = rows
    fwd = fb = tokens = 0
    for p, c in list(zip(prompts, completions))[:8]:
        batch = make_batch([p], [c], model.config.pad_token_id, DEVICE)
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                token_logprobs(model, batch)
        fwd += counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            token_logprobs(model, batch)[0].sum().backward()
        fb += counter.get_total_flops()
        tokens += batch.num_tokens
    model.zero_grad(set_to_none=True)
    return fwd / tokens, fb / tokens


# ---------------------------------------------------------------------------- report
def time_to(curve: list[tuple[float, int, float]], target: float) -> float | None:
    for seconds, _, acc in curve:
        if acc >= target - 1e-9:
            return seconds
    return None


def summarise(rows: list[dict[str, Any]], peak: float, fpt: tuple[float, float]) -> list[dict[str, Any]]:
    """Per-rep target accuracy (the lowest final accuracy among all arms of that rep), then
    medians over reps per arm."""
    reps = sorted({r["rep"] for r in rows})
    for rep in reps:
        mine = [r for r in rows if r["rep"] == rep]
        target = min(r["final_acc"] for r in mine) - 0.02  # slack for the curves' noisier single-sample evals
        for r in mine:
            r["target_acc"] = target
            r["time_to_target_s"] = time_to(r["curve"], target)
            if "train_tokens" in r:
                fwd, fb = fpt
                r["train_flops"] = fb * r["train_tokens"] + fwd * r["gen_tokens"]
                r["flops_frac_step"] = r["train_flops"] / r["train_s"] / peak
                r["flops_frac_backprop"] = fb * r["train_tokens"] / max(1e-9, r["forward_backward_s"]) / peak
    table = []
    for arm in [a for a in list(ARMS) + list(TRL_ARMS) if any(r["arm"] == a for r in rows)]:
        mine = [r for r in rows if r["arm"] == arm]
        agg: dict[str, Any] = {"arm": arm, "reps": len(mine)}
        for key in ("train_s", "time_to_target_s", "sampling_s", "scoring_s", "reference_s", "forward_backward_s",
                    "optimizer_s", "final_acc", "final_greedy_acc", "base_acc", "base_greedy_acc", "target_acc", "kept_frac", "flops_frac_step",
                    "flops_frac_backprop"):
            values = [r.get(key) for r in mine if r.get(key) is not None]
            agg[key] = median(values) if values else None
        agg["completions_per_s"] = median([r["completions"] / r["train_s"] for r in mine])
        agg["final_acc_all"] = [r["final_acc"] for r in mine]
        agg["load_avg"] = "; ".join(r["load_avg"] for r in mine)
        table.append(agg)
    by = {a["arm"]: a for a in table}
    for a in table:  # ratios per rep, then the median (ratios measured in one run count)
        for ref in ("grpo", "trl"):
            if ref in by and a["arm"] != ref:
                ratios = []
                for rep in reps:
                    x = next((r for r in rows if r["arm"] == a["arm"] and r["rep"] == rep), None)
                    y = next((r for r in rows if r["arm"] == ref and r["rep"] == rep), None)
                    if x and y:
                        ratios.append(x["train_s"] / y["train_s"])
                a[f"time_vs_{ref}"] = median(ratios) if ratios else None
    return table


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:.{digits}f}"
    return str(x)


def markdown(table, gen_curve, bp_curve, peak, fpt, info, targets) -> str:
    lines = ["## Arms (medians over repetitions; seconds exclude evaluation)", "",
             "| arm | train s | vs grpo | vs trl | s to target acc | sampling | scoring | reference | fwd+bwd | "
             "optimizer | completions/s | sampled acc: base -> final (median) | final per rep | greedy acc: base -> final | kept rows | FLOP/s of peak (step / backprop) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in table:
        lines.append(
            f"| {a['arm']} | {fmt(a['train_s'], 1)} | {fmt(a.get('time_vs_grpo'))} | {fmt(a.get('time_vs_trl'))} | "
            f"{fmt(a['time_to_target_s'], 1)} | {fmt(a['sampling_s'], 1)} | {fmt(a['scoring_s'], 1)} | "
            f"{fmt(a['reference_s'], 1)} | {fmt(a['forward_backward_s'], 1)} | {fmt(a['optimizer_s'], 1)} | "
            f"{fmt(a['completions_per_s'], 1)} | {fmt(a['base_acc'], 3)} -> {fmt(a['final_acc'], 3)} | "
            f"{', '.join(fmt(x, 3) for x in a['final_acc_all'])} | {fmt(a['base_greedy_acc'], 3)} -> "
            f"{fmt(a['final_greedy_acc'], 3)} | {fmt(a['kept_frac'])} | "
            f"{fmt(None if a['flops_frac_step'] is None else 100 * a['flops_frac_step'], 1)}% / "
            f"{fmt(None if a['flops_frac_backprop'] is None else 100 * a['flops_frac_backprop'], 1)}% |")
    lines += ["", f"Accuracy: held-out sampled pass@1 at temperature 1 (final: {FINAL_SAMPLES} samples per problem; "
              f"the curves for time-to-target: 1 sample per problem, every eval.every steps) unless marked greedy. "
              f"Target accuracy per repetition: the lowest final accuracy among the arms minus 0.02, "
              f"reached first on the curves: {targets}.",
              "TRL's `sampling` column is its whole `_generate_and_score_completions` (generate, reward, advantages); "
              "its `fwd+bwd` column is the rest of its step (backprop and optimizer together).", "",
              "## Targets", ""]
    by = {a["arm"]: a for a in table}
    checks = []
    if "grpo" in by and "dash" in by:
        r = by["dash"].get("time_vs_grpo")
        d = (by["dash"]["final_acc"] - by["grpo"]["final_acc"]) * 100
        checks.append(f"- DASH wall-clock <= 0.25 x GRPO with final accuracy within 3 points: ratio {fmt(r)}, "
                      f"accuracy difference {d:+.1f} points -> {'met' if r is not None and r <= 0.25 and abs(d) <= 3 else 'NOT met'}")
    if "grpo" in by and "trl" in by:
        for trl_arm in ("trl", "trl_microgen"):
            if trl_arm in by:
                r = by["grpo"]["train_s"] / by[trl_arm]["train_s"]
                checks.append(f"- our grpo at least as fast as {trl_arm}: grpo/{trl_arm} time {fmt(r)} -> "
                              f"{'met' if r <= 1.0 else 'NOT met'}")
    if "dash" in by and "trl" in by:
        r = by["dash"].get("time_vs_trl")
        d = (by["dash"]["final_acc"] - by["trl"]["final_acc"]) * 100
        checks.append(f"- dash >= 3x faster than TRL (default layout) at the same final accuracy: speed-up "
                      f"{fmt(None if not r else 1 / r)}x, accuracy difference {d:+.1f} points -> "
                      f"{'met' if r and 1 / r >= 3 and abs(d) <= 3 else 'NOT met'}")
    lines += checks
    lines += ["", "## Sampling throughput against generation batch size", "",
              "| generation batch | new tokens/s | load |", "|---|---|---|"]
    lines += [f"| {g['generation_batch']} | {g['sampling_tok_s']:.0f} | {g['load_avg']} |" for g in gen_curve]
    lines += ["", "## Backprop throughput and memory against micro-batch size", "",
              f"| micro-batch | fwd+bwd tokens/s | activations saved for backward (MB) | peak {MEMORY_KIND} growth of one fwd+bwd (MB) | load |",
              "|---|---|---|---|---|"]
    lines += [f"| {b['micro_batch']} | {b['backprop_tok_s']:.0f} | {b['saved_activations_mb']:.1f} | "
              f"{fmt(b.get('peak_mem_delta_mb'), 1)} | {b['load_avg']} |" for b in bp_curve]
    lines += ["", "## Hardware", "",
              f"- {info['dtype'].removeprefix('torch.')} matmul peak measured in this run on {info['device']}: {peak / 1e9:.1f} GFLOP/s",
              f"- model FLOPs per token (FlopCounterMode): forward {fpt[0] / 1e6:.2f} MFLOP, forward+backward {fpt[1] / 1e6:.2f} MFLOP",
              f"- machine: {json.dumps(info)}"]
    return "\n".join(lines) + "\n"


def plot(gen_curve, bp_curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([g["generation_batch"] for g in gen_curve], [g["sampling_tok_s"] for g in gen_curve], "o-",
                 label="sampling (new tokens/s)")
    axes[0].plot([b["micro_batch"] for b in bp_curve], [b["backprop_tok_s"] for b in bp_curve], "s-",
                 label="forward+backward (tokens/s)")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("sequences per call (generation batch / micro-batch)")
    axes[0].set_ylabel("tokens per second")
    axes[0].set_title("Throughput against batch size")
    axes[0].legend()
    axes[1].plot([b["micro_batch"] for b in bp_curve], [b["saved_activations_mb"] for b in bp_curve], "s-",
                 label="activations saved for backward")
    if all(b.get("peak_mem_delta_mb") is not None for b in bp_curve):
        axes[1].plot([b["micro_batch"] for b in bp_curve], [b["peak_mem_delta_mb"] for b in bp_curve], "^-",
                     label=f"peak {MEMORY_KIND} growth")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("micro-batch size (sequences)")
    axes[1].set_ylabel("MB")
    axes[1].set_title("Backprop memory against micro-batch size")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def write_results(out: Path, rows, gen_curve, bp_curve, peaks: list[float], fpt, info: dict[str, Any],
                  started: float, scoring: list[dict[str, Any]] | None = None) -> str:
    """Write results.md, arms.csv, curves.csv, scoring.csv and raw.json from what has been measured so far."""
    peak = max(peaks)
    info = {**info, "matmul_peaks_gflops": [round(p / 1e9, 1) for p in peaks],
            "bench_seconds": round(time.perf_counter() - started), "load_avg_end": load_average(),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    table = summarise(rows, peak, fpt) if rows else []
    targets = {r["rep"]: r["target_acc"] for r in rows if "target_acc" in r}
    md = markdown(table, gen_curve, bp_curve, peak, fpt, info, targets)
    if scoring:
        md += "\n" + sandbox_bench.markdown(scoring)
        with open(out / "scoring.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(scoring[0]))
            writer.writeheader()
            writer.writerows(scoring)
    (out / "results.md").write_text(md)
    if rows:
        with open(out / "arms.csv", "w", newline="") as f:
            keys = [k for k in rows[0] if k != "curve"] + ["target_acc", "time_to_target_s"]
            keys += [k for k in ("train_flops", "flops_frac_step", "flops_frac_backprop") if k not in keys]
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(keys)), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    if gen_curve:
        with open(out / "curves.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["kind", "batch", "tokens_per_s", "saved_activations_mb", "peak_mem_delta_mb", "load_avg"])
            for g in gen_curve:
                writer.writerow(["sampling", g["generation_batch"], round(g["sampling_tok_s"], 1), "", "", g["load_avg"]])
            for b in bp_curve:
                writer.writerow(["backprop", b["micro_batch"], round(b["backprop_tok_s"], 1),
                                 round(b["saved_activations_mb"], 2), b["peak_mem_delta_mb"], b["load_avg"]])
    (out / "raw.json").write_text(json.dumps({"machine": info, "rows": rows, "table": table, "generation": gen_curve,
                                              "backprop": bp_curve, "flops_per_token": fpt, "peak_flops": peak,
                                              "scoring": scoring or []},
                                             indent=1, default=str))
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: debug model, 3 steps, 1 repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of every arm (default 3; quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per arm (default 20; quick: 3)")
    parser.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default 5; 0: at the start and the end only)")
    parser.add_argument("--arms", default="grpo,dash_nofilter,dash,trl",
                        help="comma-separated arms out of grpo,dash_nofilter,dash,trl,trl_microgen")
    parser.add_argument("--no-curves", action="store_true", help="skip the throughput/memory curves")
    parser.add_argument("--no-scoring", action="store_true", help="skip the code-scoring throughput (sandbox_bench.py)")
    parser.add_argument("--shape", choices=SHAPES,
                        help="time a random-weight model of this shape (model=<shape>-shape) at realistic lengths "
                             f"(sampler.max_new_tokens={SHAPE_MAX_NEW_TOKENS}), for a GPU; accuracies are 0 by construction")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE",
                        help="a Hydra override for every arm and curve, e.g. --set sampler.max_new_tokens=256 (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/bench/<time>)")
    parser.add_argument("--logprobs", action="store_true",
                        help="only the log-prob memory comparison (full logits vs chunked) at --shape (default: the "
                             f"tiny model), {LOGPROB_ROWS} rows x ({LOGPROB_PROMPT} + {LOGPROB_COMPLETION}) tokens")
    parser.add_argument("--logprob-completion", type=int, default=LOGPROB_COMPLETION, help="completion tokens of --logprobs")
    parser.add_argument("--logprob-chunk-elements", type=int, default=None,
                        help="logits per chunk of the chunked variant (default: batching.LOGPROB_CHUNK_ELEMENTS)")
    parser.add_argument("--rss-worker", help=argparse.SUPPRESS)
    parser.add_argument("--logprob-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_worker:
        print(json.dumps(rss_worker(json.loads(args.rss_worker))))
        return 0
    if args.logprob_worker:
        print(json.dumps(logprob_worker(json.loads(args.logprob_worker))))
        return 0
    if args.logprobs:
        overrides = ([f"model={args.shape}-shape"] if args.shape else []) + args.set
        results = logprob_comparison(overrides, completion=args.logprob_completion, reps=args.reps or 1,
                                     chunk_elements=args.logprob_chunk_elements)
        print(logprob_markdown(results, args.shape or "tiny"))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    steps = args.steps or (3 if quick else 20)
    every = args.eval_every if args.eval_every is not None else (1 if quick else 5)  # 0: start and end only
    out = args.out or ROOT / "outputs" / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    base = ["logger=none", "logger.progress=false", f"trainer.steps={steps}", f"eval.every={every}",
            "eval.greedy=false", "eval.at_start=true", "checkpoint.save_final=false"]
    if quick:
        base += ["debug=true"]
    arms = [a for a in args.arms.split(",") if a]
    if args.shape:
        base += [f"model={args.shape}-shape", f"sampler.max_new_tokens={SHAPE_MAX_NEW_TOKENS}", "task.n_test_problems=16"]
        if "dash" in arms:  # every reward is 0, so every group has zero spread
            log.warning("--shape: skipping dash: with random weights every reward is 0 and the filter would drop every row")
            arms.remove("dash")
    base += args.set
    if any(a in TRL_ARMS for a in arms):
        try:
            import trl  # noqa: F401
        except ImportError:
            log.warning("trl is not installed (pip install -e '.[bench]'): skipping the TRL arms")
            arms = [a for a in arms if a not in TRL_ARMS]
    info = machine()
    started = time.perf_counter()
    log.info("bench: %s; arms %s, %d reps x %d steps; load %s -> %s", info["cpu"], arms, reps, steps, load_average(), out)

    cfg, task, model, tokenizer = load_base(base)
    dtype = next(model.parameters()).dtype
    info.update(model=cfg.model.name, dtype=str(dtype), max_new_tokens=cfg.sampler.max_new_tokens,
                parameters_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
    peaks = [matmul_peak(0.1 if quick else 0.5, dtype)]
    log.info("matmul peak %.1f GFLOP/s (%s)", peaks[0] / 1e9, dtype)
    rows_for_curves = sample_rows(cfg, task, model, tokenizer, 32 if quick else 128)
    fpt = flops_per_token(model, rows_for_curves)

    rows: list[dict[str, Any]] = []
    gen_curve: list[dict[str, Any]] = []
    bp_curve: list[dict[str, Any]] = []
    for rep in range(reps):
        order = arms[rep % len(arms):] + arms[: rep % len(arms)]
        for arm in order:
            row = run_trl(arm, base, rep, out) if arm in TRL_ARMS else run_arm(arm, base, rep, out)
            rows.append(row)
            log.info("rep %d %-14s train %.1fs acc %.3f (load %s)", rep, arm, row["train_s"], row["final_acc"], row["load_avg"])
            # Written as each arm finishes: an out-of-memory later (an arm, a curve) keeps these numbers.
            write_results(out, rows, gen_curve, bp_curve, peaks, fpt, info, started)
        peaks.append(matmul_peak(0.1 if quick else 0.5, dtype))

    if not args.no_curves:
        gen_sizes = [4, 8, 16, 32] if quick else [8, 16, 32, 64, 128, 256, 512]
        micro_sizes = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64, 128]
        if args.shape:  # at a real model's vocabulary, 128 rows of 512 tokens need hundreds of GB of logits
            micro_sizes = [m for m in micro_sizes if m <= SHAPE_MAX_MICRO_BATCH]
        curve_reps = 1 if quick else 3
        try:
            gen_curve = generation_curve(cfg, task, model, tokenizer, gen_sizes, curve_reps)
            bp_curve = backprop_curve(cfg, model, rows_for_curves, micro_sizes, curve_reps)
            if DEVICE.type == "cpu":  # a GPU's peak memory is measured in backprop_curve
                from rlreason.modeling import base_model_path

                rss = rss_curve(base, base_model_path(cfg, task), rows_for_curves, micro_sizes)
                for b in bp_curve:
                    b["peak_mem_delta_mb"] = rss.get(b["micro_batch"])
            plot(gen_curve, bp_curve, out / "curves.png")
            log.info("curves done (load %s)", load_average())
        except torch.OutOfMemoryError as exc:
            log.error("curves stopped by out-of-memory (the arms' numbers are kept): %s", str(exc).splitlines()[0])
    scoring = None
    if not args.no_scoring:
        scoring = sandbox_bench.measure([1, 2], cache_dir=str(cfg.cache_dir), quick=quick)
        log.info("code scoring done (load %s)", load_average())
    peaks.append(matmul_peak(0.1 if quick else 0.5, dtype))
    md = write_results(out, rows, gen_curve, bp_curve, peaks, fpt, info, started, scoring)
    print(md)
    log.info("wrote %s (%.0f s)", out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
