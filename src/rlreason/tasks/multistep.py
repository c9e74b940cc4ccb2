"""A second embedded task: multi-step integer expressions with precedence, solved by a worked reduction.

Prompt ``3+4*2-5=``; the worked solution reduces the expression one operation per step
(multiplications first, leftmost first; then additions and subtractions left to right), then
states the answer after ``:`` as in ``arithmetic``: ``4*2=8,3+8=11,11-5=6:6``. The reward is 1
when the text after the last ``:`` is exactly the value (``-3`` for a negative one).

The teacher's demonstrations (which warm-start the base model) are imperfect and of free length:
- each operation's result is wrong with probability ``teacher_step_noise`` (off by 1 or 10); the
  teacher carries on from the wrong value, so the steps stay consistent and the answer is wrong;
- terse: with probability ``teacher_merge_prob`` a step is merged with the next one that uses its
  result, written as one step over the two operations (``3+4*2=11``);
- verbose: with probability ``teacher_restate_prob`` a step is followed by the expression that
  remains (``4*2=8>3+8-5``).
So one correct answer can be written at several lengths, and the response length is an outcome.
The reference solutions (SFT on ``reference``) are the canonical reduction, correct, one operation
per step, nothing merged or restated.

Two test splits share the train stream: ``split=id`` draws ``min_ops..max_ops`` operations like
training, ``split=ood`` draws ``ood_min_ops..ood_max_ops`` (longer problems). Train problems never
equal a problem of either test split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlreason.errors import ConfigError
from rlreason.tasks.arithmetic import final_answer
from rlreason.tasks.base import Example, Task, TaskConfig, TaskContext

# Every character the task's texts use; the embedded tokenizer is built from this alphabet.
ALPHABET = "0123456789+-*=,:>"
OPERATIONS = "+-*"
SPLITS = ("id", "ood")
# The teacher's slips: a wrong result is off by one of these.
SLIPS = (-10, -1, 1, 10)


def apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def next_operation(ops: list[str]) -> int:
    """Index of the operation reduced next: the leftmost ``*``, else the leftmost ``+``/``-``."""
    return ops.index("*") if "*" in ops else 0


def expression(values: list[int], ops: list[str]) -> str:
    return str(values[0]) + "".join(f"{op}{v}" for op, v in zip(ops, values[1:]))


def evaluate(values: list[int], ops: list[str]) -> int:
    """The value by precedence (``*`` before ``+``/``-``, left to right)."""
    values, ops = list(values), list(ops)
    while ops:
        i = next_operation(ops)
        values[i : i + 2] = [apply(values[i], ops[i], values[i + 1])]
        del ops[i]
    return values[0]


def reduction_steps(values: list[int], ops: list[str], slips: list[int] | None = None) -> list[dict[str, Any]]:
    """The reduction, one operation per step: each step's operands, operation, result (plus
    ``slips[k]`` at step k: a teacher's error, carried on), and the values and operations left."""
    values, ops = list(values), list(ops)
    steps = []
    for k in range(len(ops)):
        i = next_operation(ops)
        a, op, b = values[i], ops[i], values[i + 1]
        result = apply(a, op, b) + (slips[k] if slips else 0)
        values[i : i + 2] = [result]
        del ops[i]
        steps.append({"index": i, "a": a, "op": op, "b": b, "result": result, "values": list(values), "ops": list(ops)})
    return steps


