"""Tasks: the embedded defaults and the real benchmarks, behind one interface, built by ``_target_``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlreason.errors import ConfigError
from rlreason.registry import import_object
from rlreason.tasks.base import Example, Grade, Task, TaskConfig, TaskContext

__all__ = ["Example", "Grade", "Task", "TaskConfig", "TaskContext", "build_task", "task_class", "typed_task_config"]


def task_class(task_cfg: Any, field: str = "task") -> type[Task]:
    """The Task class a task config names by ``_target_``; one line if it is missing or is no Task."""
    target = task_cfg.get("_target_") if isinstance(task_cfg, (dict, DictConfig)) else None
    if not target:
        raise ConfigError(f"{field}._target_ is not set: a task config names its Task class (package.module.ClassName)")
    cls = import_object(target, f"{field}._target_")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(
            f"{field}._target_={target!r} is not a subclass of rlreason.tasks.Task "
            "(it must implement train_example, test_examples and score)"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"{field}._target_={target!r} does not implement {', '.join(missing)} of the Task interface")
    return cls


def typed_task_config(task_cfg: Any, field: str = "task") -> DictConfig:
    """The task config checked against its class's ``Config`` dataclass: an unknown key or a wrong
    type is one line naming ``field.key``; defaults of fields the YAML leaves out are filled in."""
    cls = task_class(task_cfg, field)
    try:
        if isinstance(task_cfg, DictConfig):  # resolved against the run's root first: ${debug:A,B} reads its debug
            task_cfg = OmegaConf.to_container(task_cfg, resolve=True)
        schema = OmegaConf.structured(cls.Config)
        return OmegaConf.merge(schema, task_cfg)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", None)
        where = f"{field}.{key}" if key else field
        message = str(error).strip().splitlines()[0]
        raise ConfigError(f"{where}: {message} (the fields of {cls.__name__}.Config)") from None


def build_task(task_cfg: Any, tokenizer: Any = None, sft_source: str = "teacher", cache_dir: str = ".cache/rlreason",
               field: str = "task") -> Task:
    """The task a ``task=`` config names (``_target_``), built by its class's ``from_config``."""
    typed = typed_task_config(task_cfg, field)
    return task_class(typed, field).from_config(typed, TaskContext(tokenizer=tokenizer, sft_source=sft_source, cache_dir=cache_dir))

# sft.source values that name the task's own data rather than a traces file.
SFT_SOURCES_OF_DATA = ("reference", "teacher")
