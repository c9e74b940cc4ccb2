"""The multistep task: hand-checked reductions, the verifier, free length, determinism, the OOD split."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import ROOT, compose
from rlreason.errors import ConfigError
from rlreason.tasks import build_task
from rlreason.tasks.arithmetic import final_answer
from rlreason.tasks.multistep import ALPHABET, MultistepTask, evaluate, worked_solution

SMALL = dict(n_test_problems=64)
TASK = MultistepTask(**SMALL)
OOD = MultistepTask(split="ood", **SMALL)


def parse(problem: str) -> tuple[list[int], list[str]]:
    tokens = re.findall(r"\d+|[-+*]", problem.rstrip("="))
    return [int(t) for t in tokens[::2]], tokens[1::2]


# ---------------------------------------------------------------- the reduction, by hand
@pytest.mark.parametrize(
    "problem, solution",
    [
        ("3+4*2-5", "4*2=8,3+8=11,11-5=6:6"),  # * first
        ("8-2-3", "8-2=6,6-3=3:3"),  # left to right, not 8-(2-3)
        ("2*3+4*5", "2*3=6,4*5=20,6+20=26:26"),  # every * before any +
        ("2-6*3", "6*3=18,2-18=-16:-16"),  # a negative answer
        ("1-9+4*0", "4*0=0,1-9=-8,-8+0=-8:-8"),  # a negative intermediate as the left operand
        ("7", ":7"),  # nothing to reduce
    ],
)
def test_canonical_reduction_by_hand(problem, solution):
    assert worked_solution(*parse(problem)) == solution


def test_terse_and_verbose_forms_by_hand():
    values, ops = parse("3+4*2-5")
    assert worked_solution(values, ops, merge=[True, False, False]) == "3+4*2=11,11-5=6:6"  # result as right operand
    assert worked_solution(values, ops, merge=[False, True, False]) == "4*2=8,3+8-5=6:6"  # result as left operand
    assert worked_solution(values, ops, restate=[True, True, True]) == "4*2=8>3+8-5,3+8=11>11-5,11-5=6:6"
    assert worked_solution(values, ops, slips=[0, 1, 0]) == "4*2=8,3+8=12,12-5=7:7"  # a slip is carried on
    # Two multiplications that do not use each other's result are never merged.
    assert worked_solution(*parse("2*3+4*5"), merge=[True, False, False]) == "2*3=6,4*5=20,6+20=26:26"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.data())
def test_evaluate_agrees_with_python_precedence(values, data):
    ops = data.draw(st.lists(st.sampled_from("+-*"), min_size=len(values) - 1, max_size=len(values) - 1))
    text = str(values[0]) + "".join(f"{o}{v}" for o, v in zip(ops, values[1:]))
    assert evaluate(values, ops) == eval(text)  # noqa: S307 (digits and +-* only)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=2, max_size=7), st.data())
def test_every_written_form_is_arithmetically_true_without_slips(values, data):
    """Whatever is merged or restated, each step's left side equals its result, each restatement
    has the problem's value, and the answer is the value."""
    n = len(values) - 1
    ops = data.draw(st.lists(st.sampled_from("+-*"), min_size=n, max_size=n))
    merge = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    restate = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    text = worked_solution(values, ops, merge=merge, restate=restate)
    steps, answer = text.rsplit(":", 1)
    value = evaluate(values, ops)
    assert answer == str(value)
    for step in steps.split(","):
        lhs, rest = step.split("=", 1)
        result, _, left = rest.partition(">")
        assert eval(lhs) == int(result)  # noqa: S307
        if left:
            assert eval(left) == value  # noqa: S307
    assert (n + 1) // 2 <= len(steps.split(",")) <= n  # a merge writes two operations as one step


# ---------------------------------------------------------------- the verifier
def test_verifier_on_correct_incorrect_and_garbage():
    example = next(e for e in TASK.test_examples() if len(parse(e.prompt)[1]) == 3)
    value = example.answer
    assert TASK.score(example.reference_solution, example) == 1.0
    assert TASK.score(f":{value}", example) == 1.0
    assert TASK.score(f"1+1=2:{int(value) + 1}", example) == 0.0
    assert TASK.score(f":{value}:{int(value) - 1}", example) == 0.0  # the last ':' counts
    for garbage in ("", value, "=====", ":", f":{value}x", "\u2603" * 1000, ":" + "9" * 1_000_000):
        assert TASK.score(garbage, example) == 0.0


def test_terse_and_verbose_solutions_both_score_one_and_differ_in_length():
    for example in [e for e in TASK.test_examples() if len(parse(e.prompt)[1]) >= 2][:32]:
        values, ops = parse(example.prompt)
        n = len(ops)
        terse = worked_solution(values, ops, merge=[True] * n)
        verbose = worked_solution(values, ops, restate=[True] * n)
        assert TASK.score(terse, example) == TASK.score(verbose, example) == 1.0
        assert len(terse) < len(example.reference_solution) < len(verbose)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_scores_zero_or_one_by_its_final_answer(text):
    example = TASK.test_examples()[0]
    start = time.perf_counter()
    assert TASK.score(text, example) == (1.0 if final_answer(text) == example.answer else 0.0)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------- the data
def test_deterministic_given_the_seed():
    again = MultistepTask(**SMALL)
    assert again.test_examples() == TASK.test_examples()
    assert [again.train_example(i) for i in (0, 7, 10**7)] == [TASK.train_example(i) for i in (0, 7, 10**7)]
    other = MultistepTask(seed=1, **SMALL)
    assert [e.prompt for e in other.test_examples()] != [e.prompt for e in TASK.test_examples()]


