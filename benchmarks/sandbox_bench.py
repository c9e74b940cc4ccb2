"""Completions scored per second by the code sandbox; `make bench` runs it as its last section.

Three loads, each with 1 and 2 workers (bubblewrap mode unless --mode process), each timed as one
``grade`` call (one training step's scoring) after a warm-up call, task start-up excluded:

* ``codegen_per_s``: the embedded code task (task=codegen) grading 256 of its teacher's
  demonstrations (right and wrong ones, as in its warm start) on their 8 hidden inputs each;
* ``mbppplus_canonical_per_s``: MBPP+'s canonical solutions graded by the MBPP+ task on all
  their base and plus inputs (expected outputs from the task's cache; the three tasks whose
  canonical solution needs more than the default limits are left out, since each just runs
  into its timeout);
* ``trivial_per_s``: one-line programs on one input: the sandbox's own cost per completion
  (fork, limits, pipes, encode/decode).

    python benchmarks/sandbox_bench.py [--workers 1 2] [--mode bwrap] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rlreason.sandbox import Program, Sandbox, SandboxConfig  # noqa: E402
from rlreason.tasks.codegen import CodegenTask  # noqa: E402
from rlreason.tasks.mbppplus import MbppPlusTask  # noqa: E402

# The shared MBPP+ file (beside the checkout, as the tests find it).
DATA = ROOT.parent / "shared" / "data" / "mbppplus" / "MbppPlus-v0.2.0.jsonl.gz"
SLOW_CANONICAL = {"Mbpp/255", "Mbpp/392", "Mbpp/599"}
CODEGEN_COMPLETIONS = 256  # about one training step's (16 prompts x 8 samples is 128)


def codegen_throughput(workers: int, mode: str = "bwrap", n: int = CODEGEN_COMPLETIONS) -> float:
    """The embedded code task's completions graded per second (its teacher's demonstrations)."""
    task = CodegenTask(seed=0, n_test_problems=8, sandbox=mode, sandbox_workers=workers)
    try:
        examples = [task.train_example(i) for i in range(n)]
        completions = [e.demonstration for e in examples]
        task.grade(completions[:8], examples[:8])  # warm
        start = time.perf_counter()
        grades = task.grade(completions, examples)
        elapsed = time.perf_counter() - start
        right = sum(g.correct for g in grades) / n
        assert 0.1 < right < 0.9, f"the teacher's demonstrations scored {right:.2f}: not a mix of right and wrong"
        return n / elapsed
    finally:
        task.close()


def mbppplus_throughput(workers: int, mode: str = "bwrap", data_files: str | Path = DATA,
                        cache_dir: str = ".cache/rlreason", limit: int | None = None) -> float:
    """Canonical MBPP+ solutions graded per second (task start-up and cache excluded); ``limit``:
    only the first that many tasks (a subset file, so the expected outputs are computed for those only)."""
    with tempfile.TemporaryDirectory() as tmp:
        if limit:
            rows = [r for r in map(json.loads, gzip.open(data_files, "rt")) if r["task_id"] not in SLOW_CANONICAL]
            data_files = Path(tmp) / "subset.jsonl"
            data_files.write_text("".join(json.dumps(r) + "\n" for r in rows[:limit]))
        task = MbppPlusTask(data_files=str(data_files), n_train=0, cache_dir=cache_dir, sandbox=mode,
                            sandbox_workers=workers)
        try:
            examples = [task.example(p) for p in task.problems.values() if p.task_id not in SLOW_CANONICAL]
            task.grade([e.reference_solution for e in examples[:4]], examples[:4])  # warm
            start = time.perf_counter()
            grades = task.grade([e.reference_solution for e in examples], examples)
            elapsed = time.perf_counter() - start
            assert all(g.correct for g in grades), "a canonical solution failed"
            return len(examples) / elapsed
        finally:
            task.close()


def trivial_throughput(workers: int, mode: str = "bwrap", n: int = 512) -> float:
    """One-line programs run per second: the sandbox's own cost per completion."""
    with Sandbox(SandboxConfig(mode=mode, workers=workers)) as sandbox:
        programs = [Program(f"def f(x):\n    return x + {i}\n", "f", [[1]]) for i in range(n)]
        sandbox.run(programs[:8])  # warm
        start = time.perf_counter()
        sandbox.run(programs)
        return n / (time.perf_counter() - start)


def measure(workers: list[int], mode: str = "bwrap", data_files: str | Path = DATA, cache_dir: str = ".cache/rlreason",
            quick: bool = False) -> list[dict[str, Any]]:
    """One row per worker count: completions scored per second for each load, and the load average.
    ``quick``: fewer completions (64 codegen, 16 MBPP+ tasks, 128 trivial); MBPP+ is None without its file."""
    rows = []
    for n_workers in workers:
        has_data = Path(data_files).is_file()
        rows.append({
            "workers": n_workers,
            "mode": mode,
            "codegen_per_s": codegen_throughput(n_workers, mode, 64 if quick else CODEGEN_COMPLETIONS),
            "mbppplus_canonical_per_s": (mbppplus_throughput(n_workers, mode, data_files, cache_dir, 16 if quick else None)
                                         if has_data else None),
            "trivial_per_s": trivial_throughput(n_workers, mode, 128 if quick else 512),
            "load_avg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table `make bench` prints (completions scored per second)."""
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.0f}"

    lines = ["## Code scoring: completions scored per second (benchmarks/sandbox_bench.py)", "",
             "| workers | mode | codegen (its teacher's demonstrations) | MBPP+ canonical solutions | trivial programs | load |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['mode']} | {num(r['codegen_per_s'])} | {num(r['mbppplus_canonical_per_s'])} | "
              f"{num(r['trivial_per_s'])} | {r['load_avg']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mode", default="bwrap", choices=["bwrap", "process"])
    parser.add_argument("--data-files", default=str(DATA))
    parser.add_argument("--cache-dir", default=os.environ.get("RLREASON_CACHE", ".cache/rlreason"))
    parser.add_argument("--quick", action="store_true", help="fewer completions per load (a smoke test)")
    args = parser.parse_args()
    print(markdown(measure(args.workers, args.mode, args.data_files, args.cache_dir, args.quick)), flush=True)


if __name__ == "__main__":
    main()
