"""Every config combination composes and validates; bad values fail with one clear line."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import CONF, ROOT, compose
from rlreason.config import validate
from rlreason.errors import ConfigError

GROUPS = {name: sorted(p.stem for p in (CONF / name).glob("*.yaml")) for name in
          ("algorithm", "kl", "filter", "task", "model", "sampler", "logger")}


def test_every_ablation_combination_composes_and_validates():
    for algorithm, kl, filt in itertools.product(GROUPS["algorithm"], GROUPS["kl"], GROUPS["filter"]):
        for debug in ("false", "true"):
            cfg = compose(f"algorithm={algorithm}", f"kl={kl}", f"filter={filt}", f"debug={debug}")
            if filt == "dynamic" and cfg.algorithm.schedule not in ("preemptive", "ppo"):
                with pytest.raises(ConfigError, match="dynamic"):  # SFT samples nothing; GRPO updates as it samples
                    validate(cfg)
                continue
            validate(cfg)
            OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
            assert cfg.algorithm.name == algorithm and cfg.kl.name == kl and cfg.filter.name == filt


@pytest.mark.parametrize("group", ["task", "model", "sampler", "logger"])
def test_every_option_of_the_swappable_groups_composes(group):
    for option in GROUPS[group]:
        cfg = compose(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg[group].name == option


def test_default_is_the_papers_recommendation():
    cfg = compose()
    assert (cfg.algorithm.name, cfg.kl.name, cfg.filter.name) == ("dash", "off", "on")
    assert cfg.kl.beta == 0.0 and cfg.filter.enabled and cfg.algorithm.schedule == "preemptive"


def test_debug_shrinks_but_explicit_overrides_win():
    assert compose("debug=true").trainer.steps < compose().trainer.steps
    assert compose("debug=true", "trainer.steps=7").trainer.steps == 7


def test_kl_on_uses_the_papers_beta():
    assert compose("kl=on").kl.beta == pytest.approx(0.04)


def test_every_yaml_field_is_documented():
    """A comment above (or beside) every key: the configs are the documentation of every knob."""
    undocumented = []
    for path in sorted(CONF.rglob("*.yaml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^\s*[A-Za-z_][\w.]*:", line) or "#" in line.split(":", 1)[1]:
                continue
            previous = next((l for l in reversed(lines[:i]) if l.strip()), "")
            if not previous.strip().startswith("#") and not line.strip().endswith(":"):
                undocumented.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert not undocumented, "fields without a comment:\n" + "\n".join(undocumented)


def test_unknown_key_and_wrong_type_fail_at_composition():
    with pytest.raises(ConfigCompositionException, match="trainer.stepz"):
        compose("trainer.stepz=3")
    with pytest.raises(ConfigCompositionException, match="trainer.steps") as info:
        compose("trainer.steps=many")
    assert isinstance(info.value.__cause__, ValidationError)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["algorithm=grpo", "trainer.group_size=1"], "trainer.group_size=1"),
        (["trainer.micro_batch_size=1000"], "larger than the batch"),
        (["optim.lr=-1e-4"], "optim.lr=-0.0001 must be > 0"),
        (["algorithm=grpo", "trainer.group_size=3", "trainer.micro_batch_size=8"], "multiple of trainer.group_size"),
        (["algorithm=grpo", "algorithm.ppo_epochs=2"], "algorithm.ppo_epochs=2 needs algorithm.schedule=ppo, not interleaved"),
        (["algorithm=dash", "algorithm.mini_batch_size=8"], "algorithm.mini_batch_size=8 needs algorithm.schedule=ppo"),
        (["algorithm.schedule=preemptiv"], "algorithm.schedule='preemptiv' is not one of sft, interleaved, preemptive, ppo"),
        (["algorithm.schedule=collections.OrderedDict"], "is not a subclass of rlreason.schedules.Schedule"),
        (["optim.schedule=exponential"], "optim.schedule"),
        (["algorithm.mini_batch_size=0"], "algorithm.mini_batch_size"),
    ],
)
def test_impossible_combinations_raise_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        validate(compose(*overrides))
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_train_py_reports_a_bad_value_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "optim.lr=-1", "logger=none", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if l.strip()]
    assert errors == ["error: optim.lr=-1.0 must be > 0"], proc.stderr


def test_runs_are_named_by_their_arm_and_sft_runs_by_their_data():
    """The folder and W&B group: SFT-H, SFT-M and the teacher baseline never share one."""
    from rlreason.metrics import run_group

    def run_dir(*overrides: str) -> str:
        return str(compose(*overrides, with_hydra=True).hydra.run.dir).split("/")[2]  # outputs/<task>/<arm>/<time>

    cases = {
        (): "dash-kl_off-filter_on",
        ("algorithm=grpo", "kl=on", "filter=off"): "grpo-kl_on-filter_off",
        ("algorithm=sft",): "sft-teacher",
        ("arm=sft_reference",): "sft-reference",
        ("algorithm=sft", "sft.source=/data/qwen-7b_traces.jsonl"): "sft-qwen-7b_traces",
    }
    for overrides, name in cases.items():
        assert run_group(compose(*overrides)) == name
        assert run_dir(*overrides) == name


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["algorithm.loss_agg=foo"], "algorithm.loss_agg='foo' is not one of seq_mean_token_mean, token_mean"),
        (["algorithm.advantage=foo"], "algorithm.advantage='foo' is not one of grpo, mean_only, rloo, batch_std"),
        (["algorithm.ratio_level=foo"], "algorithm.ratio_level='foo' must be one of token, sequence"),
        (["algorithm.advantage=no_such_module.fn"], "cannot import module 'no_such_module'"),
        (["task._target_=rlreason.tasks.base.Example"], "is not a subclass of rlreason.tasks.Task"),
        (["task._target_=rlreason.tasks.base.Task"], "does not implement"),
        (["+task.no_such_field=1"], "task.no_such_field"),
        (["algorithm=sft", "filter=dynamic"], "filter=dynamic (dynamic sampling) needs an RL schedule, not algorithm.schedule=sft"),
        (["algorithm=grpo", "filter=dynamic"], "filter=dynamic (dynamic sampling) needs algorithm.schedule=preemptive or ppo"),
        (["algorithm=sft", "algorithm.ratio_level=sequence"], "algorithm.ratio_level='sequence' needs an RL schedule"),
        # A part of the wrong kind fails here, not inside the first step.
        (["algorithm.loss_agg=collections.OrderedDict"], "is not a subclass of rlreason.loss_agg.LossAggregation"),
        (["algorithm.loss_agg=rlreason.loss_agg.LossAggregation"], "does not implement denominator, numerator"),
        (["algorithm.advantage=collections.OrderedDict"], "algorithm.advantage='collections.OrderedDict' is not a function"),
        (["algorithm.advantage=math.pi"], "is not a function"),
        (["algorithm=dapo", "algorithm.overlong_buffer=64"],
         "algorithm.overlong_buffer=64 must be below sampler.max_new_tokens=64 with algorithm.truncated=soft_penalty"),
    ],
)
def test_bad_parts_fail_at_start_up_in_one_line(overrides, fragment):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("arm", sorted(p.stem for p in (CONF / "arm").glob("*.yaml")))
def test_every_named_arm_composes_validates_and_sets_its_algorithm(arm):
    """An arm file sets several axes at once; it must compose at the global level (a missing
    `# @package _global_` makes its overrides fail) and name the algorithm it overrides."""
    text = (CONF / "arm" / f"{arm}.yaml").read_text()
    assert text.startswith("# @package _global_"), arm
    cfg = compose(f"arm={arm}")
    validate(cfg)
    assert f"override /algorithm: {cfg.algorithm.name}" in text


def test_resume_takes_an_option_added_since_the_run_at_its_default():
    from rlreason.config import resume_conflicts

    current = compose()
    saved = OmegaConf.create(OmegaConf.to_container(current, resolve=True))
    del saved.model["lora"]  # the run started before model.lora existed
    assert resume_conflicts(saved, current) == []
    changed = compose("model.lora.rank=8")
    assert resume_conflicts(saved, changed) == ["model.lora.rank=8 here, 0 in the run"]
    saved.optim.lr = 1.0  # a setting the run did have still counts
    assert any(line.startswith("optim.lr=") for line in resume_conflicts(saved, current))
