"""Shared fixtures: an isolated cache, offline W&B, and Hydra composition of the real conf/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One base-model cache for the whole session; W&B offline and quiet; few threads."""
    cache = os.environ.get("RLREASON_TEST_CACHE") or str(tmp_path_factory.mktemp("rlreason-cache"))
    os.environ["RLREASON_CACHE"] = cache
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ.setdefault("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    os.environ.pop("WANDB_API_KEY", None)
    # `python train.py` in a subprocess imports this checkout's code, not the venv's editable install.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))


def compose(*overrides: str, with_hydra: bool = False):
    """The config ``python train.py OVERRIDES`` would run, composed by Hydra from conf/
    (``with_hydra``: with its ``hydra`` node, run folder and launcher included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import rlreason.config  # noqa: F401  (schema + ${debug:...} resolver)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)
