"""Real math benchmarks (MATH-500, MATH, GSM8K) behind the Task interface.

Data comes from the Hugging Face hub by name or from local JSONL files (``task.data_files``).
Local files are checked line by line before ``datasets`` sees them, so a bad row is reported as
``file line N: problem`` instead of an Arrow traceback. Two column layouts exist:

* MATH-like (MATH-500, MATH): ``problem``, ``solution`` and optionally ``answer``; without an
  ``answer`` column the answer is the last ``\\boxed{}`` of the solution;
* GSM8K (task names starting with ``gsm8k``): ``question`` and ``answer``, whose text ends in
  ``#### n``; the reference solution drops the ``<<...>>`` calculator notes and boxes ``n``.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rlreason.errors import ConfigError, DataError, first_line
from rlreason.tasks.base import Example, Task, TaskConfig, TaskContext
from rlreason.verify import gsm8k_answer, last_boxed, math_reward

DEFAULT_PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

_CALCULATOR_NOTE = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class Record:
    """One row, mapped to the columns every benchmark shares."""

    problem: str
    answer: str
    solution: str


_RowMapper = Callable[[Mapping[str, Any]], Record | str]


def _math_record(row: Mapping[str, Any]) -> Record | str:
    """A MATH-layout row as a Record, or the reason it cannot be one."""
    for column in ("problem", "solution"):
        if column not in row:
            return f"missing field '{column}'"
        if not isinstance(row[column], str):
            return f"field '{column}' must be a string, got {type(row[column]).__name__}"
    answer = row.get("answer")
    if answer is None:
        answer = last_boxed(row["solution"])
        if not answer:
            return "no 'answer' field and no \\boxed{} answer in 'solution'"
    elif not isinstance(answer, str):
        return f"field 'answer' must be a string, got {type(answer).__name__}"
    elif not answer.strip():
        return "field 'answer' is empty"
    return Record(problem=row["problem"], answer=answer, solution=row["solution"])


def _gsm8k_record(row: Mapping[str, Any]) -> Record | str:
    """A GSM8K-layout row as a Record, or the reason it cannot be one."""
    for column in ("question", "answer"):
        if column not in row:
            return f"missing field '{column}'"
        if not isinstance(row[column], str):
            return f"field '{column}' must be a string, got {type(row[column]).__name__}"
    answer = gsm8k_answer(row["answer"])
    if answer is None:
        return "field 'answer' has no final '#### <number>'"
    worked = _CALCULATOR_NOTE.sub("", row["answer"]).rpartition("####")[0]
    solution = f"{worked}\\boxed{{{answer}}}"
    return Record(problem=row["question"], answer=answer, solution=solution)


def _jsonl_rows(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; DataError for a missing/empty file or bad JSON."""
    if not path.is_file():
        raise DataError(f"{label}: no such file")
    seen_any = False
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{label} line {number}: invalid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{label} line {number}: expected a JSON object, got {type(row).__name__}")
            seen_any = True
            yield number, row
    if not seen_any:
        raise DataError(f"{label}: empty file (expected one JSON object per line)")


def _check_jsonl(path: Path, label: str, to_record: _RowMapper) -> None:
    for number, row in _jsonl_rows(path, label):
        record = to_record(row)
        if isinstance(record, str):
            raise DataError(f"{label} line {number}: {record}")


def load_sft_traces(path: str | Path) -> dict[str, str]:
    """Teacher completions for SFT from a JSONL file with ``problem`` and ``completion`` per line.

    Keyed by the raw problem text (not the formatted prompt), so the traces survive a change of
    prompt template; pass the result to ``BenchmarkTask(demonstrations=...)``.
    """
    traces: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    for number, row in _jsonl_rows(Path(path), str(path)):
        for column in ("problem", "completion"):
            if column not in row:
                raise DataError(f"{path} line {number}: missing field '{column}'")
            if not isinstance(row[column], str):
                kind = type(row[column]).__name__
                raise DataError(f"{path} line {number}: field '{column}' must be a string, got {kind}")
        if row["problem"] in seen_at:
            raise DataError(f"{path} line {number}: duplicate problem (first at line {seen_at[row['problem']]})")
        seen_at[row["problem"]] = number
        traces[row["problem"]] = row["completion"]
    return traces


