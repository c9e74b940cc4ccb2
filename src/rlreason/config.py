"""Typed config schema, registered with Hydra's ConfigStore.

The YAML files under ``conf/`` fill these dataclasses, so an unknown key or a wrong type fails
at composition with the field's name. ``validate`` adds the checks that span several fields.
Every field is documented in its YAML file (the configs are the documentation of every knob).

The ``debug`` resolver: ``${debug:300,4}`` reads 300 normally and 4 under ``debug=true``. A
command-line override of the field still wins, because it replaces the interpolation.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlreason.errors import ConfigError, ModelError
from rlreason.registry import check_subclass, resolve


def _debug_resolver(normal: Any, debug_value: Any, *, _root_: DictConfig) -> Any:
    return debug_value if _root_.get("debug", False) else normal


if not OmegaConf.has_resolver("debug"):
    OmegaConf.register_new_resolver("debug", _debug_resolver)


def arm_label(algorithm: str, kl: str, filter_: str, sft_source: str) -> str:
    """The arm a run belongs to, for its folder and W&B group: the RL axes, or SFT's data (SFT has no
    KL or filter), so SFT-H, SFT-M and the teacher baseline never share a folder or a group."""
    if algorithm == "sft":
        return f"sft-{Path(str(sft_source)).stem}"
    return f"{algorithm}-kl_{kl}-filter_{filter_}"


if not OmegaConf.has_resolver("arm_label"):
    OmegaConf.register_new_resolver("arm_label", arm_label)


@dataclass
class AlgorithmConfig:
    name: str = MISSING
    schedule: str = "preemptive"
    generation_batch_size: Optional[int] = None
    ppo_epochs: int = 1
    mini_batch_size: Optional[int] = None
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    advantage: str = "grpo"
    advantage_eps: float = 1e-4
    loss_agg: str = "seq_mean_token_mean"
    ratio_level: str = "token"
    truncated: str = "score"
    overlong_buffer: int = 16
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0


@dataclass
class KLConfig:
    name: str = MISSING
    beta: float = 0.0


@dataclass
class FilterConfig:
    name: str = MISSING
    enabled: bool = False
    threshold: float = 0.1
    dynamic: bool = False
    max_resample_rounds: int = 4


@dataclass
class WarmStartConfig:
    enabled: bool = True
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3


# The linear layers of a Qwen2 block (the embedded model's and Qwen2.5's names).
QWEN2_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    rank: int = 0  # adapter rank r; 0: no LoRA, the whole model trains
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: list[str] = field(default_factory=lambda: list(QWEN2_LINEAR_LAYERS))  # module names to adapt


@dataclass
class ModelConfig:
    name: str = MISSING
    name_or_path: Optional[str] = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = "sdpa"
    # built from config (name_or_path null)
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 128
    vocab_size: Optional[int] = None
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # LoRA adapters (peft); rank 0: off


@dataclass
class SamplerConfig:
    _target_: str = MISSING
    name: str = MISSING
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    # vLLM only
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    gpu_memory_utilization: float = 0.3
    enable_sleep_mode: bool = False
    cpu_kvcache_space_gib: int = 2


@dataclass
class LoggerConfig:
    name: str = MISSING
    wandb: bool = False
    project: str = "rlreason"
    entity: Optional[str] = None
    mode: str = "auto"
    init_timeout_s: float = 60.0
    log_completions: int = 8
    progress: bool = True


@dataclass
class TrainerConfig:
    steps: int = 150
    prompts_per_step: int = 16
    group_size: int = 8
    micro_batch_size: int = 8
    max_nonfinite_steps: int = 5
    max_train_seconds: Optional[float] = None


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "constant"
    max_grad_norm: float = 1.0


@dataclass
class SFTConfig:
    source: str = "teacher"


@dataclass
class EvalConfig:
    every: int = 25
    at_start: bool = True
    greedy: bool = True
    sampled: bool = True
    batch_size: int = 256
    samples_per_problem: int = 1
    pass_k: list[int] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)  # each checked against its class's Config in validate


@dataclass
class CheckpointConfig:
    every: int = 0
    keep: int = 2
    save_final: bool = True
    merged_export: bool = False  # at the end, also write run_dir/merged: a full model (LoRA merged into the base)


@dataclass
class Config:
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    task: Any = field(default_factory=dict)  # checked against its class's Config in validate (tasks are parts)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    debug: bool = False
    threads: int = 0
    cache_dir: str = ".cache/rlreason"
    resume: bool = False
    tags: list[str] = field(default_factory=list)


def register_configs() -> None:
    """Make the schema the base of ``conf/config.yaml`` (its defaults list names ``schema``)."""
    ConfigStore.instance().store(name="schema", node=Config)


register_configs()

DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("constant", "linear", "cosine")
LOGGER_MODES = ("auto", "online", "offline", "disabled")
# Built-in parts by short name (rlreason.registry); a value with a dot is the import path of one's own.
ADVANTAGES = {
    "grpo": "rlreason.advantages.grpo",
    "mean_only": "rlreason.advantages.mean_only",
    "rloo": "rlreason.advantages.rloo",
    "batch_std": "rlreason.advantages.batch_std",
}
LOSS_AGGS = {
    "seq_mean_token_mean": "rlreason.loss_agg.SeqMeanTokenMean",
    "token_mean": "rlreason.loss_agg.TokenMean",
    "seq_mean_token_sum_norm": "rlreason.loss_agg.SeqMeanTokenSumNorm",
    "paper": "rlreason.loss_agg.PaperLoss",
}
RATIO_LEVELS = ("token", "sequence")
TRUNCATED = ("score", "mask", "soft_penalty")
ROLLOUT_CORRECTIONS = ("none", "tis", "mis")


def with_typed_tasks(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose task nodes (``task`` and each ``eval.tasks`` entry) are checked
    against their class's ``Config`` and completed with its defaults (one line for a bad key)."""
    from rlreason.tasks import typed_task_config

    out = copy.deepcopy(cfg)
    out.task = typed_task_config(cfg.task, "task")
    for name in list(cfg.eval.tasks.keys()):
        out.eval.tasks[name] = typed_task_config(cfg.eval.tasks[name], f"eval.tasks.{name}")
    return out


