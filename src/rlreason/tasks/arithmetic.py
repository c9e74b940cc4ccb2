"""The embedded task: multi-digit addition with a worked, digit-by-digit solution.

Prompt ``0736+2859=``; the worked format the model learns writes one step per digit, least
significant first, as ``a+b+carry=sum``, then the answer after ``:``:
``6+9+0=15,3+5+1=9,7+8+0=15,0+2+1=3:3595``. The reward is 1 when the text after the last
``:`` is exactly the sum.

Two kinds of SFT data mirror the paper's baselines:
- reference solutions, terse like MATH's human solutions: correct, but the intermediate steps
  the model's own format writes out are skipped (``:3595``);
- teacher demonstrations: worked solutions from an imperfect teacher that forgets each carry
  with probability ``teacher_carry_noise`` (the steps stay self-consistent, the answer is wrong).
The warm start pretrains on teacher demonstrations, so the base model has partial skill.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlreason.errors import ConfigError
from rlreason.tasks.base import Example, Task, TaskConfig, TaskContext

# Every character the task's texts use; the embedded tokenizer is built from this alphabet.
ALPHABET = "0123456789+=,:"


def worked_solution(a: int, b: int, digits: int, forget_carry: list[bool] | None = None) -> str:
    """Digit-by-digit solution of a+b; ``forget_carry[i]`` drops the carry into digit i."""
    steps, carry, answer_digits = [], 0, []
    for i in range(digits):
        da, db = (a // 10**i) % 10, (b // 10**i) % 10
        if forget_carry is not None and forget_carry[i]:
            carry = 0
        total = da + db + carry
        steps.append(f"{da}+{db}+{carry}={total}")
        answer_digits.append(total % 10)
        carry = total // 10
    value = carry * 10**digits + sum(d * 10**i for i, d in enumerate(answer_digits))
    return ",".join(steps) + f":{value}"


def final_answer(completion: str) -> str | None:
    """The text after the last ``:``, or None if the completion never states an answer."""
    if ":" not in completion:
        return None
    return completion.rsplit(":", 1)[1].strip()


@dataclass
class ArithmeticConfig(TaskConfig):
    digits: int = 4  # digits per operand
    n_test_problems: int = 256  # size of the held-out split
    teacher_carry_noise: float = 0.6  # probability that the teacher forgets a carry


class ArithmeticTask(Task):
    """Addition of two ``digits``-digit numbers; the test split is disjoint from training."""

    Config = ArithmeticConfig
    name = "arithmetic"

    @classmethod
    def from_config(cls, cfg: Any, context: TaskContext) -> "ArithmeticTask":
        cls.require_own_sft_data(context)
        return cls(digits=cfg.digits, seed=cfg.seed, n_test_problems=cfg.n_test_problems,
                   teacher_carry_noise=cfg.teacher_carry_noise)

    def __init__(self, digits: int = 4, seed: int = 0, n_test_problems: int = 256, teacher_carry_noise: float = 0.6):
        if digits < 1:
            raise ConfigError(f"task.digits={digits} must be >= 1")
        if not 0.0 <= teacher_carry_noise <= 1.0:
            raise ConfigError(f"task.teacher_carry_noise={teacher_carry_noise} must be in [0, 1]")
        self.digits, self.seed, self.noise = digits, seed, teacher_carry_noise
        rng = random.Random(f"arithmetic-test-{seed}-{digits}")
        pairs: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        while len(pairs) < min(n_test_problems, 10 ** (2 * digits) // 2):
            pair = (rng.randrange(10**digits), rng.randrange(10**digits))
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
        self._test_pairs, self._test_set = pairs, seen
        self._test = [self._example(a, b, random.Random(f"teacher-test-{seed}-{a}-{b}")) for a, b in pairs]

    def _example(self, a: int, b: int, teacher_rng: random.Random) -> Example:
        forget = [teacher_rng.random() < self.noise for _ in range(self.digits)]
        return Example(
            prompt=f"{a:0{self.digits}d}+{b:0{self.digits}d}=",
            answer=str(a + b),
            reference_solution=f":{a + b}",
            demonstration=worked_solution(a, b, self.digits, forget),
        )

    def train_example(self, index: int) -> Example:
        rng = random.Random(f"arithmetic-train-{self.seed}-{self.digits}-{index}")
        while True:
            pair = (rng.randrange(10**self.digits), rng.randrange(10**self.digits))
            if pair not in self._test_set:
                return self._example(*pair, rng)

    def test_examples(self) -> list[Example]:
        return list(self._test)

    def score(self, completion: str, example: Example) -> float:
        return 1.0 if final_answer(completion) == example.answer else 0.0

    def alphabet(self) -> str:
        return ALPHABET

    def cache_key(self) -> dict[str, Any]:
        # The key cached base models were built under before tasks were parts: the same digest.
        return {"name": "arithmetic", "digits": self.digits, "seed": self.seed, "teacher_carry_noise": self.noise}
