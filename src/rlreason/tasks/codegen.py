"""The embedded code task: write a one-line Python function from its input/output examples.

Each problem is a function ``f`` over a short list of digits, made of an element-wise transform
(``v+k``, ``v*k``, ``v%k``, ``v*v``, ...) and an aggregate (the list itself, ``sorted``, reversed,
``sum``, ``max``, ``min``). As MBPP's prompts do, the prompt names the function in words and shows
``n_shown`` examples, one per line::

    each times 3
    f([3,1,2])=[9,3,6]

and the completion is Python source defining ``f``. With ``describe=false`` the prompt holds only
the examples (show 3 then): an induction task (find ``k`` from the outputs) that the embedded
model learns far more slowly, a difficulty knob (measured on 128 test problems after 200 warm-start
steps: greedy 0.04, sampled 0.02 from examples alone; greedy 0.20, sampled 0.04-0.06 with the words,
where what is left to learn is mostly copying the constant from the words into the code; that copy
appears near the end of model.warm_start.steps=400: greedy 0.38 after 300 steps, 0.99 at 400).
It is graded by running it in the sandbox on ``n_hidden`` inputs (the shown ones and more, longer lists): reward 1.0 iff every output, decoded in
the trainer's process, equals the value the generator (trusted code) computes.

The solution length is free: the same function can be written as ``f=lambda x:[v*3 for v in x]``,
as ``def f(x):return[...]`` or as a verbose loop that appends to a list. Two kinds of SFT data:
- reference solutions: the terse lambda, always correct (the paper's SFT-H data);
- teacher demonstrations: an imperfect teacher that writes any of the three styles at random and,
  independently with probability ``teacher_noise`` each, gets the transform's constant (or the
  transform, where it has none) and the aggregate wrong. The warm start trains on these, so the
  base model has partial skill.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from rlreason.errors import ConfigError
from rlreason.tasks.base import Example, Grade, Task
from rlreason.tasks.sandboxed import SandboxTaskConfig, open_sandbox

# Every character of the task's prompts and solutions; the embedded tokenizer is built from it.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 \n()[]=+-*/%:,."
ENTRY_POINT = "f"
STYLES = ("lambda", "def", "loop")
MAX_VALUE = 9  # list elements are digits 0..MAX_VALUE


@dataclass(frozen=True)
class Transform:
    """An element-wise transform of ``v``: its source template and its constant's range (none: ())."""

    name: str
    template: str  # Python expression in v, with {k} for the constant
    constants: tuple[int, ...]
    apply: Callable[[int, int], int]