def unknown_keys(cfg: DictConfig, schema: type = Config, prefix: str = "") -> list[str]:
    """Keys the schema does not have. Hydra's ``+key=value`` adds them even to a typed config,
    where nothing would read them: a typo must not be ignored silently."""
    by_name = {f.name: f for f in fields(schema)}
    found = []
    for key in cfg.keys():
        spec = by_name.get(str(key))
        if spec is None:
            found.append(f"{prefix}{key}")
        elif is_dataclass(spec.default_factory) and isinstance(cfg[key], DictConfig):
            found += unknown_keys(cfg[key], spec.default_factory, f"{prefix}{key}.")
    return found


def resolve_model_path(path: str) -> str:
    """A local directory (``~`` expanded) or a hub id ("org/name"); a local-looking path that is
    missing is an error. Here rather than in modeling, so ``validate`` can check it before torch loads."""
    path = os.path.expanduser(str(path))
    looks_local = path.startswith((".", "/")) or path.count("/") != 1
    if looks_local and not Path(path).exists():
        raise ModelError(f"model path {path!r} does not exist (model.name_or_path: a local folder or a hub id org/name)")
    return path


# What makes a run the run it is: a resume must keep these as they were (the number of steps,
# batch splits, the sampler backend, logging, evaluation and checkpointing may change).
RUN_IDENTITY = ("algorithm", "kl", "filter", "task", "model", "optim", "sft", "seed", "trainer.prompts_per_step",
                "trainer.group_size")


