"""Parts of one's own, with no edit of the package: a loss aggregation, an advantage estimator and a
task from tests/plugins/my_parts.py (put on PYTHONPATH), the task's YAML in a temporary config
directory (``--config-dir``), trained by ``python train.py`` as a user would.

One debug run uses all three parts; each test checks from the run's own outputs (metrics.jsonl,
summary.json, the cached base model) and the evidence the parts append to ``$MY_PARTS_LOG`` that
its part computed what the trainer logged, and that a built-in would have logged something else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, ROOT
from rlreason.advantages import grpo
from rlreason.config import with_typed_tasks
from rlreason.metrics import read_metrics
from rlreason.tasks import build_task

PLUGINS = ROOT / "tests" / "plugins"  # the user's module, on PYTHONPATH for train.py
sys.path.insert(0, str(PLUGINS))  # and here: the tests build the user's task too
import my_parts  # noqa: E402

# The user's task YAML, in their own config directory (task/reverse.yaml); every field commented.
REVERSE_YAML = """\
# Reverse a short string (tests/plugins/my_parts.py): one point per letter in its place, correct only if exact.
# The Task class, an import path into the user's own module.
_target_: my_parts.ReverseTask
# Task name (run folders, tags, summary.json).
name: reverse
# Seed of the string generator (train stream and test split).
seed: 0
# Evaluate on only the first n test problems (null: all of them).
n_test: null
# Completion budget in tokens (the answer has `length` letters).
max_completion_tokens: 6
# The letters the strings are made of.
letters: abcd
# Letters per string.
length: 3
# Size of the held-out split.
n_test_problems: 24
# Probability that the teacher writes a wrong letter at each position of its demonstration.
teacher_noise: 0.3
"""

PARTS = ("task=reverse", "algorithm.advantage=my_parts.sign_advantage", "algorithm.loss_agg=my_parts.SqrtLengthNorm")
ROWS_PER_STEP = 16  # debug: 4 prompts x 4 samples


def config_dir(root: Path, tasks: dict[str, str]) -> Path:
    for name, text in tasks.items():
        (root / "task").mkdir(parents=True, exist_ok=True)
        (root / "task" / f"{name}.yaml").write_text(text)
    return root


def train_py(conf: Path, run_dir: Path, log: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MY_PARTS_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGINS), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "train.py", "--config-dir", str(conf), *overrides, "debug=true", "logger=none", "threads=1",
         "logger.progress=false", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )


def evidence(log: Path, part: str) -> list[dict]:
    return [row for row in map(json.loads, log.read_text().splitlines()) if row["part"] == part]


def by_step(records: list[dict], rows_per_step: list[int], rows_of) -> list[list[dict]]:
    """Consecutive records grouped into steps holding ``rows_per_step[i]`` rows each."""
    steps, position = [], 0
    for want in rows_per_step:
        group, have = [], 0
        while have < want:
            assert position < len(records), f"records for {sum(rows_per_step)} rows expected, {len(records)} records found"
            group.append(records[position])
            have += rows_of(records[position])
            position += 1
        assert have == want, (have, want)
        steps.append(group)
    assert position == len(records), "records left over after the last step"
    return steps


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("plugins")
    log = root / "parts.jsonl"
    proc = train_py(config_dir(root / "conf", {"reverse": REVERSE_YAML}), root / "run", log, *PARTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = root / "run"
    return {
        "dir": run_dir,
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "train": read_metrics(run_dir, "train"),
        "eval": read_metrics(run_dir, "eval"),
        "log": log,
    }


@pytest.mark.slow
def test_a_task_from_the_users_module_trains_with_its_alphabet_rewards_and_is_correct(plugin_run):
    summary, log = plugin_run["summary"], plugin_run["log"]
    assert summary["status"] == "completed" and summary["task"] == "reverse" and summary["steps"] == 4
    config = OmegaConf.load(plugin_run["dir"] / "config.yaml")
    assert config.task._target_ == "my_parts.ReverseTask" and config.task.letters == "abcd"

    # The embedded model was warm-started for this task: its key and its character vocabulary are the task's.
    task = my_parts.ReverseTask(letters="abcd", length=3, seed=0, n_test_problems=24, teacher_noise=0.3)
    bases = [json.loads(p.read_text()) for p in Path(config.cache_dir).glob("base-*/rlreason_base.json")]
    ours = [b for b in bases if b["task"] == {**task.cache_key(), "alphabet": "abcd>"}]
    assert len(ours) == 1, [b["task"] for b in bases]
    tokenizer = next(p.parent for p in Path(config.cache_dir).glob("base-*/rlreason_base.json")
                     if json.loads(p.read_text()) == ours[0]) / "tokenizer.json"
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    assert set("abcd>") <= set(vocab) and len(vocab) == len("abcd>") + 2, vocab  # + pad and eos

    graded = evidence(log, "task")
    evals = [g for g in graded if g["split"] == ["test"]]
    trains = [g for g in graded if g["split"] == ["train"]]
    assert len(evals) + len(trains) == len(graded), "a grade call mixed train and test examples"
    # Evaluation: greedy then sampled at each eval step, accuracy through the task's is_correct.
    rows = plugin_run["eval"]
    assert len(evals) == 2 * len(rows) and all(len(g["correct"]) == 24 for g in evals)
    for row, greedy, sampled in zip(rows, evals[0::2], evals[1::2]):
        assert row["eval/greedy_acc"] == pytest.approx(sum(greedy["correct"]) / 24)
        assert row["eval/sampled_acc"] == pytest.approx(sum(sampled["correct"]) / 24)
    assert summary["base/greedy_acc"] == rows[0]["eval/greedy_acc"]
    # reward >= 1 would have counted other completions as correct: the check above tells them apart.
    rewards = [r for g in graded for r in g["rewards"]]
    assert sum(r >= 1 for r in rewards) != sum(c for g in graded for c in g["correct"])
    assert set(rewards) - {0.0, 1.0}, "the task's float rewards (0 to 3 points) should not all be 0/1"
    # Training: the trainer's reward and accuracy are the task's, step by step.
    steps = by_step(trains, [ROWS_PER_STEP] * len(plugin_run["train"]), lambda g: len(g["rewards"]))
    for row, calls in zip(plugin_run["train"], steps):
        step_rewards = [r for g in calls for r in g["rewards"]]
        step_correct = [c for g in calls for c in g["correct"]]
        assert row["reward/mean"] == pytest.approx(sum(step_rewards) / ROWS_PER_STEP)
        assert row["train/accuracy"] == pytest.approx(sum(step_correct) / ROWS_PER_STEP)


@pytest.mark.slow
def test_an_advantage_from_the_users_module_gives_the_steps_advantages(plugin_run):
    calls = evidence(plugin_run["log"], "advantage")
    trains = [g for g in evidence(plugin_run["log"], "task") if g["split"] == ["train"]]
    # It was given the task's rewards, laid out group by group, and its values are what the step used.
    assert [r for c in calls for r in c["rewards"]] == [r for g in trains for r in g["rewards"]]
    assert all(c["group_size"] == 4 for c in calls)
    steps = by_step(calls, [ROWS_PER_STEP] * len(plugin_run["train"]), lambda c: len(c["advantages"]))
    differs_from_grpo = False
    for row, step_calls in zip(plugin_run["train"], steps):
        advantages = torch.tensor([a for c in step_calls for a in c["advantages"]])
        rewards = torch.tensor([r for c in step_calls for r in c["rewards"]])
        assert set(advantages.tolist()) <= {-1.0, 0.0, 1.0}
        assert row["filter/mean_abs_adv"] == pytest.approx(float(advantages.abs().mean()))
        # filter=on drops |advantage| <= 0.1: exactly the rows at their group's mean.
        assert row["filter/kept_frac"] == pytest.approx(float((advantages != 0).float().mean()))
        built_in = float(grpo(rewards, 4).abs().mean())
        differs_from_grpo |= abs(built_in - row["filter/mean_abs_adv"]) > 1e-3
    assert differs_from_grpo, "the default (grpo) would have logged the same mean |advantage|"


@pytest.mark.slow
def test_a_loss_aggregation_from_the_users_module_is_the_loss_the_trainer_backpropagates(plugin_run):
    records = evidence(plugin_run["log"], "loss")
    train = plugin_run["train"]
    kept = [round(row["filter/kept_frac"] * ROWS_PER_STEP) for row in train]
    assert sum(kept) > 0, "every row was filtered: no loss to check"
    steps = by_step(records, kept, lambda r: r["rows"])
    differs_from_default = False
    for row, micro_batches in zip(train, steps):
        loss = sum(r["loss"] for r in micro_batches)
        default = sum(r["default_loss"] for r in micro_batches)
        assert row["train/loss"] == pytest.approx(loss, abs=1e-6)
        differs_from_default |= abs(default - loss) > 1e-3
    assert differs_from_default, "the default aggregation would have given the same loss"


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("my_partz.ReverseTask", "task._target_='my_partz.ReverseTask': cannot import module 'my_partz'"),
        ("my_parts.NotATask", "task._target_='my_parts.NotATask' is not a subclass of rlreason.tasks.Task"),
    ],
    ids=["module-does-not-import", "not-a-task"],
)
def test_a_bad_target_in_the_users_task_yaml_is_one_line(tmp_path, target, fragment):
    conf = config_dir(tmp_path / "conf", {"mine": REVERSE_YAML.replace("my_parts.ReverseTask", target)})
    proc = train_py(conf, tmp_path / "run", tmp_path / "parts.jsonl", "task=mine")
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert proc.returncode == 2
    assert not (tmp_path / "parts.jsonl").exists(), "nothing should have been graded"



def compose_with(conf: Path, *overrides: str):
    """The config train.py composes with the user's directory on the search path (``hydra.searchpath``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"hydra.searchpath=[file://{conf}]", *overrides])


