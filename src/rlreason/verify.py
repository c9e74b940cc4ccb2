"""Final-answer extraction and a bounded, never-raising answer check built on math-verify.

Timeout design. math-verify bounds its work with ``signal.alarm``: whole seconds only, main
thread only (from any other thread it raises ValueError), and one alarm per parse and per
comparison, so a call's total time is a sum of several timeouts. Both are switched off here and
replaced by one deadline per ``answers_match`` call:

* answers longer than ``MAX_ANSWER_CHARS`` are rejected before parsing (a cap on the work; no
  MATH or GSM8K reference answer comes close);
* in the main thread, a ``setitimer`` deadline covers parsing and comparison together (sub-second,
  re-firing every ``_REFIRE_S`` in case a library swallows the first raise);
* in any other thread, or when the caller already has a SIGALRM timer armed (we never steal it),
  the check runs in a helper process (``python -m rlreason.verify``) that is killed and replaced
  when it overruns: the only way to stop runaway sympy work from a thread. Threads share that one
  process, so a call also waits for the calls queued before it (each bounded by its own timeout),
  and the first call waits for the helper to start (about 1 s, at most ``_START_TIMEOUT_S``).

POSIX only (SIGALRM, ``select`` on pipes), like the rest of the project.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

from math_verify import parse, verify
from math_verify.errors import TimeoutException

# math-verify warns once that we disabled its (signal) timeout and logs whole inputs when it fails
# to parse them; callers only need the boolean.
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 1000
_REFIRE_S = 0.05
_START_TIMEOUT_S = 60.0

_BOXED_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])(\s*)")
_BARE_TOKEN = re.compile(r"[^\s$]+")
_GSM8K_MARK = re.compile(r"####[ \t]*([^\n]*)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}``; None if absent or cut off (unbalanced).

    A linear scan with a depth counter (no recursion), so deeply nested braces are cheap; escaped
    braces ``\\{`` ``\\}`` do not count. ``\\boxed 5`` (no braces, found in some MATH solutions)
    gives the token after the space.
    """
    command = None
    for command in _BOXED_COMMAND.finditer(text):
        pass
    if command is None:
        return None
    start = command.end()
    if not text.startswith("{", start):
        token = _BARE_TOKEN.match(text, start) if command.group(1) else None
        return token.group(0) if token else None
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i].strip()
        i += 1
    return None


def gsm8k_answer(text: str) -> str | None:
    """The number after the last ``####`` (GSM8K's answer marker), without commas or ``$``."""
    marks = _GSM8K_MARK.findall(text)
    if not marks:
        return None
    number = _NUMBER.search(marks[-1].replace(",", "").replace("$", ""))
    return number.group(0).lstrip("+") if number else None


def extract_answer(completion: str) -> str | None:
    """The final answer a completion commits to: its last ``\\boxed{}``, else its ``#### n``."""
    boxed = last_boxed(completion)
    return boxed if boxed is not None else gsm8k_answer(completion)


def _normalize(answer: str) -> str:
    return "".join(answer.split()).strip("$")


@lru_cache(maxsize=4096)
def _parse(answer: str) -> list:
    """math-verify's parse of one answer (cached: a reference is checked once per sample)."""
    return parse(f"${answer}$", parsing_timeout=None)  # type: ignore[arg-type]


def _math_verify_equal(predicted: str, reference: str) -> bool:
    return bool(verify(_parse(reference), _parse(predicted), timeout_seconds=None))


class _Deadline(BaseException):
    """Raised by the SIGALRM handler; a BaseException so library ``except Exception`` cannot eat it."""


def _equal_with_alarm(predicted: str, reference: str, timeout_s: float) -> bool:
    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        if armed:
            raise _Deadline

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s, _REFIRE_S)
            return _math_verify_equal(predicted, reference)
        finally:
            armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    except _Deadline:
        return False


def _serve() -> None:
    """Helper process loop (``python -m rlreason.verify``): one JSON pair per line in, 1/0 out."""
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            predicted, reference = json.loads(line)
            equal = _math_verify_equal(predicted, reference)
        except (Exception, TimeoutException):
            equal = False
        print(int(equal), flush=True)


class _VerifierProcess:
    """A helper process running math-verify, so a thread can abandon (kill) an overrunning check.

    A plain subprocess rather than multiprocessing: spawn would re-import the caller's
    ``__main__``, which breaks scripts without an ``if __name__ == "__main__"`` guard.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        atexit.register(self._stop)

    def equal(self, predicted: str, reference: str, timeout_s: float) -> bool:
        with self._lock:
            try:
                if not self._started():
                    return False
                self._process.stdin.write(json.dumps([predicted, reference]).encode() + b"\n")
                self._process.stdin.flush()
                reply = self._read_line(time.monotonic() + timeout_s)
                if reply is None:
                    self._stop()
                return reply == b"1"
            except BaseException:
                self._stop()
                raise

    def _started(self) -> bool:
        if self._process is not None and self._process.poll() is None:
            return True
        self._stop()
        src_dir = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src_dir, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "rlreason.verify"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
        )
        if self._read_line(time.monotonic() + _START_TIMEOUT_S) == b"ready":
            return True
        self._stop()
        return False

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or None if the helper died or the deadline passed."""
        fd, line = self._process.stdout.fileno(), b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                return None
            line += chunk
        return line.strip()

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                pipe.close()
        self._process = None


_HELPER = _VerifierProcess()


def _can_use_alarm() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )


def answers_match(predicted: str, reference: str, timeout_s: float) -> bool:
    """Whether two final answers are mathematically equal (``\\frac12`` = ``0.5`` = ``1/2``).

    Identical strings (ignoring whitespace and ``$``) match without parsing. Otherwise math-verify
    decides, within ``timeout_s`` seconds (see the module docstring for how that is enforced from
    any thread). Never raises: an error, a timeout or an over-long answer is simply no match.
    """
    try:
        predicted, reference = predicted.strip(), reference.strip()
        if not predicted or not reference:
            return False
        if _normalize(predicted) == _normalize(reference):
            return True
        if len(predicted) > MAX_ANSWER_CHARS or len(reference) > MAX_ANSWER_CHARS or timeout_s <= 0:
            return False
        if _can_use_alarm():
            return _equal_with_alarm(predicted, reference, timeout_s)
        return _HELPER.equal(predicted, reference, timeout_s)
    except (Exception, TimeoutException, _Deadline):
        return False


def math_reward(completion: str, reference_answer: str, timeout_s: float) -> float:
    """1.0 if the completion's final answer equals the reference answer, else 0.0. Never raises."""
    predicted = extract_answer(completion) if isinstance(completion, str) else None
    if predicted is None or not isinstance(reference_answer, str):
        return 0.0
    return 1.0 if answers_match(predicted, reference_answer, timeout_s) else 0.0


if __name__ == "__main__":
    _serve()
