"""A researcher's own parts, outside the package: a loss aggregation, an advantage estimator and a task.

tests/test_plugins.py puts this folder on PYTHONPATH and names the parts by import path
(``algorithm.loss_agg=my_parts.SqrtLengthNorm``, ``algorithm.advantage=my_parts.sign_advantage``,
``_target_: my_parts.ReverseTask`` in a task YAML of its own config directory); nothing in
``rlreason`` is edited for them.

Each part appends what it computed to the JSON-lines file named by ``$MY_PARTS_LOG`` (when set),
so the test can check that the run's logged metrics are the ones these parts produce.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from rlreason.errors import ConfigError
from rlreason.loss_agg import LossAggregation, SeqMeanTokenMean, UpdateShape
from rlreason.tasks.base import Example, Grade, Task, TaskConfig


def record(part: str, **data: Any) -> None:
    """One JSON line of evidence in ``$MY_PARTS_LOG`` (nothing when it is not set)."""
    path = os.environ.get("MY_PARTS_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"part": part, **data}) + "\n")


# ---------------------------------------------------------------- loss aggregation
class SqrtLengthNorm(LossAggregation):
    """Each sequence's token sum over the square root of its length, summed over rows, over (rows
    sampled x the square root of the completion budget): a token's weight falls with its sequence's
    length as 1/sqrt(L), between the per-sequence mean's 1/L and the token sum's constant."""

    def numerator(self, per_token: torch.Tensor, mask: torch.Tensor, shape: UpdateShape) -> torch.Tensor:
        value = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0).sqrt()).sum()
        denominator = self.denominator(shape)
        default = SeqMeanTokenMean()  # what the default would have given
        record("loss", rows=int(per_token.shape[0]), loss=float(value.detach()) / denominator,
               default_loss=float(default.numerator(per_token, mask, shape).detach()) / default.denominator(shape))
        return value

    def denominator(self, shape: UpdateShape) -> float:
        return shape.rows * shape.max_completion_tokens**0.5


# ---------------------------------------------------------------- advantage estimator
def sign_advantage(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """+1 above the group mean, -1 below, 0 within ``eps`` of it: the direction of GRPO's advantage
    without its scale, so a float reward's magnitude does not matter."""
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    advantages = torch.where(centered.abs() <= eps, torch.zeros_like(centered), centered.sign()).reshape(-1)
    record("advantage", group_size=group_size, rewards=rewards.tolist(), advantages=advantages.tolist())
    return advantages


# ---------------------------------------------------------------- task
@dataclass
class ReverseConfig(TaskConfig):
    letters: str = "abcd"  # the letters the strings are made of (the model's alphabet, with '>')
    length: int = 3  # letters per string
    n_test_problems: int = 32  # size of the held-out split (disjoint from training strings)
    teacher_noise: float = 0.3  # probability that the teacher writes a wrong letter at each position


class ReverseTask(Task):
    """Write a string backwards: prompt ``abc>``, answer ``cba``. The reward is one point per letter in
    its place (0 to ``length``, a float), so a half-right answer earns reward >= 1; only the exact
    reversal is correct (``is_correct``)."""

    Config = ReverseConfig
    name = "reverse"

    def __init__(self, letters: str = "abcd", length: int = 3, seed: int = 0, n_test_problems: int = 32,
                 teacher_noise: float = 0.3):
        if len(set(letters)) < 2 or ">" in letters:
            raise ConfigError(f"task.letters={letters!r} needs at least 2 distinct letters and no '>'")
        if length < 1:
            raise ConfigError(f"task.length={length} must be >= 1")
        self.letters, self.length, self.seed, self.noise = "".join(sorted(set(letters))), length, seed, teacher_noise
        rng = random.Random(f"reverse-test-{seed}")
        words = len(self.letters) ** length
        test: list[str] = []
        while len(test) < min(n_test_problems, words // 2):
            word = self._word(rng)
            if word not in test:
                test.append(word)
        self._test_words = set(test)
        self._test = [self._example(w, random.Random(f"teacher-test-{seed}-{w}"), "test") for w in test]

    def _word(self, rng: random.Random) -> str:
        return "".join(rng.choice(self.letters) for _ in range(self.length))

    def _example(self, word: str, rng: random.Random, split: str) -> Example:
        answer = word[::-1]
        noisy = "".join(rng.choice(self.letters) if rng.random() < self.noise else ch for ch in answer)
        return Example(prompt=f"{word}>", answer=answer, reference_solution=answer, demonstration=noisy, meta=split)

    def train_example(self, index: int) -> Example:
        rng = random.Random(f"reverse-train-{self.seed}-{index}")
        while True:
            word = self._word(rng)
            if word not in self._test_words:
                return self._example(word, rng, "train")

    def test_examples(self) -> list[Example]:
        return list(self._test)

    def score(self, completion: str, example: Example) -> float:
        return float(sum(a == b for a, b in zip(completion.strip(), example.answer)))

    def is_correct(self, completion: str, example: Example) -> bool:
        return completion.strip() == example.answer

    def grade(self, completions: list[str], examples: list[Example]) -> list[Grade]:
        grades = super().grade(completions, examples)
        record("task", split=sorted({e.meta for e in examples}), rewards=[g.reward for g in grades],
               correct=[g.correct for g in grades])
        return grades

    def alphabet(self) -> str:
        return self.letters + ">"

    def cache_key(self) -> dict[str, Any]:
        return {"name": "reverse", "letters": self.letters, "length": self.length, "seed": self.seed,
                "teacher_noise": self.noise}


class NotATask:
    """A class that is no Task, for the start-up check."""
