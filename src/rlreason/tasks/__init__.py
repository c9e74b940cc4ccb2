"""Tasks: the embedded arithmetic default and the real benchmarks, behind one interface."""

from __future__ import annotations

from typing import Any

from rlreason.tasks.base import Example, Task

__all__ = ["Example", "Task", "build_task"]


SFT_SOURCES = ("reference", "teacher")


def build_task(task_cfg: Any, tokenizer: Any = None, sft_source: str = "teacher") -> Task:
    """The task a ``task=`` config names. ``sft_source`` may name a JSONL of a stronger model's
    traces (the paper's SFT-M), which become the task's demonstrations."""
    if task_cfg.name == "arithmetic":
        if sft_source not in SFT_SOURCES:
            from rlreason.errors import ConfigError

            raise ConfigError(f"sft.source={sft_source!r}: task=arithmetic has its own teacher; use reference or teacher")
        from rlreason.tasks.arithmetic import ArithmeticTask

        return ArithmeticTask(
            digits=task_cfg.digits,
            seed=task_cfg.seed,
            n_test_problems=task_cfg.n_test_problems,
            teacher_carry_noise=task_cfg.teacher_carry_noise,
        )
    from rlreason.tasks.benchmarks import build_benchmark_task, load_sft_traces

    demonstrations = None if sft_source in SFT_SOURCES else load_sft_traces(sft_source)
    return build_benchmark_task(task_cfg, tokenizer=tokenizer, demonstrations=demonstrations)
