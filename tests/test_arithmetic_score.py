"""The arithmetic task's reward: 0 or 1 for any completion, in bounded time, never raising.

(The math benchmarks' verifier has its own fuzzing and timeouts in test_verify.py.)
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason.tasks.arithmetic import ArithmeticTask, final_answer

TASK = ArithmeticTask(digits=4, n_test_problems=4)
EXAMPLE = TASK.test_examples()[0]
BOUND_S = 1.0  # generous for a 10 MB completion on a busy machine; the check is a split and a compare

PATHOLOGICAL = {
    "very long, no answer": "1+2+0=3," * 1_500_000,
    "huge number": ":" + "9" * 5_000_000,
    "answer buried before junk": f":{EXAMPLE.answer}" + "x" * 5_000_000,
    "only colons": ":" * 5_000_000,
    "unicode junk": "\u2603\U0001f600\u0301\u202e\x00\ud800" * 500_000,
    "full-width digits": ":" + "".join(chr(0xFF10 + int(d)) for d in EXAMPLE.answer),
    "slow LaTeX for a math verifier": r"\boxed{9^{9^{9^{9}}}} " * 100_000,
    "empty": "",
}


@pytest.mark.parametrize("text", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_pathological_completion_scores_zero_quickly(text: str) -> None:
    start = time.perf_counter()
    assert TASK.score(text, EXAMPLE) == 0.0
    assert time.perf_counter() - start < BOUND_S


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_scores_zero_or_one_by_its_final_answer(text: str) -> None:
    assert TASK.score(text, EXAMPLE) == (1.0 if final_answer(text) == EXAMPLE.answer else 0.0)


@settings(max_examples=100, deadline=None)
@given(st.text(), st.sampled_from(["", " ", "\n", "\t "]))
def test_the_right_answer_after_the_last_colon_scores_one_whatever_comes_before(prefix: str, space: str) -> None:
    assert TASK.score(f"{prefix}:{space}{EXAMPLE.answer}{space}", EXAMPLE) == 1.0