def resume_conflicts(saved: DictConfig, current: DictConfig) -> list[str]:
    """Settings in RUN_IDENTITY where ``current`` differs from the run's ``saved`` config, one line each.

    A field the saved config lacks did not exist when the run started: it counts at its schema
    default, so a run started before a new option was added can still be resumed (or skipped as
    finished) while the option keeps its default."""
    old, new = (_leaves(OmegaConf.to_container(c, resolve=True)) for c in (saved, current))
    defaults = _leaves(OmegaConf.to_container(OmegaConf.structured(Config), throw_on_missing=False))
    for key in new.keys() - old.keys():
        if key in defaults and defaults[key] != "???":
            old[key] = defaults[key]
    keys = sorted(k for k in old.keys() | new.keys() if any(k == p or k.startswith(p + ".") for p in RUN_IDENTITY))
    return [f"{k}={new.get(k)!r} here, {old.get(k)!r} in the run" for k in keys if old.get(k) != new.get(k)]


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of nested dicts."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_parts(a: Any) -> None:
    """``algorithm.loss_agg`` and ``algorithm.advantage`` name a built-in, or import to a part of the
    right kind, so a wrong one fails at start-up in one line rather than inside the first step."""
    from rlreason.loss_agg import LossAggregation  # torch: not needed to compose a config

    if a.loss_agg not in LOSS_AGGS:
        check_subclass(resolve(a.loss_agg, LOSS_AGGS, "algorithm.loss_agg"), LossAggregation, "algorithm.loss_agg", a.loss_agg)
    if a.advantage not in ADVANTAGES:
        estimator = resolve(a.advantage, ADVANTAGES, "algorithm.advantage")
        if not callable(estimator) or isinstance(estimator, type):
            raise ConfigError(f"algorithm.advantage={a.advantage!r} is not a function (rewards, group_size, eps) -> advantages")


