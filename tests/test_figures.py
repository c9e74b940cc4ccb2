"""The paper's figures: training reward over wall-clock per arm (Figure 4), response length over
training with KL on and off (Figure 6b) and pass@k against k (Figure 5), each the mean over seeds
with a seed-to-seed band, and the pass_at_k experiment that feeds Figure 5.

The sweeps are real folders (multirun.yaml, .hydra/hydra.yaml, config.yaml, summary.json,
metrics.jsonl, as Hydra's multirun of train.py writes them) with known curves, read by the real
loader; the figures are real matplotlib figures (Agg, no display).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import rlreason_analysis as ra  # noqa: E402
from conftest import CONF, compose  # noqa: E402
from toy_sweep import run_config, write_job, write_multirun  # noqa: E402
from rlreason.config import validate  # noqa: E402

ARMS = {  # conf/arm file -> (algorithm, kl, filter)
    "dash": ("dash", "on", "on"),
    "dash_no_kl": ("dash", "off", "on"),
    "ppo_multi": ("ppo", "on", "on"),
    "ppo_mini": ("ppo_mini", "on", "on"),
}


def write_sweep(folder: Path, experiment: str, runs: list[dict]) -> Path:
    """A sweep folder, one job per entry of ``runs``: arm, seed, the per-step train metrics
    (``train``: rows of step, time/train_elapsed_s, reward/mean, completions/mean_length), summary
    numbers (``numbers``) and optionally a status."""
    write_multirun(folder, experiment)
    for num, run in enumerate(runs):
        arm, seed = run["arm"], run["seed"]
        summary = {"status": run.get("status", "completed"), "seed": seed, "steps": len(run.get("train", [])),
                   **run.get("numbers", {})}
        lines = [{"kind": "eval", "step": 0, "eval/greedy_acc": 0.1}]
        lines += [{"kind": "train", **row} for row in run.get("train", [])]
        write_job(folder, num, experiment, arm, run_config(*ARMS[arm], seed), summary, lines)
    return folder


def train_rows(times: list[float], rewards: list[float], lengths: list[float] | None = None) -> list[dict]:
    lengths = lengths or [40.0] * len(times)
    return [{"step": i + 1, "time/train_elapsed_s": t, "reward/mean": r, "completions/mean_length": n}
            for i, (t, r, n) in enumerate(zip(times, rewards, lengths))]


def line_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- the common time grid
def test_the_mean_on_a_common_time_grid_is_the_hand_computed_mean_of_two_curves(tmp_path):
    # Seed 0: (1, 0), (2, 1), (3, 2); seed 1: (0.5, 1), (1.5, 1), (2.5, 3), (3.5, 3). Both cover
    # [1, 3], the grid (3 points): 1, 2, 3. Seed 1 interpolated: at 1 halfway between (0.5, 1) and
    # (1.5, 1) -> 1; at 2 halfway between (1.5, 1) and (2.5, 3) -> 2; at 3 -> 3. Means: (0+1)/2 = 0.5,
    # (1+2)/2 = 1.5, (2+3)/2 = 2.5. The two values differ by 1 at every point: sd = sqrt(0.5),
    # half-width t_{0.975, 1} * sd / sqrt(2) = 12.7062 * 0.5 = 6.3531.
    runs = [{"arm": "dash", "seed": 0, "train": train_rows([1, 2, 3], [0, 1, 2])},
            {"arm": "dash", "seed": 1, "train": train_rows([0.5, 1.5, 2.5, 3.5], [1, 1, 3, 3])}]
    sweep = ra.load_sweep(write_sweep(tmp_path, "x", runs))
    table = ra.grid_curve(sweep, "reward/mean", points=3)
    assert list(table["train_time_s"]) == pytest.approx([1.0, 2.0, 3.0])
    assert list(table["mean"]) == pytest.approx([0.5, 1.5, 2.5])
    assert list(table["n"]) == [2, 2, 2]
    assert list(table["ci95"]) == pytest.approx([6.3531] * 3, abs=1e-4)
    assert list(table["low"]) == pytest.approx([0.5 - 6.3531, 1.5 - 6.3531, 2.5 - 6.3531], abs=1e-4)
    assert (list(table["min"]), list(table["max"])) == ([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    # More points: at 1.25 seed 0 is a quarter of the way from 0 to 1 (0.25), seed 1 still 1: mean 0.625.
    fine = ra.grid_curve(sweep, "reward/mean", points=9).set_index("train_time_s")
    assert fine.loc[1.25, "mean"] == pytest.approx(0.625)
    # A trailing mean over 2 steps first: seed 0 becomes (1, 0), (2, 0.5), (3, 1.5); seed 1 (0.5, 1),
    # (1.5, 1), (2.5, 2), (3.5, 3) -> at 2: 0.5 and 1.5, mean 1.0.
    smooth = ra.grid_curve(sweep, "reward/mean", points=3, smooth=2)
    assert smooth["mean"].iloc[1] == pytest.approx(1.0)
    # The runs' own x values (points=None), inside the common range: 1, 1.5, 2, 2.5, 3.
    assert list(ra.grid_curve(sweep, "reward/mean", points=None)["train_time_s"]) == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_grid_curve_leaves_failed_runs_out_and_one_seed_has_no_interval(tmp_path):
    runs = [{"arm": "dash", "seed": 0, "train": train_rows([1, 2], [0.2, 0.4])},
            {"arm": "dash", "seed": 1, "train": train_rows([1, 2], [0.9, 0.9]), "status": "failed"}]
    table = ra.grid_curve(ra.load_sweep(write_sweep(tmp_path, "x", runs)), "reward/mean", points=2)
    assert list(table["mean"]) == pytest.approx([0.2, 0.4]) and list(table["n"]) == [1, 1]
    assert table["ci95"].isna().all() and list(table["min"]) == list(table["max"]) == pytest.approx([0.2, 0.4])
    with pytest.raises(ValueError, match="smooth=0"):
        ra.grid_curve(ra.load_sweep(tmp_path), "reward/mean", smooth=0)


# ---------------------------------------------------------------- Figure 4: reward over wall-clock
def ppo_equal_time_sweep(root: Path) -> ra.Sweep:
    """dash, ppo_multi, ppo_mini, 3 seeds each, stopped near 10 s of training time. Every arm's
    reward rises linearly in time at its own rate (dash 0.05/s, ppo_multi 0.04/s, ppo_mini 0.03/s)
    plus a seed offset (-0.01, 0, +0.01); the arms step at different rates (1, 2 and 0.5 s a step)."""
    runs = []
    for seed in range(3):
        for arm, rate, dt in (("dash", 0.05, 1.0), ("ppo_multi", 0.04, 2.0), ("ppo_mini", 0.03, 0.5)):
            times = list(np.arange(dt, 10.0 + 1e-9, dt))
            rewards = [rate * t + 0.01 * (seed - 1) for t in times]
            runs.append({"arm": arm, "seed": seed, "train": train_rows(times, rewards)})
    return ra.load_sweep(write_sweep(root, "ppo_equal_time", runs))


def test_reward_over_time_figure_draws_one_line_and_band_per_arm_on_the_time_axis(tmp_path):
    sweep = ppo_equal_time_sweep(tmp_path)
    figure = ra.reward_over_time_figure(sweep, points=50)
    (ax,) = figure.axes
    assert line_labels(ax) == ["DASH", "PPO-Multi", "PPO-Mini"]  # sweep order, the paper's names
    assert len(ax.collections) == 3  # one band per arm
    assert "95% t-interval" in ax.get_title() and "training time" in ax.get_xlabel()
    for line, (arm_rate, start) in zip(ax.get_lines(), ((0.05, 1.0), (0.04, 2.0), (0.03, 0.5))):
        xs, ys = line.get_data()
        assert (xs[0], xs[-1]) == pytest.approx((start, 10.0))  # each arm's own common range, no extrapolation
        assert len(xs) == 50
        assert ys == pytest.approx(arm_rate * np.asarray(xs))  # the seed offsets average out
    # The band: t_{0.975, 2} * sd / sqrt(3), sd of (-0.01, 0, 0.01) = 0.01 -> 4.30265 * 0.01 / sqrt(3).
    half = 4.30265 * 0.01 / math.sqrt(3)
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(0.05 * 10.0 + half, abs=1e-5)
    assert band[:, 1].min() == pytest.approx(0.05 * 1.0 - half, abs=1e-5)
    minmax = ra.reward_over_time_figure(sweep, band="minmax", points=50).axes[0]
    assert "min to max" in minmax.get_title()
    assert minmax.collections[0].get_paths()[0].vertices[:, 1].max() == pytest.approx(0.51)  # best seed at 10 s
    path = ra.save_figure(figure, tmp_path / "report", "ppo_equal_time_reward_over_time")
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="band='std'"):
        ra.reward_over_time_figure(sweep, band="std")


# ---------------------------------------------------------------- Figure 6b: length over training, KL on and off
def test_length_over_training_figure_per_kl_arm_against_steps(tmp_path):
    # KL on: lengths 40, 42, 44, 46 (+ seed); off: 40, 38, 36, 34 (+ seed); seeds 0 and 1; a run of
    # the second seed is 1 step shorter, so the common steps are 1..3.
    runs = []
    for seed in range(2):
        for arm, slope in (("dash", 2.0), ("dash_no_kl", -2.0)):
            steps = 4 if seed == 0 else 3
            lengths = [40.0 + slope * i + seed for i in range(steps)]
            runs.append({"arm": arm, "seed": seed, "train": train_rows(list(range(1, steps + 1)), [0.5] * steps, lengths)})
    sweep = ra.load_sweep(write_sweep(tmp_path, "kl_on_off", runs))
    (ax,) = ra.length_over_training_figure(sweep).axes
    assert line_labels(ax) == ["DASH", "No-KL"] and len(ax.collections) == 2
    assert ax.get_xlabel() == "optimizer step"
    (on_x, on_y), (off_x, off_y) = (line.get_data() for line in ax.get_lines())
    assert list(on_x) == list(off_x) == [1.0, 2.0, 3.0]
    assert list(on_y) == pytest.approx([40.5, 42.5, 44.5]) and list(off_y) == pytest.approx([40.5, 38.5, 36.5])


# ---------------------------------------------------------------- Figure 5: pass@k
def pass_numbers(base: list[float], final: list[float], ks=(1, 2, 4, 8)) -> dict:
    out = {f"final/pass@{k}": v for k, v in zip(ks, final)}
    out.update({f"base/pass@{k}": v for k, v in zip(ks, base)})
    out.update({"final/sampled_acc": final[0], "base/sampled_acc": base[0]})
    return out


def pass_at_k_sweep(root: Path) -> ra.Sweep:
    """dash and dash_no_kl, 3 seeds; per seed the base model's pass@1..8 is the same in both runs
    (same base model), 0.1 0.2 0.3 0.4 (+0.01 * seed); dash ends at 0.5 0.6 0.65 0.7, No-KL at
    0.55 0.6 0.62 0.64 (+0.02 * seed)."""
    runs = []
    for seed in range(3):
        base = [0.1 + 0.01 * seed, 0.2 + 0.01 * seed, 0.3 + 0.01 * seed, 0.4 + 0.01 * seed]
        runs.append({"arm": "dash", "seed": seed, "numbers": pass_numbers(base, [0.5 + 0.02 * seed, 0.6 + 0.02 * seed,
                                                                                0.65 + 0.02 * seed, 0.7 + 0.02 * seed])})
        runs.append({"arm": "dash_no_kl", "seed": seed, "numbers": pass_numbers(base, [0.55 + 0.02 * seed, 0.6 + 0.02 * seed,
                                                                                      0.62 + 0.02 * seed, 0.64 + 0.02 * seed])})
    return ra.load_sweep(write_sweep(root, "pass_at_k", runs))


def test_pass_at_k_table_and_figure_for_the_base_model_and_each_arm(tmp_path):
    sweep = pass_at_k_sweep(tmp_path)
    table = ra.pass_at_k_table(sweep)
    assert list(table["series"].unique()) == ["base (step 0)", "kl=on", "kl=off"]
    rows = table.set_index(["series", "k"])
    assert rows.loc[("base (step 0)", 4), "mean"] == pytest.approx(0.31)  # 0.30, 0.31, 0.32
    assert rows.loc[("base (step 0)", 4), "n"] == 3
    assert rows.loc[("kl=on", 8), "mean"] == pytest.approx(0.72)  # 0.70, 0.72, 0.74
    # sd of (0.70, 0.72, 0.74) = 0.02: half-width 4.30265 * 0.02 / sqrt(3).
    assert rows.loc[("kl=on", 8), "ci95"] == pytest.approx(4.30265 * 0.02 / math.sqrt(3), abs=1e-6)
    assert (rows.loc[("kl=off", 1), "min"], rows.loc[("kl=off", 1), "max"]) == pytest.approx((0.55, 0.59))
    # the gain over the same seed's base model: kl=on at k=8 is 0.70-0.40, 0.72-0.41, 0.74-0.42 (sd 0.01)
    assert rows.loc[("kl=on", 8), "gain"] == pytest.approx(0.31)
    assert rows.loc[("kl=on", 8), "gain_ci95"] == pytest.approx(4.30265 * 0.01 / math.sqrt(3), abs=1e-6)
    assert rows.loc[("kl=on", 8), "vs_base"] == "higher"
    assert rows.loc[("kl=off", 2), "gain"] == pytest.approx(0.41)  # (0.60-0.20) + 0.01 * seed, seeds 0-2
    assert rows.loc[("base (step 0)", 4), "vs_base"] == "" and math.isnan(rows.loc[("base (step 0)", 4), "gain"])
    for _, series in table.groupby("series"):  # every curve non-decreasing in k, as pass@k must be
        assert (np.diff(series.sort_values("k")["mean"].to_numpy()) >= -1e-12).all()
    (ax,) = ra.pass_at_k_figure(sweep).axes
    assert line_labels(ax) == ["base (step 0)", "DASH", "No-KL"] and len(ax.collections) == 3
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]
    for line in ax.get_lines():
        xs, ys = line.get_data()
        assert list(xs) == [1, 2, 4, 8] and (np.diff(ys) >= -1e-12).all()
    assert ax.get_lines()[0].get_data()[1] == pytest.approx([0.11, 0.21, 0.31, 0.41])


def test_pass_at_k_rebuilds_from_runs_csv_and_is_empty_without_pass_at_k(tmp_path):
    sweep = pass_at_k_sweep(tmp_path / "pak")
    (again,) = ra.load_runs_csv(ra.save_runs_csv([sweep], tmp_path / "runs.csv"))
    assert again.curves.empty
    assert ra.pass_at_k_table(again).equals(ra.pass_at_k_table(sweep))
    assert ra.figures_for(again) == ["pass_at_k"]  # no curves in a runs.csv: only what the summaries draw
    plain = ra.load_sweep(write_sweep(tmp_path / "plain", "kl_on_off", [{"arm": "dash", "seed": 0, "train": train_rows([1], [0.5])}]))
    assert ra.pass_at_k_table(plain).empty


def test_figures_for_each_experiment_and_when_asked(tmp_path):
    ppo = ppo_equal_time_sweep(tmp_path / "ppo")
    assert ra.figures_for(ppo) == ["reward_over_time"]
    assert ra.figures_for(ppo, "all") == ["reward_over_time", "length_over_training"]  # no pass@k in its runs
    assert ra.figures_for(pass_at_k_sweep(tmp_path / "pak"), "pass_at_k, other") == ["pass_at_k"]  # no curves written
    other = ra.load_sweep(write_sweep(tmp_path / "lv", "loss_variants", [{"arm": "dash", "seed": 0, "train": train_rows([1], [0.5])}]))
    assert ra.figures_for(other) == [] and ra.figures_for(other, "kl_on_off,loss_variants") == ["reward_over_time", "length_over_training"]


# ---------------------------------------------------------------- the pass_at_k experiment
def test_pass_at_k_experiment_composes_with_the_papers_k_and_a_debug_version():
    params = yaml.safe_load((CONF / "experiment" / "pass_at_k.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert params["arm"].split(",") == ["dash", "dash_no_kl"] and len(str(params["seed"]).split(",")) >= 3
    for arm in ("dash", "dash_no_kl"):
        cfg = compose("experiment=pass_at_k", f"arm={arm}")
        validate(cfg)
        assert list(cfg.eval.pass_k) == [1, 2, 4, 8, 16, 32, 64] and cfg.eval.samples_per_problem == 64
        assert cfg.task.n_test == 64 and cfg.eval.at_start and cfg.eval.sampled  # the base model's pass@k at step 0
    debug = ("experiment=pass_at_k", "debug=true", "logger=none", "threads=1", "hydra.sweep.dir=/tmp/pak-sweep")
    validate(compose(*debug))
    cfg = compose(*debug, with_hydra=True)
    assert list(cfg.eval.pass_k) == [1, 2, 4] and cfg.eval.samples_per_problem == 4 and cfg.task.n_test == 4
    assert cfg.hydra.sweep.dir == "/tmp/pak-sweep" and cfg.hydra.sweeper.params.arm == "dash,dash_no_kl"
    from test_sweeps import EXPERIMENTS  # the list every experiment test runs over

    assert "pass_at_k" in EXPERIMENTS


# ---------------------------------------------------------------- the report
@pytest.mark.heavy
@pytest.mark.slow
def test_make_report_draws_each_experiments_paper_figure_and_pass_at_k_again_from_runs_csv(tmp_path):
    """make analysis on one `make sweep` folder of the three experiments: Figure 4 for
    ppo_equal_time, 6b for kl_on_off, 5 for pass_at_k, with their tables; from the report's
    runs.csv (no curves) only the pass@k figure, the same table; --figures all adds the others."""
    from make_report import make_report

    root = tmp_path / "multirun"
    ppo_equal_time_sweep(root / "ppo_equal_time")
    pass_at_k_sweep(root / "pass_at_k")
    kl = [{"arm": arm, "seed": s, "train": train_rows([1, 2, 3], [0.5, 0.6, 0.7], [40.0 + s, 42.0, 44.0 - 4 * (arm == "dash_no_kl")])}
          for s in range(2) for arm in ("dash", "dash_no_kl")]
    write_sweep(root / "kl_on_off", "kl_on_off", kl)
    report = make_report(root, tmp_path / "report")
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    assert {"ppo_equal_time_reward_over_time", "kl_on_off_length_over_training", "pass_at_k_pass_at_k"} <= figures
    assert "ppo_equal_time_length_over_training" not in figures and "kl_on_off_reward_over_time" not in figures
    grid = pd.read_csv(report / "tables" / "ppo_equal_time_curve_grid_reward_mean.csv")
    assert list(grid["arm"].unique()) == ["algorithm=dash", "algorithm=ppo", "algorithm=ppo_mini"] and (grid["n"] == 3).all()
    index = (report / "README.md").read_text()
    assert "figures/pass_at_k_pass_at_k.png" in index and "## pass_at_k_pass_at_k" in index
    again = make_report(report / "runs.csv", tmp_path / "again")
    assert {p.stem for p in (again / "figures").glob("*.png")} >= {"pass_at_k_pass_at_k"}
    assert not any("reward_over_time" in p.name or "length_over_training" in p.name for p in (again / "figures").iterdir())
    assert (again / "tables" / "pass_at_k_pass_at_k.csv").read_text() == (report / "tables" / "pass_at_k_pass_at_k.csv").read_text()
    every = make_report(root / "ppo_equal_time", tmp_path / "every", figures="all", band="minmax")
    assert {p.stem for p in (every / "figures").glob("*.png")} >= {"ppo_equal_time_reward_over_time",
                                                                   "ppo_equal_time_length_over_training"}
    with pytest.raises(ValueError, match="band 'std'"):
        make_report(root, tmp_path / "bad", band="std")
