"""MBPP+ through the project's grader, on the shared file (real sandbox, real EvalPlus inputs)."""

import gzip
import json
from pathlib import Path

import pytest

from rlreason.errors import ConfigError, DataError
from rlreason.tasks.mbppplus import MbppPlusTask, extract_code

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mbppplus" / "MbppPlus-v0.2.0.jsonl.gz"
if not DATA.is_file():
    DATA = Path("/work/shared/data/mbppplus/MbppPlus-v0.2.0.jsonl.gz")
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="the shared MBPP+ file is not here")
# A few tasks that exercise each grading rule: sets (2, 769), tuples in (2), complex inputs and atol (124),
# the bespoke oracles (581, 558), "returned something" (737), plain ones (3, 4, 786).
SUBSET = ["Mbpp/2", "Mbpp/3", "Mbpp/4", "Mbpp/124", "Mbpp/558", "Mbpp/581", "Mbpp/737", "Mbpp/769", "Mbpp/786"]
# Canonical solutions that cannot finish within the default limits (4 s a test, 20 s a task) on 2 cores.
TOO_SLOW_FOR_DEFAULT_LIMITS = {"Mbpp/255", "Mbpp/392", "Mbpp/599"}


def rows():
    return [json.loads(line) for line in gzip.open(DATA, "rt")]


def write_rows(path, selected):
    with open(path, "w") as out:
        for row in selected:
            out.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mbpp")
    data = write_rows(folder / "subset.jsonl", [r for r in rows() if r["task_id"] in SUBSET])
    task = MbppPlusTask(data_files=data, n_train=4, cache_dir=str(folder / "cache"), sandbox_workers=2)
    yield task
    task.close()


def example(task, task_id):
    return task.example(task.problems[task_id])


def fenced(code):
    return f"Here it is:\n```python\n{code}\n```\n"


def test_split_prompt_and_reference(task):
    assert len(task._train) == 4 and len(task.test_examples()) == len(SUBSET) - 4
    ex = example(task, "Mbpp/3")
    assert "identify non-prime numbers" in ex.prompt and "assert is_not_prime(2) == False" in ex.prompt
    assert "```python" in ex.prompt and "is_not_prime" in ex.prompt
    assert extract_code(ex.reference_solution).strip().startswith("import math")


def test_canonical_solutions_of_the_subset_score_1(task):
    examples = [example(task, t) for t in SUBSET]
    grades = task.grade([e.reference_solution for e in examples], examples)
    assert [g.correct for g in grades] == [True] * len(SUBSET)
    assert [g.reward for g in grades] == [1.0] * len(SUBSET)


CORRECT_REWRITES = {
    # Another element order where the task compares sets.
    "Mbpp/2": "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))",
    "Mbpp/769": "def Diff(a, b):\n    return sorted(set(b) - set(a)) + sorted(set(a) - set(b))",
    # Another algorithm.
    "Mbpp/3": "def is_not_prime(n):\n    return n == 1 or any(n % d == 0 for d in range(2, int(n ** 0.5) + 1))",
    "Mbpp/4": "def heap_queue_largest(nums, n):\n    return sorted(nums, reverse=True)[:n]",
    "Mbpp/786": "from bisect import bisect\ndef right_insertion(a, x):\n    return bisect(a, x)",
    # The bespoke oracle of Mbpp/558: digits padded with zeros.
    "Mbpp/558": "def digit_distance_nums(a, b):\n    a, b = str(a), str(b)\n    w = max(len(a), len(b))\n    return sum(abs(int(x) - int(y)) for x, y in zip(a.rjust(w, '0'), b.rjust(w, '0')))",
    # Within atol, computed another way.
    "Mbpp/124": "import math\ndef angle_complex(a, b):\n    z = a + b\n    return math.atan2(z.imag, z.real)",
    # Returned something: a bool is compared as is.
    "Mbpp/737": "def check_str(s):\n    return bool(s) and s[0] in 'aeiouAEIOU' and all(c.isalnum() or c == '_' for c in s[:1])",
}

WRONG_MUTANTS = {
    "Mbpp/2": "def similar_elements(a, b):\n    return tuple(set(a) | set(b))",
    "Mbpp/3": "def is_not_prime(n):\n    return n % 2 == 0",
    "Mbpp/4": "def heap_queue_largest(nums, n):\n    return sorted(nums)[:n]",
    "Mbpp/786": "import bisect\ndef right_insertion(a, x):\n    return bisect.bisect_left(a, x)",
    "Mbpp/124": "import cmath\ndef angle_complex(a, b):\n    return round(cmath.phase(a + b), 1)",
    "Mbpp/769": "def Diff(a, b):\n    return list(set(a) - set(b))",
    "Mbpp/737": "def check_str(s):\n    return None",
    "Mbpp/581": "def surface_Area(b, s):\n    return 2 * b * s + b",
}


def test_correct_rewrites_score_1(task):
    examples = [example(task, t) for t in CORRECT_REWRITES]
    grades = task.grade([fenced(code) for code in CORRECT_REWRITES.values()], examples)
    assert {t: g.correct for t, g in zip(CORRECT_REWRITES, grades)} == {t: True for t in CORRECT_REWRITES}


