"""The embedded code task: generator, teacher, split, and grading by real execution in the sandbox."""

from __future__ import annotations

import random

import pytest

from rlreason.errors import ConfigError
from rlreason.tasks import codegen
from rlreason.tasks.codegen import FUNCTIONS, STYLES, CodegenTask, Function, make_problem, same_value, teacher_function

MAX_POSITIONS = 128  # conf/model/tiny.yaml's max_position_embeddings


def run_trusted(source: str, inputs: list[list[int]]) -> list:
    """Run generator-written (trusted) source in this process: only for checking the generator itself."""
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the generator's own text, never a model's
    return [namespace["f"](x) for x in inputs]


def test_every_style_of_every_function_computes_the_function():
    rng = random.Random(1)
    for fn in FUNCTIONS:
        inputs = [[rng.randint(0, 9) for _ in range(rng.randint(1, 5))] for _ in range(6)]
        expected = [fn(x) for x in inputs]
        for style in STYLES:
            got = run_trusted(fn.source(style), inputs)
            assert all(same_value(g, e) for g, e in zip(got, expected)), (fn, style)


def test_solution_length_is_free_and_the_reference_is_the_shortest():
    fn = Function("mul", 3, "sum")
    lengths = [len(fn.source(style)) for style in STYLES]
    assert len(set(lengths)) == 3 and lengths[0] == min(lengths)


def test_texts_fit_the_alphabet_and_the_tiny_models_positions():
    rng = random.Random(2)
    for _ in range(3000):
        fn, shown, _ = make_problem(rng, 3, 8)
        # the two documented prompts: the default (words and 1 example) and examples only (3 of them)
        prompt = max(codegen.prompt_text(fn, shown[:1], described=True), codegen.prompt_text(fn, shown, described=False), key=len)
        for style in STYLES:
            for f in (fn, teacher_function(fn, 1.0, rng)):
                text = prompt + f.source(style)
                assert set(text) <= set(codegen.ALPHABET), text
                assert len(f.source(style)) + 1 <= 64, f.source(style)  # + end-of-text within max_completion_tokens
                assert len(text) + 1 <= MAX_POSITIONS, text


@pytest.mark.parametrize("noise", [0.0, 0.4, 0.7])
def test_teacher_accuracy_is_as_designed(noise):
    """Each of the two mistakes is made with probability ``noise``: about (1-noise)^2 are right."""
    rng = random.Random(3)
    n, right = 1500, 0
    for _ in range(n):
        fn, _, hidden = make_problem(rng, 3, 8)
        got = run_trusted(teacher_function(fn, noise, rng).source(rng.choice(STYLES)), hidden)
        right += all(same_value(g, fn(x)) for g, x in zip(got, hidden))
    assert abs(right / n - (1 - noise) ** 2) < 0.05, right / n


def test_same_value_is_exact_about_types():
    assert same_value([1, 2], [1, 2]) and same_value(-3, -3)
    assert not same_value(True, 1) and not same_value(1.0, 1) and not same_value((1, 2), [1, 2])
    assert not same_value([1, 2], [1, 2, 3]) and not same_value([[1]], [1])


# ---- the task, grading through the real sandbox ---------------------------------------------------

@pytest.fixture(scope="module")
def task():
    pytest.importorskip("rlreason.sandbox")
    t = CodegenTask(seed=0, n_test_problems=64, sandbox="process", sandbox_workers=2)
    yield t
    t.close()


def test_task_is_deterministic_and_seeded(task):
    again = CodegenTask(seed=0, n_test_problems=64, sandbox="process", sandbox_workers=1)
    other = CodegenTask(seed=1, n_test_problems=64, sandbox="process", sandbox_workers=1)
    try:
        assert [e.prompt for e in again.test_examples()] == [e.prompt for e in task.test_examples()]
        assert all(again.train_example(i) == task.train_example(i) for i in range(50))
        assert [e.prompt for e in other.test_examples()] != [e.prompt for e in task.test_examples()]
        assert again.cache_key() == task.cache_key() != other.cache_key()
    finally:
        again.close()
        other.close()


def test_examples_only_prompts_are_the_difficulty_knob_with_their_own_base_model():
    plain = CodegenTask(seed=0, n_test_problems=16, describe=False, n_shown=3, sandbox="process", sandbox_workers=1)
    described = CodegenTask(seed=0, n_test_problems=16, sandbox="process", sandbox_workers=1)
    try:
        for example in plain.test_examples():
            lines = example.prompt.splitlines()
            assert len(lines) == 3 and all(line.startswith("f(") for line in lines)
        for example in described.test_examples():
            words, shown = example.prompt.splitlines()
            assert words == codegen.describe(example.meta["function"]) and shown.startswith("f(")
        assert "describe" not in plain.cache_key() and described.cache_key()["describe"] is True
    finally:
        plain.close()
        described.close()


def test_held_out_split_is_disjoint_from_training(task):
    test_prompts = {e.prompt for e in task.test_examples()}
    assert len(test_prompts) == 64
    assert not test_prompts & {task.train_example(i).prompt for i in range(3000)}


def test_hidden_tests_are_more_than_the_prompt_shows(task):
    for example in task.test_examples():
        assert len(example.meta["inputs"]) == 8 and example.prompt.count("\n") == 1 + 1  # the words, one example


