"""What every task whose reward runs model-written code shares: the sandbox fields of its config,
the sandbox they open, and the extraction of a completion's code (docs/sandbox.md)."""

from __future__ import annotations

import re
import string
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from rlreason.errors import ConfigError, first_line
from rlreason.sandbox import MODES, Outcome, Program, Sandbox, SandboxConfig
from rlreason.tasks.base import Example, Grade, Task, TaskConfig

_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class SandboxTaskConfig(TaskConfig):
    """The keys of a code task's YAML that say how its candidates run (a code task's ``Config``
    subclasses this; the defaults are MBPP+'s, and a task with other needs re-declares one)."""

    sandbox: str = "bwrap"  # bwrap (bubblewrap: read-only fs, private /tmp, no network) | process (limits only)
    sandbox_workers: int = 0  # parallel warm sandbox workers; 0: one per CPU core (results do not depend on it)
    test_timeout_s: float = 4.0  # wall-clock limit for one call of the entry point, seconds
    completion_timeout_s: float = 20.0  # wall-clock and CPU-time limit for one completion (all its calls), seconds
    memory_mb: int = 1024  # address-space limit of one completion's process, MiB


def open_sandbox(sandbox: str, sandbox_workers: int, test_timeout_s: float, completion_timeout_s: float,
                 memory_mb: int) -> Sandbox:
    """The sandbox a code task's ``SandboxTaskConfig`` fields describe (started now, so a missing
    bubblewrap is one line at start-up, not mid-run); the CPU-time limit is the completion's."""
    if sandbox not in MODES:
        raise ConfigError(f"task.sandbox={sandbox!r} must be one of {', '.join(MODES)}")
    return Sandbox(SandboxConfig(mode=sandbox, workers=sandbox_workers, test_timeout_s=test_timeout_s,
                                 completion_timeout_s=completion_timeout_s, cpu_s=completion_timeout_s,
                                 memory_mb=memory_mb))


def extract_code(completion: str) -> str | None:
    """The last fenced python block of a completion (None when it has none)."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else None


class SandboxedTask(Task):
    """A benchmark of functions to write, graded in the task's own sandbox (``self.sandbox``, opened
    with ``open_sandbox``): ``problems`` maps a task id (an Example's ``meta``) to a problem with
    ``prompt`` and ``entry_point``; a subclass says how a completion's code runs (``program``) and
    when its outcome passes (``passes``). ``close()`` stops the sandbox's workers."""

    sandbox: Sandbox
    problems: dict[str, Any]
    prompt_template: str
    chat_template: bool
    tokenizer: Any

    def _set_prompting(self, prompt_template: str, chat_template: bool, tokenizer: Any, n_test: int | None) -> None:
        """Check and keep the prompt settings (one line for a bad one)."""
        if chat_template and tokenizer is None:
            raise ConfigError("task.chat_template=true needs a tokenizer (a hub model's)")
        if n_test is not None and n_test < 1:
            raise ConfigError(f"task.n_test={n_test} must be >= 1 (or null for the whole test split)")
        try:
            prompt_template.format(problem="", entry_point="")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(f"task.prompt_template: fields are {{problem}} and {{entry_point}} ({first_line(error)})") from None
        self.prompt_template, self.chat_template, self.tokenizer = prompt_template, chat_template, tokenizer

    def prompt(self, problem: Any) -> str:
        text = self.prompt_template.format(problem=problem.prompt.strip(), entry_point=problem.entry_point)
        if not self.chat_template:
            return text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

    @abstractmethod
    def program(self, code: str, problem: Any) -> Program:
        """The program the sandbox runs for a completion's code."""

    @abstractmethod
    def passes(self, outcome: Outcome, problem: Any) -> bool:
        """Whether the program's outcome is a correct solution (decided in this process)."""

    def gradable(self, problem: Any) -> bool:
        """Whether a completion for ``problem`` can pass at all (False: it scores 0 unrun)."""
        return True

    def grade(self, completions: list[str], examples: list[Example]) -> list[Grade]:
        """All completions in one sandbox run; a completion without a code block scores 0 unrun."""
        jobs, slots = [], []
        for i, (completion, example) in enumerate(zip(completions, examples)):
            problem = self.problems.get(example.meta)
            code = extract_code(completion) if isinstance(completion, str) else None
            if problem is not None and code is not None and self.gradable(problem):
                jobs.append(self.program(code, problem))
                slots.append(i)
        grades = [Grade(0.0, False)] * len(completions)
        for i, outcome in zip(slots, self.sandbox.run(jobs) if jobs else []):
            ok = self.passes(outcome, self.problems[examples[i].meta])
            grades[i] = Grade(float(ok), ok)
        return grades

    def score(self, completion: str, example: Example) -> float:
        return self.grade([completion], [example])[0].reward

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.grade([completion], [example])[0].correct

    def alphabet(self) -> str:
        """Printable ASCII: the embedded model's character tokenizer can read these prompts (it scores
        0 here; real runs use a hub model's tokenizer)."""
        return string.printable

    def close(self) -> None:
        self.sandbox.close()
