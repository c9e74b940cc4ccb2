"""Held-out evaluation: greedy accuracy, sampled pass@1 and unbiased pass@k, through the task's own
``is_correct`` (a task's reward may be any float). The trainer and ``make bench`` both call this.
"""

from __future__ import annotations

import time
from typing import Any

from rlreason.distributed import Parallel
from rlreason.rl import pass_at_k
from rlreason.sampling import Completions
from rlreason.tasks import Example


def held_out(task: Any, task_cfg: Any) -> list[Example]:
    """The task's held-out split, cut to its config's first ``n_test`` problems (null: all)."""
    return task.test_examples()[: task_cfg.get("n_test") or None]


def evaluate_task(sampler: Any, task: Any, examples: list[Example], eval_cfg: Any, parallel: Parallel | None = None,
                  prefix: str = "eval", shown_rows: int = 0) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """``{prefix}/greedy_acc``, ``{prefix}/sampled_acc`` (the mean over ``eval.samples_per_problem``
    samples per problem at the sampler's temperature: pass@1), ``{prefix}/pass@k`` for each k in
    ``eval.pass_k``, and the mean length and truncated fraction of each mode; plus up to
    ``shown_rows`` (prompt, completion, correct) rows for the logger. Under several processes each
    evaluates its share of ``examples`` and the sums are added up."""
    e = eval_cfg
    parallel = parallel or Parallel()
    examples = parallel.shard(examples)
    prompts = [ex.prompt for ex in examples]
    metrics: dict[str, float] = {}
    shown: list[tuple[str, str, float]] = []
    for mode in ("greedy", "sampled"):
        if not e[mode]:
            continue
        n = 1 if mode == "greedy" else e.samples_per_problem
        out = (sampler.generate(prompts, n=n, greedy=mode == "greedy", batch_size=e.batch_size)
               if prompts else Completions([], [], [], []))
        grades = task.grade(out.texts, [examples[i // n] for i in range(len(out))]) if len(out) else []
        scores = [float(x.correct) for x in grades]  # the task's own is_correct, whatever its reward
        correct_per_problem = [sum(scores[i * n : (i + 1) * n]) for i in range(len(examples))]
        pass_at = [sum(pass_at_k(n, int(c), k) for c in correct_per_problem) for k in e.pass_k] if n > 1 else []
        lengths = [len(c) for c in out.completion_ids]
        total, correct, length, length_sq, finished, problems, *pass_sums = parallel.sum(
            [len(scores), sum(scores), sum(lengths), sum(x * x for x in lengths), sum(out.finished), len(examples), *pass_at]
        )
        metrics[f"{prefix}/{mode}_acc"] = correct / total
        metrics[f"{prefix}/{mode}_mean_length"] = length / total
        # The spread of lengths over completions (population sd): whether length is free on the task.
        metrics[f"{prefix}/{mode}_length_std"] = max(0.0, length_sq / total - (length / total) ** 2) ** 0.5
        metrics[f"{prefix}/{mode}_truncated_frac"] = 1.0 - finished / total
        for k, value in zip(e.pass_k if n > 1 else [], pass_sums):
            metrics[f"{prefix}/pass@{k}"] = value / problems
        if mode == "sampled" or not shown:
            shown = list(zip([examples[i // n].prompt for i in range(len(out))], out.texts, scores))[:shown_rows]
    return metrics, shown


class Evaluator:
    """The run's evaluation: the training task's held-out split (``eval/...``, its first
    ``task.n_test`` problems) and every ``eval.tasks`` entry (``eval/<name>/...``)."""

    def __init__(self, cfg: Any, sampler: Any, task: Any, eval_tasks: dict[str, Any], parallel: Parallel):
        self.cfg, self.sampler, self.task, self.eval_tasks, self.parallel = cfg, sampler, task, eval_tasks, parallel

    def evaluate(self) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
        """The metrics, and the training task's completions to show."""
        start = time.perf_counter()
        metrics, shown = evaluate_task(self.sampler, self.task, held_out(self.task, self.cfg.task), self.cfg.eval,
                                       self.parallel, "eval", self.cfg.logger.log_completions)
        for name, task in self.eval_tasks.items():
            extra, _ = evaluate_task(self.sampler, task, held_out(task, self.cfg.eval.tasks[name]), self.cfg.eval,
                                     self.parallel, f"eval/{name}")
            metrics.update(extra)
        metrics["eval/time_s"] = time.perf_counter() - start
        return metrics, shown
