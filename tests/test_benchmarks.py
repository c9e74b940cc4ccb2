"""Benchmark tasks: loading from the shared JSONL files, line-level data errors, prompts, train order."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlreason.errors import ConfigError, DataError
from rlreason.tasks.benchmarks import (
    DEFAULT_PROMPT_TEMPLATE,
    BenchmarkTask,
    build_benchmark_task,
    load_sft_traces,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"reference data not found at {SHARED_DATA} (shared/ beside the repo)"
)
MATH500 = str(SHARED_DATA / "math500" / "test.jsonl")
GSM8K = {"train": str(SHARED_DATA / "gsm8k" / "train.jsonl"), "test": str(SHARED_DATA / "gsm8k" / "test.jsonl")}


def write_jsonl(path: Path, rows: list[object]) -> str:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GSM8K_ROW = {"question": "q", "answer": "#### 1"}
TRACE = {"problem": "a", "completion": "x"}


def math_rows(n: int) -> list[dict]:
    return [{"problem": f"What is {i}+1?", "solution": f"It is $\\boxed{{{i + 1}}}$."} for i in range(n)]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- the shared reference files -----------------------------------------------------------------


@pytest.fixture(scope="module")
def math500() -> BenchmarkTask:
    return BenchmarkTask("math500", data_files={"test": MATH500}, train_split=None)


@pytest.fixture(scope="module")
def gsm8k() -> BenchmarkTask:
    return BenchmarkTask("gsm8k", data_files=GSM8K)


@needs_data
def test_math500_loads_500_test_problems_and_has_no_train_split(math500: BenchmarkTask) -> None:
    examples = math500.test_examples()
    assert len(examples) == 500
    row = json.loads(Path(MATH500).read_text(encoding="utf-8").splitlines()[0])
    first = examples[0]
    assert first.prompt == row["problem"] + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert (first.answer, first.reference_solution, first.demonstration) == (row["answer"], row["solution"], None)
    with pytest.raises(ConfigError, match="has no train split") as error:
        math500.train_example(0)
    one_line(error)


@needs_data
def test_gsm8k_loads_7473_train_and_1319_test(gsm8k: BenchmarkTask) -> None:
    examples = gsm8k.test_examples()
    assert len(examples) == 1319 and len(gsm8k._train) == 7473
    janet = examples[0]
    assert janet.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert janet.answer == "18"
    assert janet.reference_solution == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n"
        "\\boxed{18}"
    )
    for example in examples:
        assert "<<" not in example.reference_solution
        assert example.reference_solution.endswith(f"\\boxed{{{example.answer}}}")
    assert gsm8k.score("She makes 9 * 2 = 18 dollars. \\boxed{18}", janet) == 1.0
    assert gsm8k.score("#### 18", janet) == 1.0
    assert gsm8k.score("\\boxed{19}", janet) == 0.0
    assert gsm8k.score(janet.reference_solution, janet) == 1.0


@needs_data
def test_reference_solutions_score_one(math500: BenchmarkTask, gsm8k: BenchmarkTask) -> None:
    for task in (math500, gsm8k):
        examples = task.test_examples()[:50]
        assert [task.score(e.reference_solution, e) for e in examples] == [1.0] * 50


@needs_data
def test_n_test_caps_the_test_split_in_file_order(gsm8k: BenchmarkTask) -> None:
    capped = BenchmarkTask("gsm8k", data_files=GSM8K, n_test=7)
    assert capped.test_examples() == gsm8k.test_examples()[:7]


@needs_data
def test_build_from_each_composed_config() -> None:
    from conftest import compose

    for name in ("math500", "math", "gsm8k"):
        cfg = compose(f"task={name}").task
        assert cfg.prompt_template == DEFAULT_PROMPT_TEMPLATE
        assert cfg.data_files == {}
    local = f"++task.data_files={{train: {GSM8K['train']}, test: {GSM8K['test']}}}"
    cfg = compose("task=gsm8k", "debug=true", local).task
    task = build_benchmark_task(cfg)
    assert task.name == "gsm8k" and len(task.test_examples()) == 16
    cfg = compose("task=math500", f"+task.data_files.test={MATH500}").task
    assert len(build_benchmark_task(cfg).test_examples()) == 500


# --- train stream -------------------------------------------------------------------------------


def test_train_stream_is_a_deterministic_reshuffle_per_epoch(tmp_path: Path) -> None:
    files = {
        "train": write_jsonl(tmp_path / "train.jsonl", math_rows(5)),
        "test": write_jsonl(tmp_path / "test.jsonl", math_rows(2)),
    }
    task = BenchmarkTask("math", data_files=files, seed=3)
    stream = [task.train_example(i).answer for i in range(15)]
    epochs = [stream[0:5], stream[5:10], stream[10:15]]
    assert all(sorted(epoch) == ["1", "2", "3", "4", "5"] for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) > 1
    again = BenchmarkTask("math", data_files=files, seed=3)
    assert [again.train_example(i).answer for i in reversed(range(15))] == stream[::-1]
    other_seed = BenchmarkTask("math", data_files=files, seed=4)
    assert [other_seed.train_example(i).answer for i in range(15)] != stream
    assert task.train_batch(5, 5) == [task.train_example(i) for i in range(5, 10)]


def test_math_answer_comes_from_the_last_boxed_when_there_is_no_answer_column(tmp_path: Path) -> None:
    rows = [{"problem": "p", "solution": "First $\\boxed{1}$, no: $\\boxed{\\frac{3}{4}}$."}]
    task = BenchmarkTask("math", data_files={"test": write_jsonl(tmp_path / "t.jsonl", rows)}, train_split=None)
    assert task.test_examples()[0].answer == r"\frac{3}{4}"


def test_gsm8k_train_missing_from_data_files_is_evaluation_only(tmp_path: Path) -> None:
    rows = [{"question": "q", "answer": "x <<1+1=2>>2\n#### 2"}]
    task = BenchmarkTask("gsm8k_local", data_files={"test": write_jsonl(tmp_path / "t.jsonl", rows)})
    assert task.test_examples()[0].reference_solution == "x 2\n\\boxed{2}"
    with pytest.raises(ConfigError, match="task.data_files has no 'train' entry") as error:
        task.train_example(0)
    one_line(error)


# --- data errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "expected"),
    [
        ("math", [*math_rows(2), "{not json"], "line 3: invalid JSON"),
        ("math", [math_rows(1)[0], {"problem": "p"}], "line 2: missing field 'solution'"),
        ("math", [[1, 2]], "line 1: expected a JSON object, got list"),
        ("math", [{"problem": "p", "solution": "no box"}], "line 1: no 'answer' field and no \\boxed{} answer"),
        ("math", [{"problem": "p", "solution": "s", "answer": 5}], "line 1: field 'answer' must be a string, got int"),
        ("math", [{"problem": "p", "solution": "s", "answer": " "}], "line 1: field 'answer' is empty"),
        ("gsm8k", [GSM8K_ROW] * 16 + [{"question": "q"}], "line 17: missing field 'answer'"),
        ("gsm8k", [{"question": "q", "answer": "it is 4"}], "line 1: field 'answer' has no final '#### <number>'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path: Path, name: str, rows: list, expected: str) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    with pytest.raises(DataError) as error:
        BenchmarkTask(name, data_files={"test": path}, train_split=None)
    assert one_line(error).startswith(f"{path} {expected}")


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [math_rows(1)[0], "", "  ", {"problem": "p"}])
    with pytest.raises(DataError, match="line 4: missing field 'solution'"):
        BenchmarkTask("math", data_files={"test": path}, train_split=None)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError) as error:
        BenchmarkTask("math", data_files={"test": missing}, train_split=None)
    assert one_line(error) == f"{missing}: no such file"
    for content in ("", "\n  \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text(content)
        with pytest.raises(DataError) as error:
            BenchmarkTask("math", data_files={"test": str(empty)}, train_split=None)
        assert one_line(error).startswith(f"{empty}: empty file")


def test_data_files_without_the_test_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task.data_files has no 'test' entry"):
        BenchmarkTask("math", data_files={"train": write_jsonl(tmp_path / "t.jsonl", math_rows(1))})


def test_missing_hub_dataset_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        BenchmarkTask("math500", dataset="rlreason-tests/no-such-dataset", train_split=None)
    assert time.monotonic() - start < 10
    message = one_line(error)
    assert "rlreason-tests/no-such-dataset" in message and "task.data_files" in message


def test_hub_configs_are_concatenated_and_rows_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    subjects = {"algebra": math_rows(2), "geometry": math_rows(3)}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: subjects[config])
    task = BenchmarkTask("math", dataset="EleutherAI/hendrycks_math", dataset_config="algebra, geometry")
    assert [e.answer for e in task.test_examples()] == ["1", "2", "1", "2", "3"]
    subjects["geometry"][1] = {"problem": "p", "solution": "unboxed"}
    with pytest.raises(DataError, match=r"hendrycks_math \(config geometry\) split train row 1: no 'answer'"):
        BenchmarkTask("math", dataset="EleutherAI/hendrycks_math", dataset_config="algebra,geometry")


# --- prompts ------------------------------------------------------------------------------------


def tiny_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


CHAT = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_wraps_the_formatted_prompt(tmp_path: Path) -> None:
    files = {"test": write_jsonl(tmp_path / "t.jsonl", math_rows(1))}
    task = BenchmarkTask("math", data_files=files, train_split=None, chat_template=True, tokenizer=tiny_tokenizer(CHAT))
    expected = DEFAULT_PROMPT_TEMPLATE.format(problem="What is 0+1?")
    assert task.test_examples()[0].prompt == f"<|user|>{expected}<|end|><|assistant|>"


def test_chat_template_errors(tmp_path: Path) -> None:
    files = {"test": write_jsonl(tmp_path / "t.jsonl", math_rows(1))}
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        BenchmarkTask("math", data_files=files, train_split=None, chat_template=True)
    with pytest.raises(ConfigError, match="tokenizer cannot apply one") as error:
        BenchmarkTask("math", data_files=files, train_split=None, chat_template=True, tokenizer=tiny_tokenizer(None))
    one_line(error)


def test_prompt_template(tmp_path: Path) -> None:
    files = {"test": write_jsonl(tmp_path / "t.jsonl", math_rows(1))}
    task = BenchmarkTask("math", data_files=files, train_split=None, prompt_template="Q: {problem}\nA: {{")
    assert task.test_examples()[0].prompt == "Q: What is 0+1?\nA: {"
    for bad in ("no field", "{problem} {answer}", "{problem} {"):
        with pytest.raises(ConfigError, match="prompt_template"):
            BenchmarkTask("math", data_files=files, train_split=None, prompt_template=bad)


def test_factory_reads_any_object_with_task_config_fields(tmp_path: Path) -> None:
    cfg = SimpleNamespace(
        name="math",
        seed=0,
        n_test=1,
        dataset=None,
        dataset_config=None,
        train_split="train",
        test_split="test",
        data_files={
            "train": write_jsonl(tmp_path / "train.jsonl", math_rows(3)),
            "test": write_jsonl(tmp_path / "test.jsonl", math_rows(2)),
        },
        prompt_template="{problem}",
        chat_template=False,
        verify_timeout_s=1.0,
    )
    task = build_benchmark_task(cfg)
    assert [e.prompt for e in task.test_examples()] == ["What is 0+1?"]
    cfg.data_files, cfg.dataset = {}, None
    with pytest.raises(ConfigError, match="task.dataset"):
        build_benchmark_task(cfg)


# --- SFT traces ---------------------------------------------------------------------------------


def test_sft_traces_become_demonstrations(tmp_path: Path) -> None:
    traces = write_jsonl(tmp_path / "traces.jsonl", [{"problem": "What is 1+1?", "completion": "1+1=2, \\boxed{2}"}])
    demonstrations = load_sft_traces(traces)
    assert demonstrations == {"What is 1+1?": "1+1=2, \\boxed{2}"}
    files = {"test": write_jsonl(tmp_path / "t.jsonl", math_rows(2))}
    task = BenchmarkTask("math", data_files=files, train_split=None, demonstrations=demonstrations)
    without, with_trace = task.test_examples()
    assert task.sft_target(without, "reference") == "It is $\\boxed{1}$."
    assert task.sft_target(with_trace, "teacher") == "1+1=2, \\boxed{2}"
    with pytest.raises(ConfigError, match="has no demonstration for"):
        task.sft_target(without, "teacher")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([TRACE, {"problem": "b"}], "line 2: missing field 'completion'"),
        ([TRACE, {"problem": "a", "completion": "y"}], "line 2: duplicate problem (first at line 1)"),
        (["oops"], "line 1: invalid JSON"),
    ],
)
def test_sft_trace_errors(tmp_path: Path, rows: list, expected: str) -> None:
    path = write_jsonl(tmp_path / "traces.jsonl", rows)
    with pytest.raises(DataError) as error:
        load_sft_traces(path)
    assert one_line(error).startswith(f"{path} {expected}")
