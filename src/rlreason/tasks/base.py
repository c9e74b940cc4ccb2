"""The task interface: prompts, reference solutions and a verifier, whatever the data source.

The trainer only sees this interface. A task is deterministic given its seed: train example
``i`` is always the same, so a data position is a single integer (which makes resume exact).

A task is a part like any other: its YAML names the class by ``_target_`` (an import path), and
the class's ``Config`` dataclass lists the YAML's keys with their types, so a typo or a wrong type
fails at start-up with the field's name. A researcher's own task lives in their own module and
config directory (``--config-dir`` or ``hydra.searchpath``); nothing in this package changes.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from rlreason.errors import ConfigError


@dataclass
class TaskConfig:
    """The fields every task has; a task's own ``Config`` subclasses this and adds its fields."""

    _target_: str = MISSING  # the Task class, as an import path (package.module.ClassName)
    name: str = MISSING  # the task's name in run folders, tags and the analysis
    seed: int = 0  # seed of the task's data (problem generator, split, shuffling)
    n_test: Optional[int] = None  # evaluate on only the first n test problems (null: all)
    max_completion_tokens: int = 64  # the completion budget the task is designed for (Dr. GRPO's normaliser)


@dataclass(frozen=True)
class Example:
    """One problem.

    prompt: the text the model is given (already formatted, chat template applied if any).
    answer: the reference final answer the verifier compares against.
    reference_solution: a correct solution as a human would write it (the paper's SFT-H data).
    demonstration: a solution from an imperfect teacher, if the task has one (SFT-M data).
    meta: anything else the task's verifier needs (tests, entry point, ...); never shown to the model.
    """

    prompt: str
    answer: str
    reference_solution: str
    demonstration: str | None = None
    meta: Any = None


@dataclass(frozen=True)
class Grade:
    """What the verifier says of one completion: the reward RL trains on (any float) and whether
    it counts as correct for accuracy and pass@k (the task decides, not ``reward >= 1``)."""

    reward: float
    correct: bool


@dataclass
class TaskContext:
    """What a task may need from the run besides its own config."""

    tokenizer: Any = None  # the hub model's tokenizer (None with the embedded model)
    sft_source: str = "teacher"  # sft.source: reference | teacher | a traces file
    cache_dir: str = ".cache/rlreason"  # where a task may cache derived data (expected outputs, ...)


CONTEXT_ARGUMENTS = tuple(f.name for f in fields(TaskContext))


class Task(ABC):
    """A reasoning task with a train stream, a held-out split and a verifier."""

    # The YAML's keys and their types; a subclass with fields of its own sets its own dataclass.
    Config: ClassVar[type] = TaskConfig
    name: str

    @classmethod
    def from_config(cls, cfg: Any, context: TaskContext) -> "Task":
        """Build the task from its config (already checked against ``Config``). By default the
        config's fields and the context's entries that the constructor names are passed to it as
        keyword arguments; a task with other needs overrides this."""
        parameters = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        kwargs = {k: cfg[k] for k in cfg if k != "_target_" and (takes_any or k in parameters)}
        for key in CONTEXT_ARGUMENTS:
            if key in parameters:
                kwargs[key] = getattr(context, key)
        task = cls(**kwargs)
        if not getattr(task, "name", None):
            task.name = cfg.name
        return task

    @classmethod
    def require_own_sft_data(cls, context: TaskContext) -> None:
        """For a task that generates its own problems and teacher: SFT data must be the task's own
        (``sft.source=reference|teacher``), since a traces file cannot name its problems."""
        from rlreason.tasks import SFT_SOURCES_OF_DATA

        if context.sft_source not in SFT_SOURCES_OF_DATA:
            raise ConfigError(f"sft.source={context.sft_source!r}: task={cls.name} has its own teacher; use reference or teacher")

    @abstractmethod
    def train_example(self, index: int) -> Example:
        """Train example number ``index`` (any non-negative int; tasks wrap or reshuffle per epoch)."""

    @abstractmethod
    def test_examples(self) -> list[Example]:
        """The held-out split used for evaluation, in a fixed order."""

    @abstractmethod
    def score(self, completion: str, example: Example) -> float:
        """Reward of one completion (1.0 / 0.0 for a plain verifier; any float). Never raises."""

    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether the completion solves the problem (accuracy, pass@k). Default: reward >= 1."""
        return self.score(completion, example) >= 1.0

    def grade(self, completions: list[str], examples: list[Example]) -> list[Grade]:
        """Reward and correctness of each completion (``completions[i]`` answers ``examples[i]``).
        One call per step: a task that runs code overrides it to score the batch in parallel."""
        grades = []
        for completion, example in zip(completions, examples):
            reward = self.score(completion, example)
            grades.append(Grade(reward, self.is_correct(completion, example)))
        return grades

    def alphabet(self) -> str | None:
        """Every character of the task's prompts and completions, for the embedded model's
        character tokenizer; None: the task needs a hub model's tokenizer (model.name_or_path)."""
        return None

    def cache_key(self) -> dict[str, Any]:
        """Everything that changes the task's training data, for the embedded model's warm-start
        cache key (two tasks with the same key must give the same demonstrations)."""
        raise ConfigError(
            f"task {self.name} does not define cache_key(), so the embedded model cannot be warm-started on it; "
            "set model.name_or_path, or implement alphabet() and cache_key()"
        )

    def close(self) -> None:
        """Release what the task holds (sandbox workers, ...)."""

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