def validate(cfg: DictConfig, world_size: int = 1) -> None:
    """Checks that span several fields (and the process count under ``accelerate launch``).
    Raises ConfigError with one line naming the fields."""
    a, t, o = cfg.algorithm, cfg.trainer, cfg.optim
    rows = t.prompts_per_step * t.group_size

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    cfg = with_typed_tasks(cfg)
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:  # e.g. an interpolation to a key that does not exist
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    unknown = unknown_keys(cfg)
    need(not unknown, f"unknown config key(s): {', '.join(unknown)} (not in the schema, src/rlreason/config.py)")

    need(t.steps >= 0, f"trainer.steps={t.steps} must be >= 0")
    need(t.prompts_per_step >= 1, f"trainer.prompts_per_step={t.prompts_per_step} must be >= 1")
    need(t.group_size >= 1, f"trainer.group_size={t.group_size} must be >= 1")
    need(
        t.prompts_per_step % world_size == 0,
        f"trainer.prompts_per_step={t.prompts_per_step} must be a multiple of the number of processes ({world_size}): "
        "each process samples whole groups",
    )
    need(
        t.max_train_seconds is None or t.max_train_seconds > 0,
        f"trainer.max_train_seconds={t.max_train_seconds} must be > 0 (or null: no budget)",
    )
    need(t.micro_batch_size >= 1, f"trainer.micro_batch_size={t.micro_batch_size} must be >= 1")
    need(t.max_nonfinite_steps >= 1, f"trainer.max_nonfinite_steps={t.max_nonfinite_steps} must be >= 1")
    need(
        t.micro_batch_size <= rows,
        f"trainer.micro_batch_size={t.micro_batch_size} is larger than the batch "
        f"(prompts_per_step*group_size={rows})",
    )
    e = cfg.eval
    need(e.samples_per_problem >= 1, f"eval.samples_per_problem={e.samples_per_problem} must be >= 1")
    for k in e.pass_k:
        need(1 <= k <= e.samples_per_problem,
             f"eval.pass_k has k={k}: k must be between 1 and eval.samples_per_problem={e.samples_per_problem}")
    need(o.lr > 0, f"optim.lr={o.lr} must be > 0")
    need(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r} must be one of {', '.join(SCHEDULES)}")
    need(o.max_grad_norm > 0, f"optim.max_grad_norm={o.max_grad_norm} must be > 0")
    need(cfg.model.dtype in DTYPES, f"model.dtype={cfg.model.dtype!r} must be one of {', '.join(DTYPES)}")
    need(cfg.logger.mode in LOGGER_MODES, f"logger.mode={cfg.logger.mode!r} must be one of {', '.join(LOGGER_MODES)}")
    need(cfg.logger.init_timeout_s > 0, f"logger.init_timeout_s={cfg.logger.init_timeout_s} must be > 0")
    if cfg.model.name_or_path:
        resolve_model_path(cfg.model.name_or_path)  # here, so a typo fails before the slow imports
    lora = cfg.model.lora
    need(lora.rank >= 0, f"model.lora.rank={lora.rank} must be >= 0 (0: no LoRA)")
    need(lora.alpha > 0, f"model.lora.alpha={lora.alpha} must be > 0")
    need(0 <= lora.dropout < 1, f"model.lora.dropout={lora.dropout} must be in [0, 1)")
    need(cfg.kl.beta >= 0, f"kl.beta={cfg.kl.beta} must be >= 0")
    need(cfg.filter.threshold >= 0, f"filter.threshold={cfg.filter.threshold} must be >= 0")
    need(cfg.sampler.temperature > 0, f"sampler.temperature={cfg.sampler.temperature} must be > 0")
    need(cfg.sampler.max_new_tokens >= 1, f"sampler.max_new_tokens={cfg.sampler.max_new_tokens} must be >= 1")
    check_parts(a)
    for value, choices, name in ((a.ratio_level, RATIO_LEVELS, "ratio_level"), (a.truncated, TRUNCATED, "truncated"),
                                 (a.rollout_correction, ROLLOUT_CORRECTIONS, "rollout_correction")):
        need(value in choices, f"algorithm.{name}={value!r} must be one of {', '.join(choices)}")
    need(a.rollout_correction_cap > 0, f"algorithm.rollout_correction_cap={a.rollout_correction_cap} must be > 0")
    need(a.overlong_buffer >= 0, f"algorithm.overlong_buffer={a.overlong_buffer} must be >= 0")
    need(a.truncated != "soft_penalty" or a.overlong_buffer < cfg.sampler.max_new_tokens,
         f"algorithm.overlong_buffer={a.overlong_buffer} must be below sampler.max_new_tokens={cfg.sampler.max_new_tokens} "
         "with algorithm.truncated=soft_penalty (the penalty starts overlong_buffer tokens before the limit)")
    need(cfg.filter.max_resample_rounds >= 0, f"filter.max_resample_rounds={cfg.filter.max_resample_rounds} must be >= 0")
    from rlreason.schedules import schedule_class  # torch and the learner: not needed to compose a config

    schedule = schedule_class(a.schedule)
    schedule.check(cfg)  # what the schedule itself reads (rlreason.schedules): one place per schedule
    if not schedule.rl:
        return
    need(not (cfg.filter.dynamic and cfg.filter.enabled),
         "filter.dynamic and filter.enabled are two selectors: choose filter=dynamic or filter=on")
    need(
        t.group_size >= 2,
        f"trainer.group_size={t.group_size}: {a.name} needs at least 2 samples per prompt "
        "(the advantage is the reward minus its group mean)",
    )
    need(0 <= a.clip_eps_low < 1, f"algorithm.clip_eps_low={a.clip_eps_low} must be in [0, 1)")
    need(a.clip_eps_high >= 0, f"algorithm.clip_eps_high={a.clip_eps_high} must be >= 0")
    if a.generation_batch_size is not None:
        need(a.generation_batch_size >= 1, f"algorithm.generation_batch_size={a.generation_batch_size} must be >= 1")
