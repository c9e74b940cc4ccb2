"""`make bench` in its --quick mode: every part runs and writes its table, CSVs and plot."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.heavy
@pytest.mark.slow
def test_quick_bench_writes_every_output(tmp_path: Path) -> None:
    bench = load_bench()
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
    assert "## Code scoring: completions scored per second" in text
    with open(tmp_path / "scoring.csv") as f:
        scoring = list(csv.DictReader(f))
    assert [int(r["workers"]) for r in scoring] == [1, 2]
    for r in scoring:  # the embedded code task always; MBPP+ where the shared file is
        assert float(r["codegen_per_s"]) > 0 and float(r["trivial_per_s"]) > 0
        assert r["mbppplus_canonical_per_s"] == "" or float(r["mbppplus_canonical_per_s"]) > 0


@pytest.mark.heavy
@pytest.mark.slow
def test_shape_mode_times_a_random_model_of_the_named_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--shape qwen2.5-0.5b builds the model from conf/model/qwen2.5-0.5b-shape.yaml (random weights, no hub) and
    skips dash, whose filter would drop every row; here shrunk by --set overrides so it runs on a CPU in seconds."""
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path / "cache"))
    bench = load_bench()
    shrink = ["model.num_hidden_layers=1", "model.hidden_size=64", "model.intermediate_size=96",
              "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.vocab_size=2048",
              "sampler.max_new_tokens=12"]
    trl = ["trl"] if importlib.util.find_spec("trl") is not None else []  # TRL's arm too where the bench extra is in
    argv = ["--quick", "--steps", "2", "--arms", ",".join(["grpo", "dash_nofilter", "dash"] + trl), "--shape",
            "qwen2.5-0.5b", "--no-curves", "--no-scoring", "--out", str(tmp_path / "out")]
    assert bench.main(argv + [a for o in shrink for a in ("--set", o)]) == 0
    with open(tmp_path / "out" / "arms.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == ["grpo", "dash_nofilter"] + trl
    assert all(float(r["final_acc"]) == 0.0 for r in rows)  # random weights: every reward is 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert '"model": "qwen2.5-0.5b-shape"' in text and '"dtype": "torch.bfloat16"' in text
    assert '"max_new_tokens": 12' in text and "bfloat16 matmul peak" in text
    built = next((tmp_path / "cache").glob("base-*/config.json")).read_text()
    assert '"vocab_size": 2048' in built and '"num_key_value_heads": 1' in built
