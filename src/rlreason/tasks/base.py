"""The task interface: prompts, reference solutions and a verifier, whatever the data source.

The trainer only sees this interface. A task is deterministic given its seed: train example
``i`` is always the same, so a data position is a single integer (which makes resume exact).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from rlreason.errors import ConfigError


@dataclass(frozen=True)
class Example:
    """One problem.

    prompt: the text the model is given (already formatted, chat template applied if any).
    answer: the reference final answer the verifier compares against.
    reference_solution: a correct solution as a human would write it (the paper's SFT-H data).
    demonstration: a solution from an imperfect teacher, if the task has one (SFT-M data).
    """

    prompt: str
    answer: str
    reference_solution: str
    demonstration: str | None = None


class Task(ABC):
    """A reasoning task with a train stream, a held-out split and a 1/0 verifier."""

    name: str

    @abstractmethod
    def train_example(self, index: int) -> Example:
        """Train example number ``index`` (any non-negative int; tasks wrap or reshuffle per epoch)."""

    @abstractmethod
    def test_examples(self) -> list[Example]:
        """The held-out split used for evaluation, in a fixed order."""

    @abstractmethod
    def score(self, completion: str, example: Example) -> float:
        """Reward of one completion: 1.0 if its final answer is correct, else 0.0. Never raises."""

    def train_batch(self, start: int, n: int) -> list[Example]:
        """``n`` consecutive train examples from data position ``start``."""
        return [self.train_example(start + i) for i in range(n)]

    def sft_target(self, example: Example, source: str) -> str:
        """The completion SFT trains on: the reference solution, or (``teacher`` or a traces file)
        the demonstration."""
        if source == "reference":
            return example.reference_solution
        if example.demonstration is None:
            raise ConfigError(
                f"sft.source={source}: task {self.name} has no demonstration for {example.prompt[:40]!r}; "
                "use sft.source=reference or a JSONL of traces (fields problem, completion)"
            )
        return example.demonstration