TRANSFORMS = {
    t.name: t
    for t in (
        Transform("id", "v", (), lambda v, k: v),
        Transform("add", "v+{k}", tuple(range(1, 10)), lambda v, k: v + k),
        Transform("sub", "v-{k}", tuple(range(1, 10)), lambda v, k: v - k),
        Transform("mul", "v*{k}", tuple(range(2, 10)), lambda v, k: v * k),
        Transform("mod", "v%{k}", tuple(range(2, 10)), lambda v, k: v % k),
        Transform("div", "v//{k}", tuple(range(2, 10)), lambda v, k: v // k),
        Transform("sq", "v*v", (), lambda v, k: v * v),
        Transform("neg", "-v", (), lambda v, k: -v),
    )
}
AGGREGATES: dict[str, Callable[[list[int]], Any]] = {
    "list": lambda r: r,
    "sorted": sorted,
    "rev": lambda r: r[::-1],
    "sum": sum,
    "max": max,
    "min": min,
}


@dataclass(frozen=True)
class Function:
    """One problem's hidden function: transform(k) on each element, then the aggregate."""

    transform: str
    k: int  # the transform's constant (0 where it has none)
    aggregate: str

    def __call__(self, xs: list[int]) -> Any:
        t = TRANSFORMS[self.transform]
        return AGGREGATES[self.aggregate]([t.apply(v, self.k) for v in xs])

    def source(self, style: str) -> str:
        """Python source defining ``f`` in one of STYLES (same function, different lengths)."""
        e = TRANSFORMS[self.transform].template.format(k=self.k)
        if style == "loop":
            result = {"list": "r", "sorted": "sorted(r)", "rev": "r[::-1]"}.get(self.aggregate, f"{self.aggregate}(r)")
            return f"def f(x):\n r=[]\n for v in x:\n  r+=[{e}]\n return {result}"
        if self.transform == "id":
            body = {"sorted": "sorted(x)", "rev": "x[::-1]"}.get(self.aggregate, f"{self.aggregate}(x)")
        elif self.aggregate == "list":
            body = f"[{e} for v in x]"
        elif self.aggregate == "rev":
            body = f"[{e} for v in x][::-1]"
        else:
            body = f"{self.aggregate}({e} for v in x)"
        return f"f=lambda x:{body}" if style == "lambda" else f"def f(x):return {body}"


FUNCTIONS = [
    Function(t.name, k, a)
    for t in TRANSFORMS.values()
    for k in (t.constants or (0,))
    for a in AGGREGATES
    if not (t.name == "id" and a == "list")  # f(x)=x is no problem
]


# The words that name a transform (its constant as {k}) and an aggregate in a described prompt.
TRANSFORM_WORDS = {"id": "", "add": "plus {k}", "sub": "minus {k}", "mul": "times {k}", "mod": "mod {k}",
                   "div": "div {k}", "sq": "squared", "neg": "negated"}
AGGREGATE_WORDS = {"list": "each", "sorted": "sorted", "rev": "reversed", "sum": "sum", "max": "max", "min": "min"}


def describe(fn: Function) -> str:
    """``fn`` in words, e.g. "sum times 3" (the aggregate, then the transform)."""
    words = TRANSFORM_WORDS[fn.transform].format(k=fn.k)
    return f"{AGGREGATE_WORDS[fn.aggregate]} {words}".strip()


def prompt_text(fn: Function, shown: list[list[int]], described: bool) -> str:
    """The prompt: the function in words (when ``described``), then one ``f(x)=y`` line per shown input."""
    lines = [describe(fn)] if described else []
    return "".join(f"{line}\n" for line in lines + [f"f({format_value(x)})={format_value(fn(x))}" for x in shown])


def format_value(value: Any) -> str:
    """A value as the prompt shows it (no spaces: ``[9,3,6]``)."""
    return repr(value).replace(" ", "")


def functions_up_to(max_constant: int) -> list[Function]:
    """The problems whose transform's constant is at most ``max_constant`` (the difficulty knob: how
    many constants the words can name, and so how much copying the model must get right)."""
    return [fn for fn in FUNCTIONS if fn.k <= max_constant]


def teacher_function(fn: Function, noise: float, rng: random.Random, max_constant: int = 9) -> Function:
    """The imperfect teacher's idea of ``fn``: with probability ``noise`` each, a wrong constant
    (another of the task's, or another transform where there is none) and a wrong aggregate."""
    transform, k, aggregate = fn.transform, fn.k, fn.aggregate
    if rng.random() < noise:
        constants = [c for c in TRANSFORMS[transform].constants if c <= max_constant]
        if len(constants) > 1:
            k = rng.choice([c for c in constants if c != k])
        else:  # (with max_constant 2, v*2, v%2 and v//2 have no other constant: another transform then)
            transform, k = rng.choice([t for t in ("id", "sq", "neg") if t != transform]), 0
    if rng.random() < noise:
        aggregate = rng.choice([a for a in AGGREGATES if a != aggregate])
    if transform == "id" and aggregate == "list":
        aggregate = "sorted"
    return Function(transform, k, aggregate)


def make_problem(rng: random.Random, n_shown: int, n_hidden: int, functions: list[Function] | None = None
                 ) -> tuple[Function, list[list[int]], list[list[int]]]:
    """A function (of ``functions``, default all), its shown inputs (lists of 2-3 digits) and its hidden
    inputs (the shown ones, then lists of 1-5 digits)."""
    fn = rng.choice(functions or FUNCTIONS)
    shown = [[rng.randint(0, MAX_VALUE) for _ in range(rng.randint(2, 3))] for _ in range(n_shown)]
    extra = [[rng.randint(0, MAX_VALUE) for _ in range(rng.randint(1, 5))] for _ in range(n_hidden - n_shown)]
    return fn, shown, shown + extra


def same_value(got: Any, expected: Any) -> bool:
    """Exact equality of plain values by type and content (an int is not a bool or a float); the
    candidate's own ``==`` is never called, since ``got`` comes from ``decode`` (builtins only)."""
    if type(got) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(got) == len(expected) and all(same_value(g, e) for g, e in zip(got, expected))
    return got == expected


@dataclass
class Config(SandboxTaskConfig):
    """conf/task/codegen.yaml's keys (documented there); the sandbox's are SandboxTaskConfig's."""

    n_test_problems: int = 256
    describe: bool = True
    n_shown: int = 1
    n_hidden: int = 8
    max_constant: int = 5
    teacher_noise: float = 0.4
    # One call of a one-line function over a short list: much tighter limits than MBPP+'s.
    test_timeout_s: float = 1.0
    completion_timeout_s: float = 3.0
    memory_mb: int = 512


class CodegenTask(Task):
    """Write ``f`` from examples; graded by running it in the sandbox on hidden inputs."""

    Config = Config
    name = "codegen"

    def __init__(
        self,
        seed: int = 0,
        n_test_problems: int = 256,
        describe: bool = True,
        n_shown: int = 1,
        n_hidden: int = 8,
        max_constant: int = 5,
        teacher_noise: float = 0.4,
        sandbox: str = "bwrap",
        sandbox_workers: int = 0,
        test_timeout_s: float = 1.0,
        completion_timeout_s: float = 3.0,
        memory_mb: int = 512,
        name: str = "codegen",
    ):
        if n_shown < 1 or n_hidden < n_shown:
            raise ConfigError(f"task.n_shown={n_shown} must be >= 1 and task.n_hidden={n_hidden} >= it")
        if not 2 <= max_constant <= 9:
            raise ConfigError(f"task.max_constant={max_constant} must be in [2, 9] (transforms mul, mod and div start at 2)")
        if not 0.0 <= teacher_noise <= 1.0:
            raise ConfigError(f"task.teacher_noise={teacher_noise} must be in [0, 1]")
        self.name, self.seed, self.noise, self.describe = name, seed, teacher_noise, describe
        self.max_constant, self.functions = max_constant, functions_up_to(max_constant)
        self.n_shown, self.n_hidden, self.n_test_problems = n_shown, n_hidden, n_test_problems
        rng = random.Random(f"codegen-test-{seed}-{n_shown}-{n_hidden}" + self._variant())
        self._test: list[Example] = []
        self._test_prompts: set[str] = set()
        for _ in range(100 * n_test_problems):
            if len(self._test) == n_test_problems:
                break
            example = self._example(*make_problem(rng, n_shown, n_hidden, self.functions), rng)
            if example.prompt not in self._test_prompts:
                self._test_prompts.add(example.prompt)
                self._test.append(example)
        self._sandbox_args = (sandbox, sandbox_workers, test_timeout_s, completion_timeout_s, memory_mb)
        self._sandbox: Any = None
        self._open_sandbox()  # at start-up: a missing bubblewrap is a one-line error now, not mid-run

    def _variant(self) -> str:
        """The generator streams' suffix for settings added later (the examples-only, all-constants task keeps
        its old problems)."""
        return ("-described" if self.describe else "") + (f"-k{self.max_constant}" if self.max_constant != 9 else "")

    def _open_sandbox(self) -> Any:
        if self._sandbox is None:
            self._sandbox = open_sandbox(*self._sandbox_args)
        return self._sandbox

    def _example(self, fn: Function, shown: list[list[int]], hidden: list[list[int]], rng: random.Random) -> Example:
        prompt = prompt_text(fn, shown, self.describe)
        teacher = teacher_function(fn, self.noise, rng, self.max_constant)
        return Example(
            prompt=prompt,
            answer=fn.source("lambda"),
            reference_solution=fn.source("lambda"),
            demonstration=teacher.source(rng.choice(STYLES)),
            meta={"inputs": hidden, "expected": [fn(x) for x in hidden], "function": fn},
        )

    def train_example(self, index: int) -> Example:
        rng = random.Random(f"codegen-train-{self.seed}-{self.n_shown}-{self.n_hidden}{self._variant()}-{index}")
        while True:
            example = self._example(*make_problem(rng, self.n_shown, self.n_hidden, self.functions), rng)
            if example.prompt not in self._test_prompts:
                return example

    def test_examples(self) -> list[Example]:
        return list(self._test)

    def alphabet(self) -> str:
        return ALPHABET

    def cache_key(self) -> dict[str, Any]:
        return {
            "task": "codegen",
            "version": 1,
            "seed": self.seed,
            "n_shown": self.n_shown,
            "n_hidden": self.n_hidden,
            "n_test_problems": self.n_test_problems,
            "teacher_noise": self.noise,
        } | ({"describe": True} if self.describe else {}) | (  # the examples-only, all-constants task keeps its old key
            {"max_constant": self.max_constant} if self.max_constant != 9 else {})

    def grade(self, completions: list[str], examples: list[Example]) -> list[Grade]:
        """All completions in one ``Sandbox.run`` (parallel across workers); an empty completion,
        a syntax error, a crash, a timeout or any wrong output is reward 0."""
        from rlreason.sandbox import Program

        programs, positions = [], []
        for i, (completion, example) in enumerate(zip(completions, examples)):
            if completion.strip():
                programs.append(Program(source=completion, entry_point=ENTRY_POINT, inputs=[[x] for x in example.meta["inputs"]]))
                positions.append(i)
        passed = [False] * len(completions)
        outcomes = self._open_sandbox().run(programs) if programs else []
        for i, outcome in zip(positions, outcomes):
            passed[i] = self._passes(outcome, examples[i].meta["expected"])
        return [Grade(1.0 if ok else 0.0, ok) for ok in passed]

    @staticmethod
    def _passes(outcome: Any, expected: list[Any]) -> bool:
        from rlreason.sandbox import decode

        if outcome.status != "ok" or len(outcome.outputs) != len(expected):
            return False
        for (kind, value), want in zip(outcome.outputs, expected):
            if kind != "ok":
                return False
            try:
                got = decode(value)
            except Exception:  # a value the decoder refuses is a wrong answer, not a crash of the run
                return False
            if not same_value(got, want):
                return False
        return True

    def score(self, completion: str, example: Example) -> float:
        return self.grade([completion], [example])[0].reward

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.grade([completion], [example])[0].correct

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