def _check_prompt_template(template: str) -> None:
    """A template must format with ``problem`` alone, else every prompt would fail (or be identical)."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as error:
        fields = {f"invalid: {error}"}
    if fields != {"problem"}:
        raise ConfigError(
            f"task.prompt_template must use exactly one field, {{problem}} (found {sorted(fields)}); "
            "write literal braces as {{ and }}"
        )


@dataclass
class BenchmarkConfig(TaskConfig):
    dataset: Optional[str] = None  # hub id
    dataset_config: Optional[str] = None  # hub config(s), comma-separated
    train_split: Optional[str] = "train"  # null: evaluation only
    test_split: str = "test"
    data_files: dict[str, str] = field(default_factory=dict)  # split -> local JSONL file
    prompt_template: str = "{problem}"
    chat_template: bool = False
    verify_timeout_s: float = 5.0


class BenchmarkTask(Task):
    """A math benchmark: prompts from a template, 1/0 reward from the final answer (math-verify)."""

    Config = BenchmarkConfig

    @classmethod
    def from_config(cls, cfg: Any, context: TaskContext) -> "BenchmarkTask":
        from rlreason.tasks import SFT_SOURCES_OF_DATA

        demonstrations = None if context.sft_source in SFT_SOURCES_OF_DATA else load_sft_traces(context.sft_source)
        return build_benchmark_task(cfg, tokenizer=context.tokenizer, demonstrations=demonstrations)

    def __init__(
        self,
        name: str,
        *,
        dataset: str | None = None,
        dataset_config: str | None = None,
        train_split: str | None = "train",
        test_split: str = "test",
        data_files: Mapping[str, str] | None = None,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        chat_template: bool = False,
        tokenizer: Any = None,
        seed: int = 0,
        n_test: int | None = None,
        verify_timeout_s: float = 5.0,
        demonstrations: Mapping[str, str] | None = None,
    ):
        if dataset is None and not data_files:
            raise ConfigError(f"task {name}: set task.dataset (a hub id) or task.data_files (local JSONL files)")
        _check_prompt_template(prompt_template)
        if chat_template and tokenizer is None:
            raise ConfigError("task.chat_template=true needs a tokenizer (pass the model's tokenizer to the task)")
        if n_test is not None and n_test < 1:
            raise ConfigError(f"task.n_test={n_test} must be >= 1 (or null for the whole test split)")
        if verify_timeout_s <= 0:
            raise ConfigError(f"task.verify_timeout_s={verify_timeout_s} must be > 0")
        self.name = name
        self.prompt_template, self.chat_template, self.tokenizer = prompt_template, chat_template, tokenizer
        self.seed, self.verify_timeout_s = seed, verify_timeout_s
        self.demonstrations = dict(demonstrations or {})
        to_record = _gsm8k_record if name.startswith("gsm8k") else _math_record
        source = _LocalFiles(data_files, to_record) if data_files else _Hub(dataset, dataset_config, to_record)
        self._train = source.load(train_split) if train_split is not None and source.has(train_split) else None
        self._no_train_reason = (
            "task.train_split is null" if train_split is None else f"task.data_files has no '{train_split}' entry"
        )
        if self._train is not None and self.demonstrations:
            # SFT on a stronger model's traces (SFT-M) trains on the problems those traces solve.
            self._train = [record for record in self._train if record.problem in self.demonstrations]
            if not self._train:
                raise DataError(f"task {name}: no train problem has a trace in the SFT traces file")
        test = source.load(test_split)
        if not test:
            raise DataError(f"task {name}: the test split '{test_split}' has no rows")
        self._test = test[:n_test] if n_test is not None else test
        self._order_epoch = -1  # the epoch whose shuffled order self._order holds
        self._order: list[int] = []
        self._test_examples: list[Example] | None = None
        self.prompt(self._test[0].problem)  # a tokenizer without a chat template fails here, not mid-run

    def prompt(self, problem: str) -> str:
        """The model's input for one problem: the template, then the chat template if enabled."""
        text = self.prompt_template.format(problem=problem)
        if not self.chat_template:
            return text
        try:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        except Exception as error:
            reason = first_line(error)[:200]
            raise ConfigError(f"task.chat_template=true but the tokenizer cannot apply one: {reason}") from None

    def _example(self, record: Record) -> Example:
        return Example(
            prompt=self.prompt(record.problem),
            answer=record.answer,
            reference_solution=record.solution,
            demonstration=self.demonstrations.get(record.problem),
        )

    def train_example(self, index: int) -> Example:
        """Example ``index`` of an endless stream: each epoch is the train split reshuffled with seed+epoch."""
        if self._train is None:
            raise ConfigError(
                f"task {self.name} has no train split ({self._no_train_reason}); it can only be evaluated"
            )
        if index < 0:
            raise ValueError(f"train example index must be >= 0, got {index}")
        epoch, position = divmod(index, len(self._train))
        if epoch != self._order_epoch:
            self._order = list(range(len(self._train)))
            random.Random(self.seed + epoch).shuffle(self._order)
            self._order_epoch = epoch
        return self._example(self._train[self._order[position]])

    def test_examples(self) -> list[Example]:
        if self._test_examples is None:
            self._test_examples = [self._example(record) for record in self._test]
        return list(self._test_examples)

    def score(self, completion: str, example: Example) -> float:
        return math_reward(completion, example.answer, self.verify_timeout_s)


