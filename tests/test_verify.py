"""Answer extraction and the bounded, never-raising math-verify check, on the real reference answers."""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlreason import verify
from rlreason.verify import answers_match, extract_answer, gsm8k_answer, last_boxed, math_reward

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"reference data not found at {SHARED_DATA} (shared/ beside the repo)"
)
TIMEOUT_S = 0.5  # small, so the pathological cases below stay fast
BOUND_S = 5.0  # what "bounded" means in these tests: TIMEOUT_S plus generous slack for a slow CI machine

PATHOLOGICAL = {
    "power tower": r"9^{9^{9^{9}}}",
    "power tower, no braces": "9^9^9^9",
    "huge factorial": r"(10^{10})!",
    "huge binomial": r"\binom{10^{9}}{10^{5}}",
    "deep braces": "{" * 50_000 + "1" + "}" * 50_000,
    "100k junk": "x^{y_" * 20_000,
    "unicode junk": "\u2603\U0001f600\u0301\u202e\x00" * 20_000,
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def as_completion(answer: str) -> str:
    return f"Let me work through it step by step. ... so the answer is $\\boxed{{{answer}}}$."


def altered(answer: str) -> str:
    """A wrong answer: integers plus one, anything else with a junk term appended."""
    return str(int(answer) + 1) if re.fullmatch(r"-?\d+", answer) else answer + "+q"


# --- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"first \boxed{1}, then \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}"),
        (r"\fbox{7}", "7"),
        (r"\boxed {  42 }", "42"),
        (r"set \boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),
        (r"$\boxed 5$", "5"),
        (r"\boxed{12", None),
        (r"\boxedfoo{3}", None),
        ("no answer here", None),
        ("{" * 100_000, None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes $18.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### $-5.5 dollars", "-5.5"),
        ("#### 1\nthen again\n#### 2", "2"),
        ("####", None),
        ("no marker 12", None),
    ],
)
def test_gsm8k_answer(text: str, expected: str | None) -> None:
    assert gsm8k_answer(text) == expected


def test_extract_answer_prefers_boxed_then_gsm8k_marker() -> None:
    assert extract_answer("#### 3 and finally \\boxed{4}") == "4"
    assert extract_answer("so #### 3") == "3"
    assert extract_answer("I think it is 3") is None


@needs_data
def test_math500_answer_is_last_boxed_of_solution() -> None:
    rows = read_jsonl(SHARED_DATA / "math500" / "test.jsonl")
    assert [last_boxed(row["solution"]) for row in rows] == [row["answer"] for row in rows]


# --- equivalence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predicted", "reference"),
    [
        (r"\frac12", "0.5"),
        ("0.5", r"\frac12"),
        ("1/2", r"\frac{1}{2}"),
        ("0.5", "1/2"),
        (r"\dfrac{1}{2}", "0.5"),
        ("18.0", "18"),
        ("10,080", r"10,\!080"),
        ("C", r"\text{(C)}"),
        (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
        ("[-2,7]", r"x \in [-2,7]"),
    ],
)
def test_equivalent_forms_match(predicted: str, reference: str) -> None:
    assert answers_match(predicted, reference, timeout_s=5.0)


@pytest.mark.parametrize(("predicted", "reference"), [("3", "4"), (r"\frac12", "0.51"), ("x+1", "x+2"), ("", "0")])
def test_different_answers_do_not_match(predicted: str, reference: str) -> None:
    assert not answers_match(predicted, reference, timeout_s=5.0)


@needs_data
def test_every_math500_answer_scores_one_and_altered_answers_zero() -> None:
    answers = [row["answer"] for row in read_jsonl(SHARED_DATA / "math500" / "test.jsonl")]
    assert len(answers) == 500
    assert [a for a in answers if math_reward(as_completion(a), a, 5.0) != 1.0] == []
    # The line above hits the exact-string fast path; math-verify itself must agree (no exceptions).
    assert [a for a in answers if not verify._math_verify_equal(a, a)] == []
    assert [a for a in answers if math_reward(as_completion(altered(a)), a, 5.0) != 0.0] == []


@needs_data
def test_every_gsm8k_answer_scores_one_boxed_or_marked_and_altered_zero() -> None:
    answers = [gsm8k_answer(row["answer"]) for row in read_jsonl(SHARED_DATA / "gsm8k" / "test.jsonl")]
    assert len(answers) == 1319 and None not in answers
    assert [a for a in answers if math_reward(as_completion(a), a, 5.0) != 1.0] == []
    assert [a for a in answers if math_reward(f"So she pays 3 + 4.\n#### {a}", a, 5.0) != 1.0] == []
    assert [a for a in answers if math_reward(as_completion(altered(a)), a, 5.0) != 0.0] == []


# --- bounded and never raising ------------------------------------------------------------------


def timed_reward(completion: str, reference: str, timeout_s: float = TIMEOUT_S) -> tuple[float, float]:
    start = time.monotonic()
    reward = math_reward(completion, reference, timeout_s)
    return reward, time.monotonic() - start


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_pathological_answers_are_bounded_in_main_thread(name: str) -> None:
    reward, seconds = timed_reward(as_completion(PATHOLOGICAL[name]), "5")
    assert reward == 0.0 and seconds < BOUND_S
    reward, seconds = timed_reward(as_completion("5"), PATHOLOGICAL[name])
    assert reward == 0.0 and seconds < BOUND_S


def test_pathological_answers_are_bounded_in_other_threads() -> None:
    """Off the main thread SIGALRM is unavailable: the helper process is killed and replaced."""
    cases = [(as_completion(text), "5") for text in PATHOLOGICAL.values()] + [(as_completion(r"\frac12"), "0.5")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: timed_reward(*case), cases))
    rewards = [reward for reward, _ in results]
    assert rewards == [0.0] * len(PATHOLOGICAL) + [1.0]
    # Calls queue on one helper process, so each waits for at most the two-at-a-time backlog.
    assert max(seconds for _, seconds in results) < 2 * BOUND_S
    with ThreadPoolExecutor(max_workers=1) as pool:  # after a kill, a fresh helper still answers
        assert pool.submit(math_reward, as_completion("1/2"), "0.5", 5.0).result() == 1.0