def worked_solution(values: list[int], ops: list[str], slips: list[int] | None = None,
                    merge: list[bool] | None = None, restate: list[bool] | None = None) -> str:
    """The written reduction: ``merge[k]`` writes step k and step k+1 as one step when step k+1
    uses step k's result; ``restate[k]`` writes ``>`` and the expression left after the step
    (skipped when only the answer is left). The answer is the last step's result."""
    steps = reduction_steps(values, ops, slips)
    written, k = [], 0
    while k < len(steps):
        step = steps[k]
        nxt = steps[k + 1] if k + 1 < len(steps) else None
        if merge and merge[k] and nxt is not None and nxt["index"] in (step["index"], step["index"] - 1):
            # The two operations span three values of the expression before step k.
            if nxt["index"] == step["index"]:  # step k's result is the left operand
                text = f"{step['a']}{step['op']}{step['b']}{nxt['op']}{nxt['b']}"
            else:  # step k's result is the right operand
                text = f"{nxt['a']}{nxt['op']}{step['a']}{step['op']}{step['b']}"
            step, k = nxt, k + 2
        else:
            text, k = f"{step['a']}{step['op']}{step['b']}", k + 1
        text += f"={step['result']}"
        if restate and restate[k - 1] and step["ops"]:
            text += ">" + expression(step["values"], step["ops"])
        written.append(text)
    answer = steps[-1]["result"] if steps else values[0]
    return ",".join(written) + f":{answer}"


@dataclass
class MultistepConfig(TaskConfig):
    split: str = "id"  # the held-out split test_examples returns: id (like training) | ood (longer problems)
    min_ops: int = 1  # fewest operations per train / in-distribution problem
    max_ops: int = 3  # most operations per train / in-distribution problem
    ood_min_ops: int = 4  # fewest operations per out-of-distribution test problem
    ood_max_ops: int = 5  # most operations per out-of-distribution test problem
    max_operand: int = 5  # operands are drawn from 0..max_operand
    operations: str = "+-*"  # the operations problems draw from (a subset of +-*)
    max_intermediate: int = 999  # problems with an intermediate value beyond +-this are drawn again
    n_test_problems: int = 256  # size of each held-out split
    teacher_step_noise: float = 0.15  # probability that the teacher gets one operation's result wrong
    teacher_merge_prob: float = 0.25  # probability that the teacher merges a step with the next (terse)
    teacher_restate_prob: float = 0.25  # probability that the teacher restates what is left after a step (verbose)


