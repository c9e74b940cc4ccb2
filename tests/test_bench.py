"""`make bench` in its --quick mode: every part runs and writes its table, CSVs and plot."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_writes_every_output(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench
    spec.loader.exec_module(bench)
    has_trl = importlib.util.find_spec("trl") is not None
    arms = "grpo,dash_nofilter,dash" + (",trl" if has_trl else "")
    assert bench.main(["--quick", "--steps", "2", "--arms", arms, "--out", str(tmp_path)]) == 0

    with open(tmp_path / "arms.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["arm"] for r in rows} == set(arms.split(","))
    for r in rows:
        assert float(r["train_s"]) > 0 and 0.0 <= float(r["final_acc"]) <= 1.0
        assert int(r["completions"]) == 2 * 4 * 4  # steps x prompts x group (debug sizes): the same for every arm
    ours = [r for r in rows if not r["arm"].startswith("trl")]
    for r in ours:  # the phases add up to (at most) the step time
        phases = sum(float(r[f"{p}_s"]) for p in bench.PHASES)
        assert 0 < phases <= float(r["train_s"]) * 1.01
        assert 0 < float(r["flops_frac_step"]) < 1
    with open(tmp_path / "curves.csv") as f:
        kinds = {r["kind"] for r in csv.DictReader(f)}
    assert kinds == {"sampling", "backprop"}
    assert (tmp_path / "curves.png").stat().st_size > 0
    text = (tmp_path / "results.md").read_text()
    assert "## Targets" in text and "matmul peak" in text