def test_a_caller_alarm_is_left_alone() -> None:
    """With the caller's own SIGALRM timer armed, the check must not replace or cancel it."""

    def caller_handler(signum: int, frame: object) -> None:
        raise AssertionError("the caller's timer should not fire during this test")

    previous = signal.signal(signal.SIGALRM, caller_handler)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        assert math_reward(as_completion(r"\frac12"), "0.5", 5.0) == 1.0
        assert 90.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100.0
        assert signal.getsignal(signal.SIGALRM) is caller_handler
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_main_thread_alarm_is_cleaned_up() -> None:
    handler = signal.getsignal(signal.SIGALRM)
    math_reward(as_completion(PATHOLOGICAL["power tower"]), "5", TIMEOUT_S)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is handler


def test_non_strings_score_zero() -> None:
    assert math_reward(None, "1", 1.0) == 0.0  # type: ignore[arg-type]
    assert math_reward(r"\boxed{1}", None, 1.0) == 0.0  # type: ignore[arg-type]


_LATEX_TOKENS = list("0123456789+-*/^_{}()[],.=x\\ $!") + ["\\frac", "\\sqrt", "\\boxed{", "\\left(", "\\infty"]
_latexish = st.lists(st.sampled_from(_LATEX_TOKENS), max_size=60).map("".join)
_answers = st.one_of(
    st.text(max_size=300),
    _latexish,
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.integers(min_value=1, max_value=6).map(lambda n: "9^{" * n + "9" + "}" * n),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "{" * n + "1" + "}" * n),
)


# The deadline's SIGALRM can land inside hypothesis's gc callback, where Python drops the exception
# ("Exception ignored in ..."): the re-firing timer is what keeps the call bounded then.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.text(max_size=200), answer=_answers, reference=_answers)
def test_fuzz_reward_is_zero_or_one_and_bounded(prefix: str, answer: str, reference: str) -> None:
    # A tenth of a second per check: towers and deep braces time out, and the test stays fast.
    for completion in (prefix + answer, f"{prefix}\\boxed{{{answer}}}", f"{prefix}\n#### {answer}"):
        reward, seconds = timed_reward(completion, reference, timeout_s=0.1)
        assert reward in (0.0, 1.0)
        assert seconds < BOUND_S

