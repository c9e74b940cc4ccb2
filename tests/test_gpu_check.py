"""`make gpu-check --cpu-smoke`: every check of the GPU check runs on the CPU, shrunk, and prints one table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_optional_checks_say_why_they_skip_and_the_table_has_one_row_per_check():
    gpu_check = load_gpu_check()
    lora = gpu_check.check_lora(gpu_check.SMOKE)  # one real LoRA step on the shrunk shape: only the adapters train
    assert 0 < lora["trainable params"] < 100_000 and lora["step s"] > 0
    if importlib.util.find_spec("vllm") is None:
        assert gpu_check.check_vllm(gpu_check.SMOKE).startswith("skipped: vllm is not installed")
    text = gpu_check.table([("a", {"x": 1, "y": 2.5}, 1.0), ("b", "skipped: why", 0.0)], "somewhere")
    assert text.splitlines()[0] == "## gpu-check on somewhere"
    assert "| a | x 1, y 2.5 | 1.0 |" in text and "| b | skipped: why | 0.0 |" in text


def test_the_vllm_check_runs_in_another_interpreter_and_its_row_comes_back(tmp_path: Path):
    """make gpu-check runs the vLLM check with .venv-vllm's python (vLLM lives only there); here the
    main venv's python stands in for it: its row (skipped, or vLLM's numbers where vLLM is installed)
    reaches the table."""
    gpu_check = load_gpu_check()
    result = gpu_check.check_vllm_with(sys.executable, True, tmp_path / "vllm")
    if importlib.util.find_spec("vllm") is None:
        assert result.startswith("skipped: vllm is not installed here"), result
    else:
        assert result["pushes"] >= 1, result
    broken = gpu_check.check_vllm_with(str(tmp_path / "no-such-python"), True, tmp_path / "none")
    assert broken.startswith("FAILED:")


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed here (make test-vllm)")
def test_the_vllm_check_samples_pushes_and_checks_on_the_cpu_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path / "cache"))
    gpu_check = load_gpu_check()
    assert gpu_check.main(["--cpu-smoke", "--only", "vllm", "--out", str(tmp_path / "out")]) == 0
    [row] = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert row["check"] == "vLLM sample + push" and row["result"]["pushes"] >= 1, row


@pytest.mark.heavy
def test_cpu_smoke_runs_every_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path / "cache"))
    gpu_check = load_gpu_check()
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path / "out")]) == 0
    results = {r["check"]: r["result"] for r in json.loads((tmp_path / "out" / "gpu_check.json").read_text())}
    arms = results["grpo vs dash_nofilter, qwen2.5-0.5b shape"]
    assert arms["grpo train s"] > 0 and arms["dash_nofilter train s"] > 0
    for name in ("log-prob step: full vs chunked", "log-prob step: full vs chunked, gradient checkpointing"):
        logprobs = results[name]
        assert logprobs["full peak MB"] > 0 and logprobs["chunked peak MB"] > 0 and logprobs["tokens"] == "8x(32+16)"
    printed = capsys.readouterr().out.split("## gpu-check on ")[-1]  # after bench.py's own tables
    assert printed.count("\n| ") == 1 + len(results)  # the header row, then one row per check