def test_train_is_disjoint_from_both_test_splits():
    held_out = {e.prompt for e in TASK.test_examples()} | {e.prompt for e in OOD.test_examples()}
    assert len(held_out) == 2 * SMALL["n_test_problems"]
    # A tiny space (1 operation on 0..2: 27 problems) makes collisions certain unless they are excluded.
    tiny = MultistepTask(min_ops=1, max_ops=1, ood_min_ops=1, ood_max_ops=1, max_operand=2, n_test_problems=10)
    tiny_held_out = {e.prompt for e in tiny.test_examples()} | {e.prompt for e in MultistepTask(
        min_ops=1, max_ops=1, ood_min_ops=1, ood_max_ops=1, max_operand=2, n_test_problems=10, split="ood").test_examples()}
    assert not tiny_held_out & {tiny.train_example(i).prompt for i in range(300)}
    assert not held_out & {TASK.train_example(i).prompt for i in range(2000)}


def test_ood_split_is_longer_and_shares_the_train_stream():
    n_id = [len(parse(e.prompt)[1]) for e in TASK.test_examples()]
    n_ood = [len(parse(e.prompt)[1]) for e in OOD.test_examples()]
    assert set(n_id) == {1, 2, 3} and set(n_ood) == {4, 5}
    assert [OOD.train_example(i) for i in range(5)] == [TASK.train_example(i) for i in range(5)]
    assert OOD.cache_key() == TASK.cache_key()  # the split does not change what the base model learns
    other_mix = MultistepTask(split="ood", ood_min_ops=3, ood_max_ops=3, operations="+*", **SMALL)
    assert all(set(parse(e.prompt)[1]) <= {"+", "*"} for e in other_mix.test_examples())


def test_teacher_is_imperfect_and_of_free_length():
    train = [TASK.train_example(i) for i in range(1000)]
    teacher_acc = statistics.mean(TASK.score(e.demonstration, e) for e in train)
    assert 0.4 < teacher_acc < 0.85, teacher_acc
    clean = MultistepTask(teacher_step_noise=0.0, **SMALL)
    assert all(clean.score(clean.train_example(i).demonstration, clean.train_example(i)) == 1.0 for i in range(300))
    # The same problem written by the teacher at several lengths (terse, canonical, verbose).
    assert len({len(e.demonstration) - len(e.reference_solution) for e in train}) > 5
    assert sum(len(e.demonstration) < len(e.reference_solution) for e in train) > 100
    assert sum(len(e.demonstration) > len(e.reference_solution) for e in train) > 100


def test_texts_fit_the_alphabet_and_the_tiny_model():
    cfg = compose("task=multistep")
    positions, budget = cfg.model.max_position_embeddings, cfg.task.max_completion_tokens
    task = build_task(cfg.task)
    ood = build_task(compose("task=multistep_ood").task)
    examples = task.test_examples() + ood.test_examples() + [task.train_example(i) for i in range(2000)]
    for e in examples:
        assert set(e.prompt + e.demonstration + e.reference_solution) <= set(ALPHABET)
        assert len(e.demonstration) < budget and len(e.prompt) + budget <= positions
    assert statistics.mean(len(e.demonstration) for e in task.test_examples()) < 25


@pytest.mark.parametrize(
    "override, fragment",
    [("task.split=test", "task.split"), ("task.operations=/", "task.operations"), ("task.min_ops=5", "task.min_ops"),
     ("task.teacher_step_noise=1.5", "task.teacher_step_noise"), ("task.max_operand=0", "task.max_operand")],
)
def test_bad_values_fail_in_one_line(override, fragment):
    with pytest.raises(ConfigError) as info:
        build_task(compose("task=multistep", override).task)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_sft_from_a_traces_file_is_refused():
    with pytest.raises(ConfigError, match="own teacher"):
        build_task(compose("task=multistep").task, sft_source="traces.jsonl")


@pytest.mark.parametrize(
    "overrides",
    [["+task@eval.tasks.ood=multistep", "eval.tasks.ood.split=ood"], ["+task@eval.tasks.ood=multistep_ood"]],
)
def test_ood_split_plugs_into_eval_tasks(overrides):
    cfg = compose("task=multistep", *overrides)
    ood = build_task(cfg.eval.tasks.ood, field="eval.tasks.ood")
    assert [e.prompt for e in ood.test_examples()] == [e.prompt for e in build_task(
        OmegaConf.merge(cfg.task, {"split": "ood"})).test_examples()]
    assert ood.test_examples() != build_task(cfg.task).test_examples()


# ---------------------------------------------------------------- a run
@pytest.mark.slow
@pytest.mark.heavy  # about 40 s (it warm-starts a multistep base model); make test-heavy
def test_debug_training_run_with_the_ood_split(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "task=multistep", "debug=true", "logger=none", "logger.progress=false", "threads=1",
         "+task@eval.tasks.multistep_ood=multistep_ood", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["task"] == "multistep"
    for key in ("base/sampled_acc", "final/greedy_acc", "final/multistep_ood/sampled_acc", "final/multistep_ood/greedy_acc"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert OmegaConf.load(tmp_path / "config.yaml").eval.tasks.multistep_ood.split == "ood"
    keys = [json.loads(p.read_text()) for p in Path(os.environ["RLREASON_CACHE"]).glob("base-*/rlreason_base.json")]
    assert any(k["task"].get("name") == "multistep" and k["task"].get("alphabet") == ALPHABET for k in keys)