class MultistepTask(Task):
    """Integer expressions of several operations with precedence; both test splits are disjoint from training."""

    Config = MultistepConfig
    name = "multistep"

    @classmethod
    def from_config(cls, cfg: Any, context: TaskContext) -> "MultistepTask":
        cls.require_own_sft_data(context)
        keys = [f.name for f in MultistepConfig.__dataclass_fields__.values()
                if f.name not in ("_target_", "name", "n_test", "max_completion_tokens")]
        task = cls(**{k: cfg[k] for k in keys})
        task.name = cfg.name
        return task

    def __init__(self, seed: int = 0, split: str = "id", min_ops: int = 1, max_ops: int = 3, ood_min_ops: int = 4,
                 ood_max_ops: int = 5, max_operand: int = 5, operations: str = "+-*", max_intermediate: int = 999,
                 n_test_problems: int = 256, teacher_step_noise: float = 0.15, teacher_merge_prob: float = 0.25,
                 teacher_restate_prob: float = 0.25):
        if split not in SPLITS:
            raise ConfigError(f"task.split={split!r} must be one of {', '.join(SPLITS)}")
        if not 1 <= min_ops <= max_ops:
            raise ConfigError(f"task.min_ops={min_ops} and task.max_ops={max_ops} must satisfy 1 <= min_ops <= max_ops")
        if not 1 <= ood_min_ops <= ood_max_ops:
            raise ConfigError(f"task.ood_min_ops={ood_min_ops} and task.ood_max_ops={ood_max_ops} must satisfy "
                              "1 <= ood_min_ops <= ood_max_ops")
        if max_operand < 1:
            raise ConfigError(f"task.max_operand={max_operand} must be >= 1")
        if not operations or any(op not in OPERATIONS for op in operations) or len(set(operations)) != len(operations):
            raise ConfigError(f"task.operations={operations!r} must be distinct characters of {OPERATIONS!r}")
        if max_intermediate < max_operand:
            raise ConfigError(f"task.max_intermediate={max_intermediate} must be >= task.max_operand={max_operand}")
        if n_test_problems < 1:
            raise ConfigError(f"task.n_test_problems={n_test_problems} must be >= 1")
        for key, p in (("teacher_step_noise", teacher_step_noise), ("teacher_merge_prob", teacher_merge_prob),
                       ("teacher_restate_prob", teacher_restate_prob)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"task.{key}={p} must be in [0, 1]")
        self.seed, self.split = seed, split
        self.ops_range, self.ood_ops_range = (min_ops, max_ops), (ood_min_ops, ood_max_ops)
        self.max_operand, self.operations, self.max_intermediate = max_operand, operations, max_intermediate
        self.noise, self.merge_prob, self.restate_prob = teacher_step_noise, teacher_merge_prob, teacher_restate_prob
        self.n_test_problems = n_test_problems
        self._held_out: set[str] = set()
        tests = {}
        for name, ops_range in (("id", self.ops_range), ("ood", self.ood_ops_range)):
            rng = random.Random(f"multistep-test-{name}-{self._data_key()}")
            problems: list[tuple[list[int], list[str]]] = []
            for _ in range(100 * n_test_problems):  # a small space may hold fewer distinct problems
                if len(problems) == n_test_problems:
                    break
                values, ops = self._draw(rng, ops_range)
                text = expression(values, ops)
                if text not in self._held_out:
                    self._held_out.add(text)
                    problems.append((values, ops))
            tests[name] = problems
        self._test = [self._example(v, o, random.Random(f"multistep-teacher-test-{expression(v, o)}-{self._data_key()}"))
                      for v, o in tests[split]]

    def _data_key(self) -> str:
        return (f"{self.seed}-{self.ops_range}-{self.ood_ops_range}-{self.max_operand}-{self.operations}-"
                f"{self.max_intermediate}")

    def _draw(self, rng: random.Random, ops_range: tuple[int, int]) -> tuple[list[int], list[str]]:
        """A problem whose intermediate values (correct ones) stay within max_intermediate."""
        while True:
            n = rng.randint(*ops_range)
            values = [rng.randint(0, self.max_operand) for _ in range(n + 1)]
            ops = [rng.choice(self.operations) for _ in range(n)]
            if all(abs(s["result"]) <= self.max_intermediate for s in reduction_steps(values, ops)):
                return values, ops

    def _example(self, values: list[int], ops: list[str], teacher: random.Random) -> Example:
        n = len(ops)
        slips = [teacher.choice(SLIPS) if teacher.random() < self.noise else 0 for _ in range(n)]
        merge = [teacher.random() < self.merge_prob for _ in range(n)]
        restate = [teacher.random() < self.restate_prob for _ in range(n)]
        return Example(
            prompt=expression(values, ops) + "=",
            answer=str(evaluate(values, ops)),
            reference_solution=worked_solution(values, ops),
            demonstration=worked_solution(values, ops, slips, merge, restate),
            meta={"ops": n},
        )

    def train_example(self, index: int) -> Example:
        rng = random.Random(f"multistep-train-{self._data_key()}-{index}")
        while True:
            values, ops = self._draw(rng, self.ops_range)
            if expression(values, ops) not in self._held_out:
                return self._example(values, ops, rng)

    def test_examples(self) -> list[Example]:
        return list(self._test)

    def score(self, completion: str, example: Example) -> float:
        return 1.0 if final_answer(completion) == example.answer else 0.0

    def alphabet(self) -> str:
        return ALPHABET

    def cache_key(self) -> dict[str, Any]:
        # Everything that changes the demonstrations; not the split (it only picks the test split shown).
        return {"name": "multistep", "seed": self.seed, "ops": list(self.ops_range), "ood_ops": list(self.ood_ops_range),
                "max_operand": self.max_operand, "operations": self.operations, "max_intermediate": self.max_intermediate,
                "n_test_problems": self.n_test_problems, "teacher_step_noise": self.noise,
                "teacher_merge_prob": self.merge_prob, "teacher_restate_prob": self.restate_prob}
