"""Checkpoints: the policy (``save_pretrained``) plus everything needed to resume exactly.

Each checkpoint is written to a temporary folder and renamed into place, so a crash or a full
disk mid-write never leaves a half checkpoint where a complete one is expected: the previous
checkpoint stays valid. Only the newest ``keep`` are kept.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlreason.errors import OutputError, first_line

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
DONE_MARK = "COMPLETE"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}"


def seed_everything(seed: int) -> None:
    """Seed every generator ``rng_state`` saves."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


def rng_state() -> dict[str, Any]:
    """Every generator sampling draws from, so a resumed run samples what the uninterrupted one would."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # Per device, as many as both the saving and this machine have (a resume may see fewer GPUs).
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)


def save_checkpoint(run_dir: Path, step: int, policy: Any, tokenizer: Any, trainer_state: dict[str, Any], keep: int) -> Path:
    """Write step ``step`` atomically, then prune to the newest ``keep`` complete checkpoints.

    A failed write (a full disk, no permission) removes the partial folder and raises
    OutputError naming the cause and the checkpoint that is still intact.
    """
    target = checkpoint_dir(run_dir, step)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / DONE_MARK).write_text(str(step))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        # torch.save and safetensors report a full disk as RuntimeError or their own type, not OSError.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {first_line(exc)}"
        previous = latest_checkpoint(run_dir)
        kept = f"the last complete checkpoint, {previous}, is intact" if previous else "there is no earlier checkpoint"
        raise OutputError(f"could not write checkpoint {target} ({reason}); {kept}") from exc
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / DONE_MARK).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    """The step of a complete checkpoint, without loading its (possibly large) state."""
    return int((Path(path) / DONE_MARK).read_text())


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The saved trainer state, every tensor on the CPU: rank 0 saved its optimizer state from cuda:0, and
    under DDP each rank must not load it there (``optimizer.load_state_dict`` moves it to the parameters'
    device; the RNG states are CPU tensors anyway)."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