def test_the_users_task_yaml_is_found_through_hydra_searchpath(tmp_path):
    conf = config_dir(tmp_path / "conf", {"reverse": REVERSE_YAML})
    cfg = with_typed_tasks(compose_with(conf, "task=reverse", "task.length=4"))
    task = build_task(cfg.task)
    assert isinstance(task, my_parts.ReverseTask) and task.name == "reverse"
    assert task.length == 4 and len(task.test_examples()) == 24
    assert task.test_examples()[0].prompt.endswith(">") and len(task.test_examples()[0].answer) == 4


def test_a_class_missing_from_the_users_module_is_one_line(tmp_path):
    from rlreason.errors import ConfigError

    conf = config_dir(tmp_path / "conf", {"mine": REVERSE_YAML.replace("my_parts.ReverseTask", "my_parts.ReverseTsk")})
    with pytest.raises(ConfigError) as error:
        with_typed_tasks(compose_with(conf, "task=mine"))
    assert str(error.value) == "task._target_='my_parts.ReverseTsk': module 'my_parts' has no 'ReverseTsk'"


def test_debug_values_in_a_task_yaml_reach_the_task(tmp_path):
    conf = config_dir(tmp_path / "conf", {"reverse": REVERSE_YAML.replace("n_test_problems: 24", "n_test_problems: ${debug:30,12}")})
    cfg = with_typed_tasks(compose_with(conf, "task=reverse", "debug=true"))
    assert cfg.task.n_test_problems == 12
    assert len(build_task(cfg.task).test_examples()) == 12
