"""Completions scored per second by the code sandbox, for `make bench` to call.

Two loads, each with 1 and 2 workers (bubblewrap mode unless --mode process):

* ``mbppplus_canonical_per_s``: MBPP+'s canonical solutions graded by the MBPP+ task on all
  their base and plus inputs (expected outputs from the task's cache; the three tasks whose
  canonical solution needs more than the default limits are left out, since each just runs
  into its timeout);
* ``trivial_per_s``: one-line programs on one input: the sandbox's own cost per completion
  (fork, limits, pipes, encode/decode).

    python benchmarks/sandbox_bench.py [--workers 1 2] [--mode bwrap]
"""

from __future__ import annotations

import argparse
import time

from rlreason.sandbox import Program, Sandbox, SandboxConfig
from rlreason.tasks.mbppplus import MbppPlusTask

DATA = "../shared/data/mbppplus/MbppPlus-v0.2.0.jsonl.gz"
SLOW_CANONICAL = {"Mbpp/255", "Mbpp/392", "Mbpp/599"}


def mbppplus_throughput(workers: int, mode: str = "bwrap", data_files: str = DATA,
                        cache_dir: str = ".cache/rlreason") -> float:
    """Canonical MBPP+ solutions graded per second (task start-up and cache excluded)."""
    task = MbppPlusTask(data_files=data_files, cache_dir=cache_dir, sandbox=mode, sandbox_workers=workers)
    try:
        examples = [task.example(p) for p in task.problems.values() if p.task_id not in SLOW_CANONICAL]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mode", default="bwrap", choices=["bwrap", "process"])
    parser.add_argument("--data-files", default=DATA)
    args = parser.parse_args()
    for workers in args.workers:
        print(f"workers={workers} mode={args.mode} trivial_per_s={trivial_throughput(workers, args.mode):.1f} "
              f"mbppplus_canonical_per_s={mbppplus_throughput(workers, args.mode, args.data_files):.1f}", flush=True)


if __name__ == "__main__":
    main()
