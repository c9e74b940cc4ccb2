"""MBPP+ (EvalPlus): write a Python function; correct when it returns the canonical solution's
outputs on every test input. Graded as EvalPlus grades it, with the candidate run in the sandbox.

Grading follows EvalPlus v0.2.0 (``evalplus/eval/__init__.py``, ``_special_oracle.py``,
``data/mbpp.py``; Apache-2.0): inputs are deserialised the way ``mbpp_deserialize_inputs`` does
(JSON stores tuples, sets and complex numbers as lists and strings), expected outputs are the
canonical solution's (run once in the same sandbox and cached on disk, keyed by the data's hash),
floats compare within the task's ``atol`` (1e-6 when it is 0 and the output is floats), and the
special oracles apply: set equality for the eight tasks whose output order is free, "returned
something" for the three whose outputs are match objects, and the bespoke ones of Mbpp/164, 295,
558 and 581. ``tests=plus`` (EvalPlus's default) needs base and plus inputs to pass; ``tests=base``
only the base ones. Outputs are compared in this process from decoded values, never with the
candidate's own ``==``.

The split is the paper's size (264 train / 114 test) drawn with ``random.Random(seed)`` from the
task ids in numeric order; the authors' exact ids are not published.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlreason.errors import ConfigError, DataError, first_line
from rlreason.sandbox import Outcome, Program, decode
from rlreason.tasks.base import Example
from rlreason.tasks.sandboxed import SandboxedTask, SandboxTaskConfig, extract_code, open_sandbox  # noqa: F401 (extract_code: re-exported)

log = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = (
    "You are an expert Python programmer. Solve this task:\n{problem}\n"
    "Answer with the complete function `{entry_point}` in one ```python code block."
)
# Bumped when what the cache holds (or how it is computed) changes.
EXPECTED_CACHE_VERSION = 1
FIELDS = {"task_id": str, "prompt": str, "entry_point": str, "canonical_solution": str,
          "base_input": list, "plus_input": list}

# --- EvalPlus's special oracles (evalplus/eval/_special_oracle.py) ---
# Outputs are match objects: only whether something was returned counts (a bool compares as is).
MBPP_OUTPUT_NOT_NONE_TASKS = ["check_str", "text_match_three", "text_starta_endb"]
# The output's order is free: compared as sets.
MBPP_OUTPUT_SET_EQ_TASKS = ["similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                            "larg_nnum", "intersection_array", "find_dissimilar", "Diff"]
# The candidate's entry point for NOT_NONE tasks: calls the real one, returns a value the sandbox can send.
_NOT_NONE_WRAPPER = """

def __rlreason_not_none__(*args):
    out = globals()[{entry_point!r}](*args)
    return out if isinstance(out, bool) else out is not None
