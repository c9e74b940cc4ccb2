"""What every task whose reward runs model-written code shares: the sandbox fields of its config,
the sandbox they open, and the extraction of a completion's code (docs/sandbox.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlreason.errors import ConfigError
from rlreason.sandbox import MODES, Sandbox, SandboxConfig
from rlreason.tasks.base import TaskConfig

_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class SandboxTaskConfig(TaskConfig):
    """The keys of a code task's YAML that say how its candidates run (a code task's ``Config``
    subclasses this; the defaults are MBPP+'s, and a task with other needs re-declares one)."""

    sandbox: str = "bwrap"  # bwrap (bubblewrap: read-only fs, private /tmp, no network) | process (limits only)
    sandbox_workers: int = 0  # parallel warm sandbox workers; 0: one per CPU core (results do not depend on it)
    test_timeout_s: float = 4.0  # wall-clock limit for one call of the entry point, seconds
    completion_timeout_s: float = 20.0  # wall-clock and CPU-time limit for one completion (all its calls), seconds
    memory_mb: int = 1024  # address-space limit of one completion's process, MiB


def open_sandbox(sandbox: str, sandbox_workers: int, test_timeout_s: float, completion_timeout_s: float,
                 memory_mb: int) -> Sandbox:
    """The sandbox a code task's ``SandboxTaskConfig`` fields describe (started now, so a missing
    bubblewrap is one line at start-up, not mid-run); the CPU-time limit is the completion's."""
    if sandbox not in MODES:
        raise ConfigError(f"task.sandbox={sandbox!r} must be one of {', '.join(MODES)}")
    return Sandbox(SandboxConfig(mode=sandbox, workers=sandbox_workers, test_timeout_s=test_timeout_s,
                                 completion_timeout_s=completion_timeout_s, cpu_s=completion_timeout_s,
                                 memory_mb=memory_mb))


def extract_code(completion: str) -> str | None:
    """The last fenced python block of a completion (None when it has none)."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else None
