"""Tasks: the embedded arithmetic default and the real benchmarks, behind one interface."""

from __future__ import annotations

from typing import Any

from rlreason.tasks.base import Example, Task

__all__ = ["Example", "Task", "build_task"]


def build_task(task_cfg: Any, tokenizer: Any = None) -> Task:
    """The task a ``task=`` config names."""
    if task_cfg.name == "arithmetic":
        from rlreason.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(
            digits=task_cfg.digits,
            seed=task_cfg.seed,
            n_test_problems=task_cfg.n_test_problems,
            teacher_carry_noise=task_cfg.teacher_carry_noise,
        )
    from rlreason.tasks.benchmarks import build_benchmark_task

    return build_benchmark_task(task_cfg, tokenizer=tokenizer)
