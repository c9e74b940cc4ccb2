"""Provenance: the code commit, dirty flag, library versions and device every run records."""

from __future__ import annotations

import subprocess

import yaml

from rlreason.provenance import LIBRARIES, collect_provenance, run_provenance, save_run_config


def test_fields_present_and_unknown_outside_git(tmp_path):
    prov = collect_provenance(tmp_path)
    assert (prov["commit"], prov["dirty"]) == ("unknown", "unknown")
    assert set(LIBRARIES) <= set(prov) and prov["torch"] and prov["python"] and prov["cpu"]


def test_commit_and_dirty_in_a_real_checkout(tmp_path):
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True).stdout
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    prov = collect_provenance(tmp_path)
    assert prov["commit"] == git("rev-parse", "HEAD").strip() and prov["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert collect_provenance(tmp_path)["dirty"] is True


def test_config_yaml_block_and_resume_across_versions(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"seed": 0})
    save_run_config(cfg, tmp_path / "config.yaml", {"commit": "old", "dirty": False})
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["seed"] == 0 and saved["provenance"]["commit"] == "old"
    assert run_provenance(tmp_path)["resumed_from"]["commit"] == "old"