def test_the_prompt_names_the_function_and_shows_its_examples():
    fn = Function("mul", 3, "sum")
    assert codegen.prompt_text(fn, [[3, 1, 2]], described=True) == "sum times 3\nf([3,1,2])=18\n"
    assert codegen.prompt_text(fn, [[3, 1, 2], [5]], described=False) == "f([3,1,2])=18\nf([5])=15\n"
    assert codegen.describe(Function("id", 0, "sorted")) == "sorted"
    assert codegen.describe(Function("sq", 0, "list")) == "each squared"
    # every function has its own words: the description alone determines the function
    assert len({codegen.describe(f) for f in codegen.FUNCTIONS}) == len(codegen.FUNCTIONS)


def test_reference_solutions_all_pass(task):
    examples = task.test_examples()
    grades = task.grade([e.reference_solution for e in examples], examples)
    assert all(g.reward == 1.0 and g.correct for g in grades)


def mutations(fn: Function) -> list[str]:
    """Wrong versions of ``fn``: another constant, another aggregate, reversed, one element off."""
    out = [teacher_function(fn, 1.0, random.Random(str(fn))).source("def")]
    out.append(fn.source("lambda") + "[::-1]" if fn.aggregate in ("list", "sorted", "rev") else fn.source("lambda") + "+1")
    out.append(fn.source("loop").replace("r=[]", "r=[0]"))
    return out


def test_every_style_passes_and_wrong_solutions_fail(task):
    """Correct solutions in each style score 1; mutated ones score what trusted execution says
    (0 unless the mutation happens to compute the same outputs on every hidden input)."""
    examples = task.test_examples()[:30]
    completions, pairs, want = [], [], []
    for e in examples:
        fn, inputs = e.meta["function"], e.meta["inputs"]
        for source in [fn.source(style) for style in STYLES] + mutations(fn):
            completions.append(source)
            pairs.append(e)
            want.append(float(all(same_value(g, fn(x)) for g, x in zip(run_trusted(source, inputs), inputs))))
    assert sum(w == 0.0 for w in want) >= 2 * len(examples)  # the mutations are mostly wrong
    assert [g.reward for g in task.grade(completions, pairs)] == want


def test_teacher_demonstrations_pass_at_the_designed_rate(task):
    examples = [task.train_example(i) for i in range(400)]
    rate = sum(g.correct for g in task.grade([e.demonstration for e in examples], examples)) / len(examples)
    assert abs(rate - 0.6**2) < 0.08, rate


MALFORMED = [
    "",
    "   \n",
    "f=lambda x:",
    "def f(x):\n return",
    "def g(x):return x",  # no entry point
    "f=3",  # not callable
    "f=lambda x:[v for v in x][",
    "f=lambda x:1/0",
    "f=lambda x:x.__class__",
    "f=lambda x:float(sum(x))",  # 6.0 is not 6
    "f=lambda x:tuple(x)",
    "f=lambda x:[True for v in x]",
    "import os\nf=lambda x:os._exit(0)",
    "f=lambda x:exec('while 1:pass')",
    "\x00\x01",
    "def f(x):\n\treturn sorted(x)\n  return 1",  # indentation error
]


def test_malformed_completions_score_zero_and_never_raise(task):
    example = task.test_examples()[0]
    grades = task.grade(MALFORMED, [example] * len(MALFORMED))
    assert [g.reward for g in grades] == [0.0] * len(MALFORMED)
    assert task.score("f=lambda x:", example) == 0.0 and not task.is_correct("", example)


def test_results_do_not_depend_on_the_worker_count(task):
    examples = [task.train_example(i) for i in range(40)]
    completions = [e.demonstration for e in examples]
    one = CodegenTask(seed=0, n_test_problems=64, sandbox="process", sandbox_workers=1)
    try:
        assert one.grade(completions, examples) == task.grade(completions, examples)
    finally:
        one.close()


def test_bad_config_is_a_one_line_error():
    with pytest.raises(ConfigError, match="teacher_noise"):
        CodegenTask(teacher_noise=1.5, sandbox="process")
    with pytest.raises(ConfigError, match="task.sandbox"):
        CodegenTask(sandbox="docker")
    with pytest.raises(ConfigError, match="n_shown"):
        CodegenTask(n_shown=5, n_hidden=3, sandbox="process")


def test_max_constant_bounds_the_problems_and_the_teachers_mistakes():
    task = CodegenTask(seed=0, n_test_problems=64, max_constant=3, sandbox="process", sandbox_workers=1)
    try:
        fns = [e.meta["function"] for e in task.test_examples()] + [task.train_example(i).meta["function"] for i in range(200)]
        assert max(fn.k for fn in fns) == 3 and {fn.transform for fn in fns} >= {"add", "mul", "sq"}
        rng = random.Random(0)
        wrong = [teacher_function(fn, 1.0, rng, max_constant=3) for fn in fns]
        assert max(fn.k for fn in wrong) <= 3 and all(w != fn for w, fn in zip(wrong, fns))
        assert task.cache_key()["max_constant"] == 3
    finally:
        task.close()
    assert len(codegen.functions_up_to(9)) == len(FUNCTIONS) > len(codegen.functions_up_to(5))
    for bad in (1, 10):
        with pytest.raises(ConfigError, match="max_constant"):
            CodegenTask(max_constant=bad, sandbox="process")