class _LocalFiles:
    """Splits from local JSONL files, validated line by line before ``datasets`` parses them."""

    def __init__(self, data_files: Mapping[str, str], to_record: _RowMapper):
        self.data_files, self.to_record = dict(data_files), to_record

    def has(self, split: str) -> bool:
        return split in self.data_files

    def load(self, split: str) -> list[Record]:
        if split not in self.data_files:
            raise ConfigError(f"task.data_files has no '{split}' entry (it has: {', '.join(self.data_files)})")
        label = self.data_files[split]
        path = Path(label).expanduser()
        _check_jsonl(path, label, self.to_record)
        import datasets  # deferred: importing datasets costs about a second

        try:
            rows = datasets.load_dataset("json", data_files={split: str(path)}, split=split)
        except Exception as error:
            raise DataError(f"{label}: datasets could not read it ({first_line(error)[:200]})") from None
        return [self.to_record(row) for row in rows]


class _Hub:
    """Splits from the Hugging Face hub; a comma-separated config list is loaded and concatenated."""

    def __init__(self, dataset: str, dataset_config: str | None, to_record: _RowMapper):
        self.dataset, self.to_record = dataset, to_record
        self.configs: list[str | None] = [c.strip() for c in dataset_config.split(",")] if dataset_config else [None]

    def has(self, split: str) -> bool:
        return True

    def load(self, split: str) -> list[Record]:
        import datasets  # deferred: importing datasets costs about a second

        records: list[Record] = []
        for config in self.configs:
            where = f"{self.dataset}" + (f" (config {config})" if config else "") + f" split {split}"
            try:
                rows = datasets.load_dataset(self.dataset, config, split=split)
            except Exception as error:
                raise DataError(
                    f"could not load dataset {where} from the hub ({first_line(error)[:200]}); "
                    "offline, set task.data_files to local JSONL files, e.g. '++task.data_files={test: test.jsonl}'"
                ) from None
            for index, row in enumerate(rows):
                record = self.to_record(row)
                if isinstance(record, str):
                    raise DataError(f"dataset {where} row {index}: {record}")
                records.append(record)
        return records


def build_benchmark_task(cfg_task: Any, tokenizer: Any = None, demonstrations: Mapping[str, str] | None = None) -> BenchmarkTask:
    """The BenchmarkTask a ``task=`` config describes (a DictConfig or any object with TaskConfig's fields)."""
    data_files = cfg_task.data_files
    return BenchmarkTask(
        cfg_task.name,
        dataset=cfg_task.dataset,
        dataset_config=cfg_task.dataset_config,
        train_split=cfg_task.train_split,
        test_split=cfg_task.test_split,
        data_files={str(split): str(path) for split, path in data_files.items()} if data_files else None,
        prompt_template=cfg_task.prompt_template,
        chat_template=cfg_task.chat_template,
        tokenizer=tokenizer,
        seed=cfg_task.seed,
        n_test=cfg_task.n_test,
        verify_timeout_s=cfg_task.verify_timeout_s,
        demonstrations=demonstrations,
    )
