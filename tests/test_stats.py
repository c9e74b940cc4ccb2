"""The analysis's statistics: 95% t intervals over seeds, paired differences and their verdicts,
provenance warnings for pooled runs, and runs.csv, from which every table rebuilds.

The sweeps here are real folders (multirun.yaml, .hydra/hydra.yaml, config.yaml, summary.json,
metrics.jsonl, as a Hydra multirun of train.py writes them) with known numbers, read by the real
loaders; the end-to-end report on a trained sweep is in test_sweeps.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

import rlreason_analysis as ra
from conftest import ROOT
from toy_sweep import run_config, write_job, write_multirun

PROVENANCE = {"commit": "a" * 40, "dirty": False, "torch": "2.13.0+cpu", "transformers": "5.24.0", "vllm": None,
              "trl": None, "math-verify": "0.9.0", "datasets": "5.2.0", "python": "3.11.7",
              "cpu": "Intel(R) Xeon(R) Processor x2", "gpu": None}
ARMS = {  # conf/arm file -> (algorithm, kl, filter)
    "dash_plain": ("dash", "off", "off"),
    "dr_grpo": ("dr_grpo", "off", "off"),
    "dash_no_kl": ("dash", "off", "on"),
    "dash": ("dash", "on", "on"),
    "grpo": ("grpo", "on", "off"),
    "sft_reference": ("sft", "off", "off"),
    "ppo_mini": ("ppo_mini", "on", "on"),
}


def write_sweep(folder: Path, experiment: str | None, runs: list[dict]) -> Path:
    """A sweep folder, one job per entry of ``runs`` (arm, seed, summary numbers; optional
    provenance changes and per-step train metrics), in job order."""
    write_multirun(folder, experiment)
    for num, run in enumerate(runs):
        arm, seed = run["arm"], run["seed"]
        algorithm, kl, filt = ARMS[arm]
        provenance = {**PROVENANCE, **run.get("provenance", {})}
        config = run_config(algorithm, kl, filt, seed, provenance=provenance)
        config["algorithm"].update(loss_agg="seq_mean_token_sum_norm" if algorithm == "dr_grpo" else "seq_mean_token_mean",
                                   advantage="mean_only" if algorithm == "dr_grpo" else "grpo")
        summary = {"status": run.get("status", "completed"), "algorithm": algorithm, "kl": kl, "filter": filt, "seed": seed,
                   "steps": 4, **run["numbers"], "provenance": provenance}
        lines = [{"kind": "eval", "step": 0, "eval/greedy_acc": summary.get("base/greedy_acc", 0.0)}]
        rewards = run.get("rewards", [0.5] * 4)
        for step, length in enumerate(run.get("lengths", [10.0, 10.0, 10.0, 10.0]), start=1):
            lines.append({"kind": "train", "step": step, "completions/mean_length": length, "reward/mean": rewards[step - 1],
                          "throughput/sampling_tok_s": 100.0 * step, "time/sampling_s": 0.5 * step,
                          "time/train_elapsed_s": float(step)})
        write_job(folder, num, experiment, arm, config, summary, lines)
    return folder


def numbers(greedy: float, sampled: float, time_s: float, length: float = 40.0, base: float = 0.2) -> dict:
    return {"final/greedy_acc": greedy, "final/sampled_acc": sampled, "final/sampled_mean_length": length,
            "base/greedy_acc": base, "base/sampled_acc": base, "train_time_s": time_s,
            "train_time/sampling_s": time_s / 2, "train_time/forward_backward_s": time_s / 4}


# ---------------------------------------------------------------- intervals on hand-computed numbers
def test_mean_ci_is_the_student_t_interval_computed_by_hand():
    # [1, 2, 3]: mean 2, sd sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1, t_{0.975, 2} = 4.303 (table value
    # 4.30265), half-width 4.30265 * 1 / sqrt(3) = 2.48414.
    mean, half, n = ra.mean_ci([1, 2, 3])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(2.48414, abs=1e-5)
    # [1, 3]: mean 2, sd sqrt(2), t_{0.975, 1} = 12.7062: half-width 12.7062 * sqrt(2) / sqrt(2) = 12.7062.
    assert ra.mean_ci([1, 3])[1] == pytest.approx(12.7062, abs=1e-4)
    # [0.2, 0.3, 0.7]: mean 0.4, sd sqrt((0.04 + 0.01 + 0.09) / 2) = sqrt(0.07) = 0.264575,
    # half-width 4.30265 * 0.264575 / sqrt(3) = 0.657248.
    mean, half, n = ra.mean_ci([0.2, 0.3, 0.7])
    assert mean == pytest.approx(0.4) and half == pytest.approx(0.657248, abs=1e-5)
    # NaN (a seed without the number) is left out; one value has no interval; none has no mean.
    assert ra.mean_ci([1, float("nan"), 3]) == pytest.approx((2.0, 12.7062, 2), abs=1e-4)
    mean, half, n = ra.mean_ci([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(half)
    assert math.isnan(ra.mean_ci([])[0]) and ra.mean_ci([])[2] == 0


def test_paired_difference_matches_seeds_and_computes_the_interval_of_the_differences():
    # Arm minus reference per seed: 3-2, 5-3, 7-4 = [1, 2, 3] -> mean 2 ± 2.48414 (as above), so
    # the interval [-0.484, 4.484] includes 0. Seed 3 is only in the arm, seed 4 is NaN in the
    # reference: neither pairs.
    diff = ra.paired_difference({0: 3.0, 1: 5.0, 2: 7.0, 3: 9.0, 4: 1.0}, {0: 2.0, 1: 3.0, 2: 4.0, 4: float("nan")})
    assert diff.n == 3 and set(diff.seeds) == {0, 1, 2}
    assert diff.mean == pytest.approx(2.0)
    assert (diff.low, diff.high) == pytest.approx((2 - 2.48414, 2 + 2.48414), abs=1e-5)
    assert ra.verdict(diff) == "inconclusive"
    # Differences [0.10, 0.12, 0.14]: mean 0.12, sd 0.02, half-width 4.30265 * 0.02 / sqrt(3) = 0.049683:
    # [0.0703, 0.1697] excludes 0 -> better where higher is better, worse where lower is.
    clear = ra.paired_difference({0: 0.60, 1: 0.62, 2: 0.64}, {0: 0.50, 1: 0.50, 2: 0.50})
    assert clear.half_width == pytest.approx(0.049683, abs=1e-6)
    assert (clear.low, clear.high) == pytest.approx((0.070317, 0.169683), abs=1e-6)
    assert ra.verdict(clear, "higher") == "better"
    assert ra.verdict(clear, "lower") == "worse"
    assert ra.verdict(clear, None) == "higher"
    opposite = ra.paired_difference({0: 0.50, 1: 0.50, 2: 0.50}, {0: 0.60, 1: 0.62, 2: 0.64})
    assert (ra.verdict(opposite, "higher"), ra.verdict(opposite, "lower"), ra.verdict(opposite, None)) == ("worse", "better", "lower")


def test_an_arm_compared_with_itself_and_a_single_pair_are_inconclusive():
    values = {0: 0.61, 1: 0.74, 2: 0.58}
    same = ra.paired_difference(values, values)
    assert (same.n, same.mean, same.half_width) == (3, 0.0, 0.0)  # the interval [0, 0] includes 0
    assert ra.verdict(same, "higher") == ra.verdict(same, "lower") == ra.verdict(same, None) == "inconclusive"
    one = ra.paired_difference({0: 0.9}, {0: 0.1, 1: 0.2})  # a huge difference, but one pair: no interval
    assert one.n == 1 and ra.verdict(one) == "inconclusive (n=1)"
    assert ra.verdict(ra.paired_difference({0: 0.9}, {1: 0.1})) == "inconclusive (n=0)"
    # Two seeds that differ by the same amount give a zero-width interval: still no verdict.
    two = ra.paired_difference({0: 0.52, 1: 0.62}, {0: 0.50, 1: 0.60})
    assert two.n == 2 and ra.verdict(two) == "inconclusive (n=2)"
    with pytest.raises(ValueError, match="one value per seed"):
        ra.paired_difference(pd.Series([1.0, 2.0], index=[0, 0]), {0: 1.0})


# ---------------------------------------------------------------- tables and comparisons on a sweep folder
def loss_variants_sweep(root: Path) -> ra.Sweep:
    """dr_grpo listed first, dash_plain (the experiment's reference) second; 3 seeds each.
    dr_grpo: greedy accuracy 0.10-0.14 above dash_plain's (clearly better), sampled accuracy the
    same as dash_plain's seed by seed, training 2 s longer on every seed (worse, sd 0); dash_no_kl:
    the very same numbers as dash_plain (inconclusive everywhere)."""
    plain = {0: numbers(0.50, 0.40, 10.0, 40.0), 1: numbers(0.60, 0.45, 11.0, 38.0), 2: numbers(0.55, 0.50, 12.0, 42.0)}
    better = {0: 0.60, 1: 0.72, 2: 0.69}  # differences 0.10, 0.12, 0.14
    runs = []
    for seed in range(3):
        runs.append({"arm": "dr_grpo", "seed": seed, "numbers": {**plain[seed], "final/greedy_acc": better[seed],
                                                                 "train_time_s": plain[seed]["train_time_s"] + 2.0}})
        runs.append({"arm": "dash_plain", "seed": seed, "numbers": plain[seed]})
        runs.append({"arm": "dash_no_kl", "seed": seed, "numbers": plain[seed]})
    return ra.load_sweep(write_sweep(root, "loss_variants", runs))


def test_comparison_table_pairs_each_arm_with_the_experiments_reference_arm(tmp_path):
    sweep = loss_variants_sweep(tmp_path)
    reference = ra.reference_arm(sweep)
    assert sweep.runs.loc[sweep.runs["arm"] == reference, "arm_file"].unique().tolist() == ["dash_plain"]  # REFERENCE_ARMS
    table = ra.comparison_table(sweep)
    assert set(table["arm_file"]) == {"dr_grpo", "dash_no_kl"} and (table["reference"] == reference).all()
    rows = table.set_index(["arm_file", "metric"])
    greedy = rows.loc[("dr_grpo", "final/greedy_acc")]
    assert greedy["n_pairs"] == 3
    assert greedy["difference mean"] == pytest.approx(0.12)  # (0.10 + 0.12 + 0.14) / 3
    assert greedy["difference ci95"] == pytest.approx(0.049683, abs=1e-6)  # as in the hand computation above
    assert (greedy["reference_mean"], greedy["arm_mean"]) == pytest.approx((0.55, 0.67))
    assert greedy["verdict"] == "better"
    assert rows.loc[("dr_grpo", "final/sampled_acc"), "verdict"] == "inconclusive"
    assert rows.loc[("dr_grpo", "train_time_s"), "verdict"] == "worse"  # 2 s slower on every seed: lower is better
    assert rows.loc[("dr_grpo", "final/sampled_mean_length"), "verdict"] == "inconclusive"
    assert (rows.loc["dash_no_kl", "verdict"] == "inconclusive").all()  # the reference's own numbers
    assert set(rows.loc["dash_no_kl"].index) == {"final/greedy_acc", "final/sampled_acc", "train_time_s", "steps",
                                                 "final/sampled_mean_length", "train/final_mean_length",
                                                 "train/reward_roughness"}
    markdown = ra.format_table(table).to_markdown(index=False)
    assert "0.120 ± 0.050" in markdown


def test_a_failed_run_leaves_its_seed_out_of_the_pairs_and_one_pair_is_inconclusive(tmp_path):
    runs = [{"arm": "dash_plain", "seed": 0, "numbers": numbers(0.5, 0.4, 10.0)},
            {"arm": "dr_grpo", "seed": 0, "numbers": numbers(0.9, 0.8, 10.0)},
            {"arm": "dash_plain", "seed": 1, "numbers": numbers(0.5, 0.4, 10.0)},
            {"arm": "dr_grpo", "seed": 1, "numbers": numbers(0.9, 0.8, 10.0), "status": "failed"}]
    table = ra.comparison_table(ra.load_sweep(write_sweep(tmp_path, "loss_variants", runs))).set_index("metric")
    assert table.loc["final/greedy_acc", "n_pairs"] == 1
    assert table.loc["final/greedy_acc", "verdict"] == "inconclusive (n=1)"


def test_reference_arm_is_the_first_arm_unless_the_experiment_names_one(tmp_path):
    runs = [{"arm": arm, "seed": 0, "numbers": numbers(0.5, 0.4, 10.0)} for arm in ("dash", "dash_no_kl")]
    kl = ra.load_sweep(write_sweep(tmp_path / "kl", "kl_on_off", runs))
    assert ra.reference_arm(kl) == kl.runs["arm"].iloc[0] == "kl=on"
    missing = ra.load_sweep(write_sweep(tmp_path / "lv", "loss_variants", runs))  # no dash_plain run
    with pytest.warns(UserWarning, match="reference arm dash_plain is not among the runs"):
        assert ra.reference_arm(missing) == "kl=on"


def test_tables_give_the_95_percent_interval_over_seeds_and_show_it(tmp_path):
    runs = [{"arm": "dash_plain", "seed": s, "numbers": numbers(g, 0.4, 10.0)} for s, g in enumerate((0.2, 0.3, 0.7))]
    runs.append({"arm": "dash", "seed": 0, "numbers": numbers(0.5, 0.4, 10.0)})
    sweep = ra.load_sweep(write_sweep(tmp_path, "x", runs))
    table = ra.accuracy_table(sweep).set_index("arm_file", drop=False)
    plain = table.loc["dash_plain"]
    assert plain["final/greedy_acc mean"] == pytest.approx(0.4)
    assert plain["final/greedy_acc ci95"] == pytest.approx(0.657248, abs=1e-5)  # [0.2, 0.3, 0.7], as by hand above
    assert plain["final/greedy_acc std"] == pytest.approx(0.264575, abs=1e-6)
    assert math.isnan(table.loc["dash", "final/greedy_acc ci95"])  # one seed: no interval
    shown = ra.format_table(table).set_index("arm_file")
    assert shown.loc["dash_plain", "final/greedy_acc"] == "0.400 ± 0.657"
    assert shown.loc["dash", "final/greedy_acc"] == "0.500"
    columns = list(table.columns)
    assert columns.index("final/greedy_acc ci95") == columns.index("final/greedy_acc std") + 1


# ---------------------------------------------------------------- provenance of pooled runs
def test_pooling_runs_of_different_commits_or_libraries_warns(tmp_path):
    runs = [{"arm": arm, "seed": s, "numbers": numbers(0.5, 0.4, 10.0)} for s in range(2) for arm in ("dash_plain", "dash")]
    same = ra.load_sweep(write_sweep(tmp_path / "same", "kl_on_off", runs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one provenance: no warning at all
        assert ra.check_provenance(same) == []
    runs[3]["provenance"] = {"commit": "b" * 40, "dirty": True}
    runs[2]["provenance"] = {"torch": "2.8.0"}
    mixed = ra.load_sweep(write_sweep(tmp_path / "mixed", "kl_on_off", runs))
    with pytest.warns(ra.PoolingWarning) as caught:
        lines = ra.check_provenance(mixed)
    assert [str(w.message) for w in caught] == lines
    assert any("differ in commit" in l and "aaaaaaaaaaaa (3 runs)" in l and "bbbbbbbbbbbb (1 runs)" in l for l in lines)
    assert any("differ in dirty" in l for l in lines) and any("differ in torch: 2.13.0+cpu (3 runs), 2.8.0 (1 runs)" in l for l in lines)
    assert "kl_on_off: 1 of 4 runs were made from a dirty tree (uncommitted changes): their commit alone does not say what code ran" in lines
    assert not any("transformers" in l for l in lines)


def test_paired_runs_whose_base_model_evaluations_differ_are_named(tmp_path):
    runs = [{"arm": arm, "seed": s, "numbers": numbers(0.5, 0.4, 10.0, base=0.2)} for s in range(2) for arm in ("dash_plain", "dash")]
    runs[3]["numbers"]["base/greedy_acc"] = 0.25  # dash, seed 1: another base model or other prompts
    lines = ra.provenance_warnings(ra.load_sweep(write_sweep(tmp_path, "x", runs)))
    assert lines == ["x: seed 1: the runs' base-model greedy accuracy differs (0.2, 0.25): their pairs may not share a base "
                     "model or prompts"]


def test_a_run_resumed_under_other_code_is_named(tmp_path):
    runs = [{"arm": "dash_plain", "seed": 0, "numbers": numbers(0.5, 0.4, 10.0),
             "provenance": {"resumed_from": {**PROVENANCE, "commit": "c" * 40}}}]
    sweep = ra.load_sweep(write_sweep(tmp_path, "x", runs))
    assert sweep.runs["provenance/resumed_from"].tolist() == ["commit"]
    assert ra.provenance_warnings(sweep) == [f"x: run {sweep.runs['run'][0]} was resumed under other commit than it started with"]


# ---------------------------------------------------------------- runs.csv
def two_experiments(root: Path) -> Path:
    """One `make sweep` folder with two experiments whose runs have different columns (an
    out-of-distribution evaluation only in the first, a failed run only in the second)."""
    lv = [{"arm": arm, "seed": s, "numbers": {**numbers(0.5 + 0.05 * s + (0.1 + 0.01 * s) * (arm == "dr_grpo"), 0.4, 10.0 + s),
                                              "final/ood/greedy_acc": 0.1 * s, "base/ood/greedy_acc": 0.05},
           "lengths": [40.0, 30.0 + s, 20.0, 10.0 + s]}
          for s in range(3) for arm in ("dash_plain", "dr_grpo", "dash_no_kl")]
    kl = [{"arm": arm, "seed": s, "numbers": numbers(0.6, 0.3 + 0.01 * s, 8.0 + s)} for s in range(2) for arm in ("dash", "dash_no_kl")]
    kl[-1]["status"] = "failed"
    kl[2]["provenance"] = {"commit": "b" * 40}  # dash, seed 1: made by other code than seed 0
    write_sweep(root / "loss_variants", "loss_variants", lv)
    write_sweep(root / "kl_on_off", "kl_on_off", kl)
    return root


TABLES = {
    "accuracy": lambda s: ra.paper_beside(ra.accuracy_table(s), s),
    "length": ra.length_table,
    "time": lambda s: ra.paper_beside(ra.time_table(s), s),
    "throughput": ra.throughput_table,
    "comparisons": ra.comparison_table,
}


# ---------------------------------------------------------------- the paper's findings
def findings_sweeps(root: Path) -> list:
    """A findings sweep and a ppo_equal_time sweep, 3 seeds, with known differences."""
    runs = []
    for seed in range(3):
        d = 0.01 * seed
        runs += [
            # RL vs SFT: SFT-H above DASH on both decodings, every seed (the paper's finding contradicted).
            {"arm": "sft_reference", "seed": seed, "numbers": numbers(0.70 + d, 0.60 + d, 5.0, length=30.0)},
            {"arm": "dash", "seed": seed, "numbers": numbers(0.60 + d, 0.50 + 2 * d, 20.0 + seed, length=30.0)},
            # No-KL: higher accuracy, shorter, faster on every seed (reproduced).
            {"arm": "dash_no_kl", "seed": seed, "numbers": numbers(0.65 + d, 0.56 + 2 * d, 17.0 + seed, length=27.0 - seed)},
            # GRPO: slower by 30-34 s (DASH's cut reproduced), accuracy about the same.
            {"arm": "grpo", "seed": seed, "numbers": numbers(0.60 + d + (0.01 if seed == 1 else -0.01), 0.5, 50.0 + 3 * seed)},
        ]
    findings = ra.load_sweep(write_sweep(root / "findings", "findings", runs))
    ppo = []
    for seed in range(3):
        calm, jumpy = [0.5, 0.52, 0.54, 0.56], [0.5, 0.7, 0.4, 0.8 - 0.05 * seed]
        ppo += [{"arm": "dash", "seed": seed, "numbers": numbers(0.60, 0.50, 20.0), "rewards": calm},
                # PPO-Mini: accuracy up on one decoding only, noisier on every seed: inconclusive overall.
                {"arm": "ppo_mini", "seed": seed, "numbers": numbers(0.62 + 0.01 * seed, 0.50 + 0.02 * (seed - 1), 20.0),
                 "rewards": jumpy}]
    return [findings, ra.load_sweep(write_sweep(root / "ppo_equal_time", "ppo_equal_time", ppo))]


def test_findings_table_gives_each_claim_its_paired_interval_and_each_finding_a_verdict(tmp_path):
    table = ra.findings_table(findings_sweeps(tmp_path))
    verdicts = table.groupby("finding", sort=False)["verdict"].first()
    assert verdicts.to_dict() == {
        "1. On-policy RL beats SFT": "contradicted",
        "2b. PPO-Mini at equal time: a little more accuracy, noisier training": "inconclusive",
        "3. Without KL: higher accuracy, shorter answers, less time": "reproduced",
        "4. DASH cuts training time (accuracy about equal)": "reproduced",
    }  # no sft_teacher, ppo_multi or dash_no_filter runs: their claims are left out, and 2a with them
    rows = table.set_index(["claim", "metric"])
    greedy = rows.loc[("dash vs sft_reference", "final/greedy_acc")]
    assert (greedy["n_pairs"], greedy["difference mean"], greedy["outcome"]) == (3, pytest.approx(-0.10), "disagrees")
    time = rows.loc[("dash vs grpo", "train_time_s")]
    # DASH - GRPO = -30, -32, -34 s: mean -32, sd 2, t_{0.975,2} * 2 / sqrt(3) = 4.968
    assert (time["difference mean"], time["difference ci95"]) == pytest.approx((-32.0, 4.968275), abs=1e-5)
    assert time["ratio mean"] == pytest.approx((20 / 50 + 21 / 53 + 22 / 56) / 3)
    assert rows.loc[("dash vs grpo", "final/greedy_acc"), "outcome"] == "inconclusive"  # shown, not decisive
    assert not rows.loc[("dash vs grpo", "final/greedy_acc"), "primary"]
    mini = rows.loc["ppo_mini vs dash"]
    assert mini.loc["final/greedy_acc", "outcome"] == "agrees" and mini.loc["final/sampled_acc", "outcome"] == "inconclusive"
    assert mini.loc["train/reward_roughness", "outcome"] == "agrees"
    assert rows.loc[("dash_no_kl vs dash", "final/sampled_mean_length"), "outcome"] == "agrees"  # shorter: the paper's way


def test_a_finding_whose_arm_is_its_own_reference_is_inconclusive(tmp_path):
    sweeps = findings_sweeps(tmp_path)
    itself = ra.Finding("DASH vs DASH", (ra.Claim("findings", "dash", "dash", "final/greedy_acc", "higher", "-"),
                                         ra.Claim("findings", "dash", "dash", "train_time_s", "lower", "-")))
    table = ra.findings_table(sweeps, [itself])
    assert len(table) == 2 and (table["difference mean"] == 0).all() and (table["outcome"] == "inconclusive").all()
    assert (table["verdict"] == "inconclusive").all()
    assert ra.finding_verdict(["agrees", "disagrees"]) == "inconclusive"
    assert ra.finding_verdict(["disagrees", "inconclusive"]) == "contradicted"
    assert ra.finding_verdict(["agrees", "agrees"]) == "reproduced"


def test_every_table_rebuilds_from_runs_csv_alone(tmp_path):
    sweeps = ra.load_sweeps(two_experiments(tmp_path / "multirun"))
    assert [s.name for s in sweeps] == ["kl_on_off", "loss_variants"]
    path = ra.save_runs_csv(sweeps, tmp_path / "docs" / "runs.csv")
    runs = pd.read_csv(path)
    assert len(runs) == 9 + 4 and runs.columns[:5].tolist() == ["experiment", "run", "arm", "arm_file", "paper_method"]
    for column in ("seed", "status", "final/greedy_acc", "base/greedy_acc", "train_time_s", "train_time/sampling_s",
                   "steps", "provenance/commit", "train/final_mean_length"):
        assert column in runs, column
    lv = runs[runs["experiment"] == "loss_variants"]
    assert sorted(lv["train/final_mean_length"].unique()) == [10.0, 11.0, 12.0]  # the last quarter of 4 steps: step 4
    rebuilt = ra.load_runs_csv(path)
    assert [s.name for s in rebuilt] == [s.name for s in sweeps] and all(s.curves.empty for s in rebuilt)
    for original, again in zip(sweeps, rebuilt):
        assert original.arm_axes == again.arm_axes
        # The same runs and numbers (runs.csv puts the identity columns first).
        pd.testing.assert_frame_equal(original.runs.sort_index(axis=1), again.runs.sort_index(axis=1), check_dtype=False)
        for name, make in TABLES.items():
            pd.testing.assert_frame_equal(make(original), make(again), check_dtype=False, obj=f"{original.name} {name}")
        assert ra.provenance_warnings(original) == ra.provenance_warnings(again)
    kl_only = next(s for s in rebuilt if s.name == "kl_on_off")
    assert not any("ood" in c for c in kl_only.runs.columns)  # the other experiment's columns stay out
    assert ra.load_sweeps(path)[1].name == "loss_variants"


def test_an_integer_axis_stays_integer_in_a_runs_csv_that_pools_experiments(tmp_path):
    # generation_batch_size is empty in the other experiment's rows; read back it must be 8, not 8.0, or its
    # tables print "8.0" (docs/findings/ablations/ pools three experiments).
    path = tmp_path / "runs.csv"
    path.write_text("experiment,run,arm,seed,status,generation_batch_size\n"
                    "loss_variants,0_a,dash,0,completed,\n"
                    "generation_batch_size,0_b,generation_batch_size=8,0,completed,8\n")
    loss, gbs = ra.load_runs_csv(path)
    assert gbs.runs["generation_batch_size"].dtype.kind == "i" and gbs.runs["generation_batch_size"][0] == 8
    assert "generation_batch_size" not in loss.runs or loss.runs["generation_batch_size"].isna().all()


def test_a_csv_that_is_not_a_runs_csv_fails_with_one_line(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a runs.csv from make analysis: it lacks the column"):
        ra.load_runs_csv(tmp_path / "other.csv")
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "make_report.py"), "--runs", str(tmp_path / "missing.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: no runs file {tmp_path / 'missing.csv'}"


@pytest.mark.heavy
@pytest.mark.slow
def test_make_report_from_runs_csv_writes_the_same_tables_as_from_the_sweep_folder(tmp_path):
    """make analysis on a sweep folder, then on the runs.csv it wrote: every table is the same
    file; only the curve tables and figures, which need metrics.jsonl, are missing the second time."""
    from make_report import make_report

    root = two_experiments(tmp_path / "multirun")
    with pytest.warns(ra.PoolingWarning, match="kl_on_off: pooled runs differ in commit"):
        first = make_report(root, tmp_path / "report")
    with pytest.warns(ra.PoolingWarning, match="kl_on_off: pooled runs differ in commit"):
        second = make_report(first / "runs.csv", tmp_path / "again")
    assert (second / "runs.csv").read_text() == (first / "runs.csv").read_text()
    tables = {p.name for p in (first / "tables").glob("*.csv")}
    curve_tables = {n for n in tables if "_curve_" in n or "_length_by_" in n}
    assert curve_tables and {p.name for p in (second / "tables").glob("*.csv")} == tables - curve_tables
    for name in tables - curve_tables:
        assert (second / "tables" / name).read_text() == (first / "tables" / name).read_text(), name
    for name in ("loss_variants_comparisons", "kl_on_off_comparisons", "loss_variants_accuracy", "loss_variants_time"):
        assert name + ".csv" in tables
    comparisons = pd.read_csv(first / "tables" / "loss_variants_comparisons.csv").set_index(["arm_file", "metric"])
    assert comparisons.loc[("dr_grpo", "final/greedy_acc"), "verdict"] == "better"  # +0.10, +0.11, +0.12 over dash_plain
    assert comparisons.loc[("dash_no_kl", "final/greedy_acc"), "verdict"] == "inconclusive"
    index = (second / "README.md").read_text()
    assert "loss_variants_comparisons" in index and "runs.csv" in index
    assert "## Provenance warnings" in index and "kl_on_off: pooled runs differ in commit" in index