def test_mutated_solutions_score_0(task):
    examples = [example(task, t) for t in WRONG_MUTANTS]
    grades = task.grade([fenced(code) for code in WRONG_MUTANTS.values()], examples)
    assert {t: g.reward for t, g in zip(WRONG_MUTANTS, grades)} == {t: 0.0 for t in WRONG_MUTANTS}


def test_unparseable_and_hostile_completions_score_0(task):
    ex = example(task, "Mbpp/3")
    completions = [
        "no code block at all: def is_not_prime(n): return n == 1",
        fenced("def is_not_prime(n) return"),
        fenced("def other(n):\n    return True"),
        fenced("import os\ndef is_not_prime(n):\n    os._exit(0)"),
        fenced("def is_not_prime(n):\n    while True:\n        pass"),
        fenced("import sys\nprint('{\"status\": \"done\"}')\nsys.stdout.flush()\ndef is_not_prime(n):\n    return 0"),
        "```python\ndef is_not_prime(n):\n    return n == 1",  # cut off before the closing fence
    ]
    grades = task.grade(completions, [ex] * len(completions))
    assert [g.reward for g in grades] == [0.0] * len(completions)
    # The last block counts: a wrong first attempt followed by the canonical one passes.
    assert task.score(fenced("def is_not_prime(n):\n    return False") + ex.reference_solution, ex) == 1.0


def test_expected_outputs_are_cached(tmp_path):
    data = write_rows(tmp_path / "d.jsonl", [r for r in rows() if r["task_id"] in ("Mbpp/3", "Mbpp/4")])
    first = MbppPlusTask(data_files=data, n_train=1, cache_dir=str(tmp_path / "cache"), sandbox_workers=1)
    first.close()
    (cache,) = (tmp_path / "cache" / "mbppplus").glob("expected-*.json")
    content = json.loads(cache.read_text())
    assert set(content["expected"]) == {"Mbpp/3", "Mbpp/4"}
    # The second task reads the file: an edited cache entry shows up in its expected outputs.
    content["expected"]["Mbpp/3"][0] = "edited"
    cache.write_text(json.dumps(content))
    second = MbppPlusTask(data_files=data, n_train=1, cache_dir=str(tmp_path / "cache"), sandbox_workers=1)
    second.close()
    assert second.expected["Mbpp/3"][0] == "edited"


def test_base_tests_only(tmp_path):
    data = write_rows(tmp_path / "d.jsonl", [r for r in rows() if r["task_id"] in ("Mbpp/3", "Mbpp/4")])
    task = MbppPlusTask(data_files=data, n_train=1, tests="base", cache_dir=str(tmp_path), sandbox_workers=1)
    try:
        problem = task.problems["Mbpp/3"]
        assert len(task.inputs(problem)) == len(problem.base_input)
        assert task.score(task.example(problem).reference_solution, task.example(problem)) == 1.0
    finally:
        task.close()


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("entry_point"), "missing field 'entry_point'"),
    (lambda r: r.update(entry_point="not a name"), "is not a Python name"),
    (lambda r: r.update(base_input="x"), "field 'base_input' must be a list"),
    (lambda r: r.update(task_id="whatever"), "is not of the form"),
    (lambda r: r.update(atol=-1), "field 'atol'"),
])
def test_bad_rows_are_one_line(tmp_path, edit, message):
    good = [r for r in rows() if r["task_id"] in ("Mbpp/3", "Mbpp/4")]
    edit(good[1])
    data = write_rows(tmp_path / "bad.jsonl", good)
    with pytest.raises(DataError, match=message) as error:
        MbppPlusTask(data_files=data, n_train=1, cache_dir=str(tmp_path), sandbox_workers=1)
    assert "line 2" in str(error.value) and "\n" not in str(error.value)


def test_not_json_and_missing_file_and_bad_config(tmp_path):
    data = write_rows(tmp_path / "bad.jsonl", ["{not json"])
    with pytest.raises(DataError, match="line 1: not JSON"):
        MbppPlusTask(data_files=data, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="no such file"):
        MbppPlusTask(data_files=str(tmp_path / "absent.jsonl.gz"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="task.tests"):
        MbppPlusTask(data_files=str(DATA), tests="all", cache_dir=str(tmp_path))


def test_default_split_is_264_114_and_seeded(tmp_path):
    from rlreason.tasks.mbppplus import load_rows
    import random

    problems, _ = load_rows(str(DATA), "")
    ids = sorted((p.task_id for p in problems), key=lambda t: int(t.split("/")[1]))
    assert len(ids) == 378
    random.Random(0).shuffle(ids)
    assert len(ids[:264]) == 264 and len(ids[264:]) == 114


@pytest.mark.heavy
def test_all_canonical_solutions_score_1(tmp_path):
    """All 378 through the grader (about two minutes on 2 cores: one to compute the expected outputs, one to grade): every one but the few too slow for
    the default limits scores 1."""
    task = MbppPlusTask(data_files=str(DATA), cache_dir=str(tmp_path), sandbox_workers=2)
    try:
        examples = [task.example(p) for p in task.problems.values()]
        grades = task.grade([e.reference_solution for e in examples], examples)
        failing = {e.meta for e, g in zip(examples, grades) if not g.correct}
        assert len(examples) == 378
        assert failing <= TOO_SLOW_FOR_DEFAULT_LIMITS, failing - TOO_SLOW_FOR_DEFAULT_LIMITS
        assert set(task.unusable) <= TOO_SLOW_FOR_DEFAULT_LIMITS
    finally:
        task.close()