"""


def _surface_area(base_edge, height):  # Mbpp/581
    slant_height = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1, num2):  # Mbpp/558
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def _all_tuples(value):
    return tuple(_all_tuples(v) for v in value) if isinstance(value, list) else value


def deserialize_inputs(task_id: str, inputs: list) -> list:
    """EvalPlus's ``mbpp_deserialize_inputs``: the argument lists as the canonical solution expects them."""
    n = int(task_id.split("/")[-1])
    if n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
             744, 809):
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if n in (75, 413, 444, 753):
        return [[[tuple(lst) for lst in inp[0]]] + [inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [[[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if n in (259, 401, 445):
        nested = [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in nested]
    if n == 278:
        nested = [[[tuple(item) if isinstance(item, list) else item for item in inp[0]]] for inp in inputs]
        return [[tuple(lst) for lst in inp] for inp in nested]
    if n == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}] + inp[1:] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in (580, 615, 791):
        return [_all_tuples(inp) for inp in inputs]
    return inputs


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def outputs_match(entry_point: str, inputs: list, outputs: list, expected: list, atol: float) -> bool:
    """EvalPlus's per-input check (``unsafe_execute``) over decoded values; every input must pass."""
    import numpy as np

    if len(outputs) != len(expected):
        return False
    for inp, out, exp in zip(inputs, outputs, expected):
        try:
            exact_match = out == exp
            if entry_point == "are_equivalent":  # Mbpp/164: any output passes
                exact_match = True
            elif entry_point == "sum_div":  # Mbpp/295
                exact_match = exact_match or out == 0
            elif entry_point == "surface_Area":  # Mbpp/581
                exact_match = exact_match or abs(out - _surface_area(*inp)) <= atol
            elif entry_point == "digit_distance_nums":  # Mbpp/558
                exact_match = exact_match or out == _digit_distance_nums(*inp)
            elif entry_point in MBPP_OUTPUT_SET_EQ_TASKS:
                exact_match = set(out) == set(exp)
            elif entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
                exact_match = out == exp  # both already mapped by the wrapper (bool, or "is not None")
            if atol == 0 and _is_floats(exp):
                atol = 1e-6  # EvalPlus keeps this for the remaining inputs too
            if not exact_match and atol != 0:
                if type(out) is not type(exp):
                    return False
                if isinstance(exp, (list, tuple)) and len(out) != len(exp):
                    return False
                if not np.allclose(out, exp, rtol=1e-07, atol=atol):
                    return False
            elif not exact_match:
                return False
        except Exception:  # an output of the wrong shape or type (set() of an int, ...)
            return False
    return True


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    base_input: list
    plus_input: list
    atol: float


def _problem(row: Any, where: str) -> Problem:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if row.get("plus_input") == {}:  # Mbpp/793 in v0.2.0: no plus inputs, stored as {}
        row = {**row, "plus_input": []}
    for name, kind in FIELDS.items():
        if name not in row or row[name] is None:
            raise DataError(f"{where}: missing field '{name}'")
        if not isinstance(row[name], kind):
            raise DataError(f"{where}: field '{name}' must be a {kind.__name__}, got {type(row[name]).__name__}")
    if not row["entry_point"].isidentifier():
        raise DataError(f"{where}: field 'entry_point' {row['entry_point']!r} is not a Python name")
    if not re.fullmatch(r"[^/]+/\d+", row["task_id"]):
        raise DataError(f"{where}: field 'task_id' {row['task_id']!r} is not of the form Mbpp/<number>")
    atol = row.get("atol", 0) or 0
    if not isinstance(atol, (int, float)) or isinstance(atol, bool) or atol < 0:
        raise DataError(f"{where}: field 'atol' must be a number >= 0, got {atol!r}")
    try:
        base = deserialize_inputs(row["task_id"], row["base_input"])
        plus = deserialize_inputs(row["task_id"], row["plus_input"])
    except Exception as error:
        raise DataError(f"{where}: inputs do not deserialise as EvalPlus's ({first_line(error)})") from None
    if not base or any(not isinstance(args, (list, tuple)) for args in base + plus):
        raise DataError(f"{where}: 'base_input' must be a non-empty list of argument lists")
    return Problem(row["task_id"], row["prompt"], row["entry_point"], row["canonical_solution"],
                   [list(a) for a in base], [list(a) for a in plus], float(atol))


def load_rows(data_files: str | None, dataset: str) -> tuple[list[Problem], str]:
    """The problems and a hash of their source data (the expected-output cache's key)."""
    if data_files:
        path = Path(data_files)
        if not path.is_file():
            raise DataError(f"task.data_files={data_files}: no such file")
        raw = path.read_bytes()
        try:
            text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
        except (OSError, UnicodeDecodeError, EOFError) as error:
            raise DataError(f"{data_files}: not a readable (gzipped) JSONL file ({first_line(error)})") from None
        problems = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{data_files} line {number}: not JSON ({error.msg})") from None
            problems.append(_problem(row, f"{data_files} line {number}"))
        digest = hashlib.sha256(raw).hexdigest()
    else:
        try:
            import datasets

            rows = list(datasets.load_dataset(dataset, split="test"))
        except Exception as error:
            raise DataError(f"task.dataset={dataset}: cannot load it from the hub ({first_line(error)[:200]}); "
                            "set task.data_files to a local MbppPlus .jsonl.gz") from None
        problems = [_problem(row, f"{dataset} row {i}") for i, row in enumerate(rows)]
        digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    if not problems:
        raise DataError(f"{data_files or dataset}: no rows")
    ids = [p.task_id for p in problems]
    if len(set(ids)) != len(ids):
        raise DataError(f"{data_files or dataset}: task ids repeat ({sorted(i for i in ids if ids.count(i) > 1)[0]})")
    return problems, digest


@dataclass
class MbppPlusConfig(SandboxTaskConfig):
    """conf/task/mbppplus.yaml's keys (documented there); the sandbox's are SandboxTaskConfig's."""

    name: str = "mbppplus"
    max_completion_tokens: int = 512
    dataset: str = "evalplus/mbppplus"
    data_files: Optional[str] = None
    n_train: int = 264
    tests: str = "plus"
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    chat_template: bool = False


class MbppPlusTask(SandboxedTask):
    """MBPP+ with EvalPlus grading; candidates run in a ``Sandbox`` the task owns (``close()`` stops it)."""

    Config = MbppPlusConfig

    def __init__(
        self,
        name: str = "mbppplus",
        *,
        seed: int = 0,
        n_test: int | None = None,
        max_completion_tokens: int = 512,
        dataset: str = "evalplus/mbppplus",
        data_files: str | None = None,
        n_train: int = 264,
        tests: str = "plus",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        chat_template: bool = False,
        sandbox: str = "bwrap",
        sandbox_workers: int = 0,
        test_timeout_s: float = 4.0,
        completion_timeout_s: float = 20.0,
        memory_mb: int = 1024,
        tokenizer: Any = None,
        cache_dir: str = ".cache/rlreason",
    ):
        if tests not in ("base", "plus"):
            raise ConfigError(f"task.tests={tests!r}: expected base or plus")
        self._set_prompting(prompt_template, chat_template, tokenizer, n_test)
        self.name, self.seed, self.tests = name, seed, tests
        self.max_completion_tokens = max_completion_tokens
        problems, self.data_hash = load_rows(data_files, dataset)
        if not 0 <= n_train < len(problems):
            raise ConfigError(f"task.n_train={n_train}: expected 0..{len(problems) - 1} ({len(problems)} tasks)")
        by_id = {p.task_id: p for p in problems}
        order = sorted(by_id, key=lambda t: int(t.split("/")[-1]))
        random.Random(seed).shuffle(order)
        self._train = [by_id[t] for t in order[:n_train]]
        test = sorted(order[n_train:], key=lambda t: int(t.split("/")[-1]))
        self._test = [by_id[t] for t in test][:n_test]
        self.problems = by_id
        self.sandbox = open_sandbox(sandbox, sandbox_workers, test_timeout_s, completion_timeout_s, memory_mb)
        try:
            self.expected, self.unusable = self._expected_outputs(Path(cache_dir))
        except BaseException:
            self.sandbox.close()
            raise

    # --- data ---
    def inputs(self, problem: Problem) -> list[list]:
        return problem.base_input + (problem.plus_input if self.tests == "plus" else [])

    def program(self, source: str, problem: Problem) -> Program:
        if problem.entry_point in MBPP_OUTPUT_NOT_NONE_TASKS:
            source += _NOT_NONE_WRAPPER.format(entry_point=problem.entry_point)
            return Program(source, "__rlreason_not_none__", self.inputs(problem))
        return Program(source, problem.entry_point, self.inputs(problem))

    def _expected_outputs(self, cache_dir: Path) -> tuple[dict[str, list], dict[str, str]]:
        """Each task's canonical outputs on its inputs (encoded), from the cache or computed once in
        the sandbox; and the tasks whose canonical solution does not run, with the reason."""
        path = cache_dir / "mbppplus" / f"expected-v{EXPECTED_CACHE_VERSION}-{self.tests}-{self.data_hash[:16]}.json"
        if path.is_file():
            cached = json.loads(path.read_text())
            return cached["expected"], cached["unusable"]
        problems = list(self.problems.values())
        outcomes = self.sandbox.run([self.program(p.prompt + p.canonical_solution, p) for p in problems])
        expected, unusable = {}, {}
        for problem, outcome in zip(problems, outcomes):
            n = len(self.inputs(problem))
            bad = [o for o in outcome.outputs if o[0] != "ok"]
            if outcome.status != "ok" or len(outcome.outputs) != n or bad:
                unusable[problem.task_id] = f"canonical solution: {outcome.status}, {bad[:1] or outcome.outputs[-1:]}"
                log.warning("mbppplus %s: %s; it scores 0", problem.task_id, unusable[problem.task_id])
            else:
                expected[problem.task_id] = [value for _, value in outcome.outputs]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"expected": expected, "unusable": unusable}))
        tmp.replace(path)
        return expected, unusable

    def example(self, problem: Problem) -> Example:
        return Example(
            prompt=self.prompt(problem),
            answer=problem.entry_point,
            reference_solution=f"```python\n{problem.canonical_solution.strip()}\n```",
            meta=problem.task_id,
        )

    def train_example(self, index: int) -> Example:
        """Example ``index`` of an endless stream: each epoch is the train split reshuffled with seed+epoch."""
        if not self._train:
            raise ConfigError(f"task {self.name} has no train split (task.n_train=0); it can only be evaluated")
        if index < 0:
            raise ValueError(f"train example index must be >= 0, got {index}")
        epoch, position = divmod(index, len(self._train))
        order = list(range(len(self._train)))
        random.Random(self.seed * 1000003 + epoch).shuffle(order)
        return self.example(self._train[order[position]])

    def test_examples(self) -> list[Example]:
        return [self.example(p) for p in self._test]

    # --- grading ---
    def gradable(self, problem: Problem) -> bool:
        return problem.task_id in self.expected  # a task whose canonical solution does not run scores 0

    def passes(self, outcome: Outcome, problem: Problem) -> bool:
        """Whether a candidate's outcome matches the canonical outputs (in this process, decoded)."""
        expected = self.expected[problem.task_id]
        if outcome.status != "ok" or len(outcome.outputs) != len(expected):
            return False
        if any(kind != "ok" for kind, _ in outcome.outputs):
            return False
        try:
            outputs = outcome.values()
        except (ValueError, TypeError, KeyError):  # a forged line that is not an encoded value
            return False
        return outputs_match(problem.entry_point, self.inputs(problem), outputs,
                             [decode(v) for v in expected], problem.atol)

    def cache_key(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "data": self.data_hash[:16]}
