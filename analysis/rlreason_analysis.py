"""Sweeps into pandas, and the tables and figures of the paper's results.

A sweep is a folder Hydra's multirun wrote (``multirun.yaml`` plus one folder per job). Each run
becomes one row of ``Sweep.runs``: the ablation axes read from the run's saved ``config.yaml``
(never from folder names), its seed, status and every number of its ``summary.json``.
``Sweep.curves`` is the long table of its per-step metrics (``metrics.jsonl``): one row per
(run, kind, step, metric) with the training time reached at that step. ``load_wandb_project``
builds the same two tables from a W&B project, for runs logged online.

Arms are the axes that differ between the sweep's runs (the seed aside); tables give the mean, the
standard deviation and the 95% Student-t confidence interval over seeds of each arm, and
``comparison_table`` each arm against a reference arm as a paired difference over seeds (same
seed: same base model, prompts and sampling stream) with its interval and a verdict that says
"inconclusive" whenever the interval includes 0. ``runs_summary`` is the compact per-run table
(``runs.csv``) every table can be rebuilt from (``load_runs_csv``), and ``provenance_warnings``
says when a sweep pools runs made by different code or libraries. Imported by the notebooks in
this folder, which run with this folder or the repository root as working directory.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats as scipy_stats

from rlreason.provenance import POOLING_FIELDS

HERE = Path(__file__).resolve().parent
PAPER_RESULTS = HERE / "paper_results.csv"

# Column name -> dotted path in the run's config: the axes a paper result can vary.
AXES = {
    "algorithm": "algorithm.name",
    "kl": "kl.name",
    "filter": "filter.name",
    "sft_source": "sft.source",  # reference | teacher | a traces file; only for SFT runs (RL runs ignore it: left empty)
    "generation_batch_size": "algorithm.generation_batch_size",
    "max_train_seconds": "trainer.max_train_seconds",
    "task": "task.name",
    "model": "model.name",
    # The parts of the update rule (issue 10). A named algorithm sets them (dr_grpo: mean_only,
    # seq_mean_token_sum_norm); they label an arm only where they vary among runs of one algorithm
    # (an override such as algorithm.loss_agg=token_mean on dash), see arm_axes.
    "loss_agg": "algorithm.loss_agg",
    "advantage": "algorithm.advantage",
    "ratio_level": "algorithm.ratio_level",
    "truncated": "algorithm.truncated",
    "rollout_correction": "algorithm.rollout_correction",
}
# The axes above that are parts of the algorithm: implied by its name unless they vary within it.
ALGORITHM_PARTS = ("loss_agg", "advantage", "ratio_level", "truncated", "rollout_correction")
# Training-time phases of summary.json (time/<phase>_s), in the order the stacked bars draw them.
PHASES = ("sampling", "scoring", "reference", "forward_backward", "optimizer")
# The paper's method name for a point of the ablation space (algorithm, kl, filter): how its tables
# label the arms of conf/arm/*.yaml. SFT is SFT-H on reference solutions, SFT-M on anything else
# (the task's teacher demonstrations, or a stronger model's traces file).
PAPER_METHODS = {
    ("grpo", "on", "off"): "GRPO",
    ("dash", "on", "off"): "No-GF",
    ("dash", "on", "on"): "DASH",
    ("dash", "off", "on"): "No-KL",
    ("ppo", "on", "on"): "PPO-Multi",
    ("ppo_mini", "on", "on"): "PPO-Mini",
}
# Paper tables that name DASH with KL "DASH (KL)".
PAPER_METHOD_ALIASES = {"DASH (KL)": "DASH"}
# Our summary number -> the paper's metric (and our unit per its unit), for the setting the paper
# ran: Qwen2.5 trained on MATH, evaluated on MATH-500 and GSM8K, which a run adds as extra
# evaluation tasks named math500 and gsm8k (+task@eval.tasks.math500=math500
# +task@eval.tasks.gsm8k=gsm8k). The training task's own test split (final/greedy_acc) is MATH's
# test set, not MATH-500, so it has no paper number beside it.
PAPER_METRICS = {
    "final/math500/greedy_acc": ("math500_acc", 1 / 100),
    "final/gsm8k/greedy_acc": ("gsm8k_acc", 1 / 100),
    "train_time_s": ("train_time", 3600.0),
}
PAPER_TASKS = ("math",)
# The code tasks, and the paper's tables on code (2: SFT vs RL on MBPP+, 4: where the time goes, in minutes).
CODE_TASKS = ("codegen", "mbppplus", "humaneval")
PAPER_CODE_TABLES = (2, 4)


@dataclass
class Sweep:
    """One sweep: ``runs`` (one row per run) and ``curves`` (long table of per-step metrics)."""

    name: str
    path: str
    runs: pd.DataFrame
    curves: pd.DataFrame

    @property
    def arm_axes(self) -> list[str]:
        """The axes whose values differ between runs: what the sweep compares."""
        return arm_axes(self.runs)

    @property
    def completed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "completed"]


# ---------------------------------------------------------------- finding sweeps
def find_sweeps(root: Path | str) -> list[Path]:
    """Every sweep folder (one with Hydra's multirun.yaml) at or under ``root``, sorted. A sweep
    inside another one (an extra arm run into a sub-folder) is part of the outer one."""
    found = sorted(p.parent for p in Path(root).glob("**/multirun.yaml"))
    return [p for p in found if not any(q in p.parents for q in found)]


def latest_sweep(multirun_dir: Path | str = "multirun") -> Path:
    """The newest top-level folder of ``multirun/`` (named by start time): one ``make sweep``."""
    folders = [p for p in Path(multirun_dir).iterdir() if p.is_dir() and find_sweeps(p)] if Path(multirun_dir).is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no sweep under {multirun_dir}/: run `make sweep` first")
    return max(folders, key=lambda p: (p.stat().st_mtime, p.name))


# ---------------------------------------------------------------- loading a sweep folder
def load_sweep(path: Path | str) -> Sweep:
    """A sweep folder into pandas (runs and curves); failed runs are kept with their status."""
    path = Path(path)
    rows, curves = [], []
    for run_dir in _run_dirs(path):
        name = str(run_dir.relative_to(path))
        config = _load_config(run_dir)
        summary = _read_json(run_dir / "summary.json") or {"status": "incomplete"}
        row = _run_row(name, config, summary, order=_job_number(run_dir))
        row["arm_file"] = _hydra_choice(run_dir, "arm")
        rows.append(row)
        metrics_path = run_dir / "metrics.jsonl"
        if metrics_path.exists():
            curves.extend(_curve_rows(name, _read_jsonl(metrics_path)))
    curves_frame = _curves_frame(curves)
    return Sweep(name=_sweep_name(path), path=str(path), runs=_runs_frame(rows, curves_frame), curves=curves_frame)


def _run_dirs(path: Path) -> list[Path]:
    """Hydra job folders (``.hydra/``) and any folder with a summary.json, outside W&B's files."""
    found = {p.parent for p in path.glob("**/.hydra")} | {p.parent for p in path.glob("**/summary.json")}
    return sorted(d for d in found if "wandb" not in d.relative_to(path).parts)


def _job_number(run_dir: Path) -> float:
    hydra = run_dir / ".hydra" / "hydra.yaml"
    if hydra.exists():
        num = (yaml.safe_load(hydra.read_text()) or {}).get("hydra", {}).get("job", {}).get("num")
        if num is not None:
            return float(num)
    return math.inf


def _hydra_choice(run_dir: Path, group: str) -> str | None:
    """The option Hydra chose for a config group in this job (``arm`` -> "dash_plain"), None if the
    job chose none (or has no .hydra/hydra.yaml): names the conf/arm file a run came from."""
    hydra = run_dir / ".hydra" / "hydra.yaml"
    if not hydra.exists():
        return None
    choice = (yaml.safe_load(hydra.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {}).get(group)
    return None if choice is None else str(choice)


def _sweep_name(path: Path) -> str:
    """The experiment the sweep ran (``experiment=...``), read from its multirun.yaml."""
    multirun = path / "multirun.yaml"
    if multirun.exists():
        config = yaml.safe_load(multirun.read_text()) or {}
        choice = config.get("hydra", {}).get("runtime", {}).get("choices", {}).get("experiment")
        if choice:
            return str(choice)
    return path.name


def _load_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml; for a run that failed before writing it, Hydra's copy."""
    if (run_dir / "config.yaml").exists():
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    hydra_copy = run_dir / ".hydra" / "config.yaml"
    if not hydra_copy.exists():
        return {}
    from omegaconf import OmegaConf

    try:
        import rlreason.config  # noqa: F401  (the ${debug:...} resolver)

        return OmegaConf.to_container(OmegaConf.load(hydra_copy), resolve=True)
    except Exception:  # an interpolation we cannot resolve here: keep the plain values
        return OmegaConf.to_container(OmegaConf.load(hydra_copy), resolve=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return rows


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _run_row(name: str, config: dict[str, Any], summary: dict[str, Any], order: float = math.inf) -> dict[str, Any]:
    """Axes from the config, then the summary's numbers (its copies of the axes are dropped)."""
    row: dict[str, Any] = {"run": name, "order": order}
    for column, dotted in AXES.items():
        row[column] = _get(config, dotted)
    if _get(config, "algorithm.rl") is not False and _get(config, "algorithm.schedule") != "sft":  # (rl: runs before schedules)
        row["sft_source"] = None
    row["seed"] = _get(config, "seed")
    row["status"] = summary.get("status", "incomplete")
    row["error"] = summary.get("error")
    for key, value in summary.items():
        if key not in row and key not in ("algorithm", "kl", "filter", "task", "model", "seed", "provenance"):
            row[key] = value
    row.update(_provenance_columns(summary.get("provenance") or config.get("provenance")))
    return row


def _provenance_columns(provenance: Any) -> dict[str, Any]:
    """The run's provenance (summary.json's, else config.yaml's) as ``provenance/<field>`` columns
    (rlreason.provenance.POOLING_FIELDS: commit, dirty, library versions, python, cpu, gpu), plus
    ``provenance/resumed_from``: the fields in which the code that resumed the run differs from the
    code that started it (empty if none). A run made before provenance was recorded: all None."""
    if not isinstance(provenance, dict):
        return {f"provenance/{field}": None for field in (*POOLING_FIELDS, "resumed_from")}
    out = {f"provenance/{field}": provenance.get(field) for field in POOLING_FIELDS}
    first = provenance.get("resumed_from")
    changed = [f for f in POOLING_FIELDS if isinstance(first, dict) and first.get(f) != provenance.get(f)]
    out["provenance/resumed_from"] = ",".join(changed) or None
    return out


# Per-run numbers read from the curves (metrics.jsonl) and kept in the runs table, so the tables
# that need them rebuild from runs.csv alone: column -> (metric, how it is reduced over steps).
# The tail mean is over the last quarter of training steps; the steady mean over every step after
# the first (which pays one-off warm-up costs).
CURVE_NUMBERS = {
    "train/final_mean_length": ("completions/mean_length", "tail"),
    # The spread of the training completions' lengths within a step, over the last quarter.
    "train/final_length_std": ("completions/length_std", "tail"),
    "throughput/sampling_tok_s": ("throughput/sampling_tok_s", "steady"),
    "time/sampling_s": ("time/sampling_s", "steady"),
    # How noisy training is (the paper's claim about PPO): the sd of the step-to-step change of the
    # batch's mean reward. The batch's sampling noise is in it for every arm alike; a policy that
    # jumps between updates adds to it.
    "train/reward_roughness": ("reward/mean", "roughness"),
}


def _runs_frame(rows: list[dict[str, Any]], curves: pd.DataFrame | None = None) -> pd.DataFrame:
    runs = pd.DataFrame(rows)
    if runs.empty:
        return pd.DataFrame(columns=["run", *AXES, "seed", "status", "arm", "paper_method"])
    runs = runs.sort_values(["order", "run"], kind="stable").drop(columns="order").reset_index(drop=True)
    if curves is not None and not curves.empty:
        for column, (metric, how) in CURVE_NUMBERS.items():
            reduce = {"tail": _tail_mean, "steady": _steady_mean, "roughness": _roughness}[how]
            runs[column] = [reduce(curves, r, metric) for r in runs["run"]]
    return _label_arms(_drop_empty(runs))


def _drop_empty(runs: pd.DataFrame) -> pd.DataFrame:
    """Without the columns no run has a value in (the run's identity and axes always stay): a
    sweep has the same columns whether read from its folder or from a runs.csv of several."""
    keep = {"run", "arm", "arm_file", "paper_method", *AXES, "seed", "status", "error"}
    return runs[[c for c in runs.columns if c in keep or runs[c].notna().any()]]


def _label_arms(runs: pd.DataFrame) -> pd.DataFrame:
    axes = arm_axes(runs)
    runs["arm"] = [arm_label(r, axes) for _, r in runs.iterrows()]
    runs["paper_method"] = [paper_method(r) for _, r in runs.iterrows()]
    return runs


def _curve_rows(run: str, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Long rows from metric rows; each carries the training time reached at its step."""
    rows = list(rows)
    elapsed = {0: 0.0}
    for row in rows:
        if row.get("kind") == "train" and row.get("time/train_elapsed_s") is not None:
            elapsed[row["step"]] = row["time/train_elapsed_s"]
    for row in rows:
        for metric, value in row.items():
            if metric in ("kind", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # W&B media (completion tables) and nulls (non-finite values in metrics.jsonl)
            if math.isnan(value):
                continue
            yield {
                "run": run,
                "kind": row.get("kind"),
                "step": row["step"],
                "train_time_s": elapsed.get(row["step"], math.nan),
                "metric": metric,
                "value": float(value),
            }


def _curves_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["run", "kind", "step", "train_time_s", "metric", "value"])


# ---------------------------------------------------------------- arms
def arm_axes(runs: pd.DataFrame) -> list[str]:
    """The axes with more than one value among the runs (missing counts as a value); a part of the
    algorithm (ALGORITHM_PARTS: loss_agg, advantage, ...) only where it varies among the runs of one
    algorithm, since a named algorithm implies its parts (loss_variants: dr_grpo is mean_only)."""
    def values(frame: pd.DataFrame, axis: str) -> pd.Series:
        return frame[axis].astype("object").where(frame[axis].notna(), "-")

    out = []
    for a in AXES:
        if a not in runs or values(runs, a).nunique() <= 1:
            continue
        if a in ALGORITHM_PARTS and "algorithm" in runs:
            algorithms = values(runs, "algorithm")
            if all(values(group, a).nunique() <= 1 for _, group in runs.groupby(algorithms, sort=False)):
                continue
        out.append(a)
    return out


def arm_label(run: pd.Series | dict[str, Any], axes: list[str]) -> str:
    """``kl=on filter=off``: the run's values of the axes the sweep varies ("all" if none)."""
    parts = [f"{a}={_fmt(run[a])}" for a in axes if run[a] is not None and not _isnan(run[a])]
    return " ".join(parts) or "all"


def paper_method(run: pd.Series | dict[str, Any]) -> str | None:
    """The paper's name for the run's arm (DASH, No-KL, GRPO, SFT-H, ...), None if it has none."""
    if run["algorithm"] == "sft":
        return "SFT-H" if run.get("sft_source") == "reference" else "SFT-M"
    return PAPER_METHODS.get((run["algorithm"], run["kl"], run["filter"]))


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _arm_keys(sweep: Sweep) -> list[str]:
    """The columns that name an arm in tables: the varying axes, the arm label, the conf/arm file
    (where the runs came from arm files) and the paper's name."""
    has_file = "arm_file" in sweep.runs and sweep.runs["arm_file"].notna().any()
    return [*sweep.arm_axes, "arm", *(["arm_file"] if has_file else []), "paper_method"]


# ---------------------------------------------------------------- statistics over seeds
# Two-sided confidence level of every interval: mean over seeds, and paired differences.
CONFIDENCE = 0.95


def mean_ci(values: Iterable[Any]) -> tuple[float, float, int]:
    """``(mean, half_width, n)``: the mean of ``values`` (NaNs dropped) and the half-width of its 95%
    Student-t confidence interval, t_{0.975, n-1} * sd / sqrt(n) with the sample sd (ddof=1).
    Half-width NaN for n < 2 (one seed says nothing about the spread), mean NaN for n = 0."""
    x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").dropna().astype(float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n < 2:
        return float(x.iloc[0]), math.nan, 1
    quantile = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
    return float(x.mean()), quantile * float(x.std(ddof=1)) / math.sqrt(n), n


@dataclass(frozen=True)
class PairedDifference:
    """Arm minus reference over the seeds both have: mean, 95% t interval [low, high], n pairs."""

    n: int
    mean: float
    half_width: float
    seeds: tuple

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def paired_difference(arm: Mapping[Any, float] | pd.Series, reference: Mapping[Any, float] | pd.Series) -> PairedDifference:
    """The paired difference ``arm - reference``, matched by seed (the keys: same seed = same base
    model, prompts and sampling stream); seeds missing or NaN on either side are left out."""
    a, r = pd.Series(arm, dtype=float), pd.Series(reference, dtype=float)
    if a.index.has_duplicates or r.index.has_duplicates:
        raise ValueError("paired_difference: one value per seed on each side (average repeated seeds first)")
    both = pd.concat([a.rename("arm"), r.rename("reference")], axis=1, join="inner").dropna()
    mean, half, n = mean_ci(both["arm"] - both["reference"])
    return PairedDifference(n=n, mean=mean, half_width=half, seeds=tuple(both.index))


# Seeds paired at least, for a verdict other than inconclusive.
MIN_PAIRS = 3


def verdict(diff: PairedDifference, better: str | None = "higher") -> str:
    """"better" or "worse" only when the 95% interval of the paired difference excludes 0, else
    "inconclusive"; "inconclusive (n=2)" (or fewer) with fewer than MIN_PAIRS pairs: one pair has no
    interval, and two pairs that happen to differ by the same amount (accuracy moves in steps of
    1/problems) give a zero-width one. ``better``: which sign is the better one ("higher": accuracy;
    "lower": time); None for a metric with no better direction (length): "higher" or "lower" instead."""
    if diff.n < MIN_PAIRS:
        return f"inconclusive (n={diff.n})"
    if better not in ("higher", "lower", None):
        raise ValueError(f"better must be 'higher', 'lower' or None, not {better!r}")
    if math.isnan(diff.low) or diff.low <= 0 <= diff.high:
        return "inconclusive"
    above = diff.low > 0
    if better is None:
        return "higher" if above else "lower"
    return "better" if above == (better == "higher") else "worse"


# ---------------------------------------------------------------- tables (mean and spread over seeds)
def aggregate(sweep: Sweep, columns: list[str]) -> pd.DataFrame:
    """Per arm (in sweep order): seeds completed, runs failed, then for each column the mean, the
    std and the half-width of the 95% Student-t confidence interval over seeds (``ci95``).

    Only completed runs enter the means; ``n_failed`` keeps the others in sight.
    """
    runs = sweep.runs
    keys = _arm_keys(sweep)
    out = []
    for arm, group in runs.groupby("arm", sort=False):
        done = group[group["status"] == "completed"]
        row = {k: group.iloc[0][k] for k in keys}
        row["n_seeds"] = int(done["seed"].nunique())
        row["n_failed"] = int(len(group) - len(done))
        for column in columns:
            values = pd.to_numeric(done[column], errors="coerce") if column in done else pd.Series(dtype=float)
            row[f"{column} mean"], row[f"{column} ci95"], _ = mean_ci(values)
            row[f"{column} std"] = values.std(ddof=1) if values.count() > 1 else math.nan
        out.append(row)
    return _order_stats(pd.DataFrame(out), columns)


def _order_stats(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Each column's ``mean``, ``std``, ``ci95`` side by side, after the arm's keys."""
    stats = [f"{c} {s}" for c in columns for s in ("mean", "std", "ci95")]
    return table[[c for c in table.columns if c not in stats] + [c for c in stats if c in table]]


def accuracy_columns(runs: pd.DataFrame) -> list[str]:
    """Held-out accuracies at the end of training: the task's own test split first (in
    distribution: final/greedy_acc, final/sampled_acc, final/pass@k), then each extra evaluation
    task (eval.tasks, e.g. out of distribution: final/<task>/...)."""
    found = [c for c in runs.columns if re.fullmatch(r"final/(.+/)?((greedy|sampled)_acc|pass@\d+)", c)]
    return sorted(found, key=lambda c: (c.count("/"), c))


def accuracy_table(sweep: Sweep) -> pd.DataFrame:
    """Accuracy per arm, plus the base model (every run's step-0 evaluation) as the first row."""
    columns = accuracy_columns(sweep.runs)
    table = aggregate(sweep, columns)
    base = _base_row(sweep, columns)
    return pd.concat([base, table], ignore_index=True) if base is not None else table


def _base_row(sweep: Sweep, columns: list[str]) -> pd.DataFrame | None:
    """The base model's accuracy: per seed the mean of its runs' step-0 evaluations, then over seeds."""
    done = sweep.completed
    base_columns = {c: "base/" + c.split("/", 1)[1] for c in columns}
    if done.empty or not all(b in done for b in base_columns.values()):
        return None
    per_seed = done.groupby("seed")[list(base_columns.values())].mean()
    row: dict[str, Any] = {k: None for k in _arm_keys(sweep)}
    row.update(arm="base (step 0)", paper_method="Base", n_seeds=len(per_seed), n_failed=0)
    for column, base in base_columns.items():
        row[f"{column} mean"], row[f"{column} ci95"], _ = mean_ci(per_seed[base])
        row[f"{column} std"] = per_seed[base].std(ddof=1) if len(per_seed) > 1 else math.nan
    return _order_stats(pd.DataFrame([row]), columns)


def length_table(sweep: Sweep) -> pd.DataFrame:
    """Response length per arm: held-out completions at the end (greedy, sampled) and the training
    samples of the last steps (mean of completions/mean_length over the last quarter of steps,
    ``train/final_mean_length``, read from the curves when the sweep was loaded); and, for runs that
    logged it, the spread of lengths over completions (``*_length_std``: population sd)."""
    runs = sweep.runs
    columns = [c for c in ("final/greedy_mean_length", "final/sampled_mean_length", "train/final_mean_length",
                           "final/greedy_length_std", "final/sampled_length_std", "train/final_length_std") if c in runs]
    return aggregate(sweep, columns)


def _train_curve(curves: pd.DataFrame, run: str, metric: str) -> pd.DataFrame:
    """One run's per-step training rows of ``metric``, in step order (what CURVE_NUMBERS reduce)."""
    return curves[(curves["run"] == run) & (curves["kind"] == "train") & (curves["metric"] == metric)].sort_values("step")


def _tail_mean(curves: pd.DataFrame, run: str, metric: str, fraction: float = 0.25) -> float:
    rows = _train_curve(curves, run, metric)
    if rows.empty:
        return math.nan
    return float(rows["value"].tail(max(1, math.ceil(len(rows) * fraction))).mean())


def _roughness(curves: pd.DataFrame, run: str, metric: str) -> float:
    rows = _train_curve(curves, run, metric)
    steps = rows["value"].diff().dropna()
    return float(steps.std(ddof=1)) if len(steps) > 1 else math.nan


def time_table(sweep: Sweep) -> pd.DataFrame:
    """Training time per arm (evaluation excluded), split into phases: sampling, scoring, the KL
    reference pass, forward/backward, optimizer steps and the rest ("other"); plus steps done."""
    runs = sweep.runs.copy()
    phase_columns = [f"train_time/{p}_s" for p in PHASES]
    for column in phase_columns:
        if column not in runs:
            runs[column] = 0.0
    for column in ("train_time_s", "steps"):
        if column not in runs:
            runs[column] = math.nan
    runs["train_time/other_s"] = runs["train_time_s"] - runs[phase_columns].sum(axis=1)
    runs["s_per_step"] = runs["train_time_s"] / runs["steps"].where(runs["steps"] > 0)
    columns = ["train_time_s", *phase_columns, "train_time/other_s", "steps", "s_per_step"]
    return aggregate(Sweep(sweep.name, sweep.path, runs, sweep.curves), columns)


def throughput_table(sweep: Sweep) -> pd.DataFrame:
    """Sampling speed per arm: new tokens per second of sampling and seconds of sampling per step,
    each the mean over a run's steps after the first (which pays one-off warm-up costs), read from
    the curves when the sweep was loaded (CURVE_NUMBERS)."""
    runs = sweep.runs.copy()
    for metric in ("throughput/sampling_tok_s", "time/sampling_s"):
        if metric not in runs:
            runs[metric] = math.nan
    return aggregate(Sweep(sweep.name, sweep.path, runs, sweep.curves), ["throughput/sampling_tok_s", "time/sampling_s"])


def _steady_mean(curves: pd.DataFrame, run: str, metric: str) -> float:
    rows = _train_curve(curves, run, metric)
    if len(rows) > 1:
        rows = rows.iloc[1:]
    return float(rows["value"].mean()) if len(rows) else math.nan


def curve_summary(sweep: Sweep, metric: str, kind: str | None = None, by: str = "arm") -> pd.DataFrame:
    """Mean and std over seeds of ``metric`` per (``by``, step), with the mean training time
    reached at that step (for plotting against wall-clock). Completed and failed runs alike."""
    curves = sweep.curves[sweep.curves["metric"] == metric]
    if kind:
        curves = curves[curves["kind"] == kind]
    curves = curves.merge(sweep.runs[["run", by]], on="run")
    grouped = curves.groupby([by, "step"], sort=False)
    out = grouped.agg(mean=("value", "mean"), std=("value", "std"), n=("value", "count"), train_time_s=("train_time_s", "mean"))
    return out.reset_index()


# ---------------------------------------------------------------- curves on a common grid, and the paper's figures
# The seed-to-seed band the figures draw around the mean: "ci95", the 95% Student-t confidence
# interval of the mean over seeds (mean_ci: none for a single seed), or "minmax", from the lowest to
# the highest seed. The figure's title names the band.
BANDS = {"ci95": "95% t-interval of the mean over seeds", "minmax": "min to max over seeds"}
# The figures the report draws for an experiment: the paper's Figure 4 (training reward over
# wall-clock, DASH vs PPO-Multi vs PPO-Mini), Figure 6b (response length over training, KL on and
# off) and Figure 5 (pass@k against k for the base model, DASH and No-KL). make_report.py --figures
# draws every kind for other experiments too.
FIGURE_KINDS = ("reward_over_time", "length_over_training", "pass_at_k")
PAPER_FIGURES = {
    "ppo_equal_time": ("reward_over_time",),
    "kl_on_off": ("length_over_training",),
    "findings": ("length_over_training",),
    "pass_at_k": ("pass_at_k",),
}
# The per-step training metric each curve figure draws.
FIGURE_METRICS = {"reward_over_time": "reward/mean", "length_over_training": "completions/mean_length"}


def grid_curve(sweep: Sweep, metric: str, kind: str | None = "train", x: str = "train_time_s", by: str = "arm",
               points: int | None = 100, smooth: int = 1) -> pd.DataFrame:
    """The mean over seeds of ``metric`` against ``x`` ("train_time_s": training time reached, or
    "step") on a common grid, per ``by`` (the arm), with its spread over seeds. Each completed run's
    curve (after a trailing mean over ``smooth`` steps, 1: none) is linearly interpolated onto the
    grid, which spans the range of x that every run of the group covers (from the latest first point
    to the earliest last one), so every grid point averages all the group's runs and nothing is
    extrapolated: ``points`` evenly spaced values, or (None) the runs' own x values in that range
    (for steps: the steps they log). One row per (group, grid point): ``by``, ``x``, ``mean``,
    ``ci95`` (half-width of the 95% t interval, NaN for one run), ``low``/``high`` (mean ∓ ci95),
    ``min``/``max`` over the runs and ``n`` (runs). Groups in sweep order; failed runs left out."""
    if smooth < 1:
        raise ValueError(f"smooth={smooth}: a trailing mean over at least 1 step")
    columns = [by, x, "mean", "ci95", "low", "high", "min", "max", "n"]
    curves = sweep.curves[sweep.curves["metric"] == metric]
    if kind:
        curves = curves[curves["kind"] == kind]
    runs = sweep.completed
    curves = curves.merge(runs[["run", by]], on="run")
    out = []
    for group in pd.unique(runs[by]):
        series = []
        for _, curve in curves[curves[by] == group].groupby("run", sort=False):
            curve = curve.dropna(subset=[x, "value"]).sort_values([x, "step"])
            if curve.empty:
                continue
            values = curve["value"].rolling(smooth, min_periods=1).mean()
            series.append((curve[x].to_numpy(float), values.to_numpy(float)))
        if not series:
            continue
        start, end = max(xs[0] for xs, _ in series), min(xs[-1] for xs, _ in series)
        if start > end:
            warnings.warn(f"{sweep.name}: the runs of {group} share no range of {x}; left out of the {metric} curve", stacklevel=2)
            continue
        if points is None:
            grid = np.unique(np.concatenate([xs for xs, _ in series]))
            grid = grid[(grid >= start) & (grid <= end)]
        else:
            grid = np.linspace(start, end, points) if end > start else np.array([start])
        matrix = np.vstack([np.interp(grid, xs, ys) for xs, ys in series])
        for i, point in enumerate(grid):
            mean, half, n = mean_ci(matrix[:, i])
            out.append({by: group, x: float(point), "mean": mean, "ci95": half, "low": mean - half, "high": mean + half,
                        "min": float(matrix[:, i].min()), "max": float(matrix[:, i].max()), "n": n})
    return pd.DataFrame(out, columns=columns)


def pass_at_k_columns(runs: pd.DataFrame, task: str | None = None, prefix: str = "final") -> dict[int, str]:
    """k -> the column ``{prefix}/pass@k`` (the training task's; ``task``: ``{prefix}/{task}/pass@k``),
    sorted by k: the eval.pass_k the runs evaluated."""
    stem = f"{prefix}/{task}/" if task else f"{prefix}/"
    found = {}
    for column in runs.columns:
        match = re.fullmatch(re.escape(stem) + r"pass@(\d+)", str(column))
        if match:
            found[int(match.group(1))] = column
    return dict(sorted(found.items()))


def pass_at_k_tasks(runs: pd.DataFrame) -> list[str | None]:
    """The evaluation tasks with pass@k in the runs' final evaluations: None (the training task's
    own test split) first if it has them, then each extra eval.tasks entry by name."""
    tasks = set()
    for column in runs.columns:
        match = re.fullmatch(r"final/(?:(.+)/)?pass@\d+", str(column))
        if match:
            tasks.add(match.group(1))
    return sorted(tasks, key=lambda t: (t is not None, t or ""))


def pass_at_k_table(sweep: Sweep, task: str | None = None) -> pd.DataFrame:
    """pass@k against k for the base model and each arm, over seeds: the base model from every run's
    step-0 evaluation (base/pass@k; per seed the mean of its runs, as in the accuracy table's base
    row), each arm from its completed runs' final evaluation (final/pass@k; per seed). One row per
    (series, k): ``series`` ("base (step 0)" or the arm), ``paper_method``, ``k``, ``mean``, ``ci95``,
    ``low``/``high``, ``min``/``max``, ``n`` (seeds). An arm's rows also hold its gain over the base model,
    paired by seed (the same run's step 0 and end): ``gain``, ``gain_ci95`` and ``vs_base`` (higher, lower or
    inconclusive), so "does RL widen what the model can solve at large k, or only sharpen pass@1" has an
    interval. Empty when the runs evaluated no pass@k."""
    columns = ["series", "paper_method", "k", "mean", "ci95", "low", "high", "min", "max", "n", "gain", "gain_ci95",
               "vs_base"]
    final = pass_at_k_columns(sweep.runs, task)
    base = pass_at_k_columns(sweep.runs, task, prefix="base")
    done = sweep.completed
    rows = []

    def add(series: str, method: Any, k: int, values: pd.Series, base_values: pd.Series | None = None) -> None:
        values = pd.to_numeric(values, errors="coerce").dropna()
        mean, half, n = mean_ci(values)
        gain = {"gain": math.nan, "gain_ci95": math.nan, "vs_base": ""}
        if base_values is not None:
            diff = paired_difference(values, pd.to_numeric(base_values, errors="coerce"))
            gain = {"gain": diff.mean, "gain_ci95": diff.half_width, "vs_base": verdict(diff, better=None)}
        rows.append({"series": series, "paper_method": method, "k": k, "mean": mean, "ci95": half, "low": mean - half,
                     "high": mean + half, "min": values.min() if n else math.nan, "max": values.max() if n else math.nan, "n": n,
                     **gain})

    if not done.empty:
        for k, column in base.items():
            add("base (step 0)", "Base", k, pd.to_numeric(done[column], errors="coerce").groupby(done["seed"]).mean())
    for arm in pd.unique(sweep.runs["arm"]):
        method = sweep.runs.loc[sweep.runs["arm"] == arm, "paper_method"].iloc[0]
        for k, column in final.items():
            add(str(arm), method, k, per_seed(sweep, arm, column),
                per_seed(sweep, arm, base[k]) if k in base else None)
    table = pd.DataFrame(rows, columns=columns)
    return table[table["n"] > 0].reset_index(drop=True)


def series_labels(sweep: Sweep) -> dict[str, str]:
    """Legend labels for the arms: the paper's method names where every arm has its own one
    (DASH, PPO-Multi, PPO-Mini), else the arm labels (``kl=on``)."""
    arms = list(pd.unique(sweep.runs["arm"]))
    methods = [sweep.runs.loc[sweep.runs["arm"] == a, "paper_method"].iloc[0] for a in arms]
    if all(isinstance(m, str) for m in methods) and len(set(methods)) == len(methods):
        return {a: m for a, m in zip(arms, methods)}
    return {a: a for a in arms}


def band_figure(table: pd.DataFrame, x: str, by: str, band: str = "ci95", labels: Mapping[str, str] | None = None,
                xlabel: str | None = None, ylabel: str = "", title: str = "", ax: Any = None) -> Any:
    """One line per ``by`` value of ``table`` (``grid_curve`` or ``pass_at_k_table``: mean against
    ``x``) with its band (``band``: "ci95" low..high, "minmax" min..max, BANDS) shaded; returns the
    Figure (drawn on ``ax`` if given)."""
    import matplotlib.pyplot as plt

    if band not in BANDS:
        raise ValueError(f"band={band!r}: one of {', '.join(BANDS)}")
    lower, upper = ("low", "high") if band == "ci95" else ("min", "max")
    if ax is None:
        figure, ax = plt.subplots(figsize=(6.4, 4.0))
    else:
        figure = ax.figure
    labels = labels or {}
    for value in pd.unique(table[by]):
        part = table[table[by] == value].sort_values(x)
        (line,) = ax.plot(part[x], part["mean"], marker="o" if len(part) <= 16 else None, ms=3,
                          label=labels.get(value, str(value)))
        ax.fill_between(part[x], part[lower], part[upper], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(table):
        ax.legend(fontsize=8)
    return figure


def curve_figure(sweep: Sweep, metric: str, kind: str | None = "train", x: str = "train_time_s", band: str = "ci95",
                 points: int | None = 100, smooth: int = 1, ylabel: str | None = None, ax: Any = None) -> Any:
    """``metric`` against ``x`` per arm (``grid_curve``: mean over seeds on a common grid) with the
    seed-to-seed band; any experiment's arms. Returns the Figure."""
    table = grid_curve(sweep, metric, kind, x, "arm", points, smooth)
    smoothing = f", trailing mean over {smooth} steps" if smooth > 1 else ""
    title = f"{sweep.name}: {metric}, mean over seeds{smoothing} (band: {BANDS.get(band, band)})"
    xlabel = "training time (s, evaluation excluded)" if x == "train_time_s" else "optimizer step" if x == "step" else x
    return band_figure(table, x, "arm", band, series_labels(sweep), xlabel, ylabel or metric, title, ax)


def reward_over_time_figure(sweep: Sweep, band: str = "ci95", points: int = 100, smooth: int = 1, ax: Any = None) -> Any:
    """The paper's Figure 4: training reward (reward/mean per step) against training time per arm
    (DASH, PPO-Multi, PPO-Mini in ppo_equal_time), the mean over seeds on a common time grid."""
    return curve_figure(sweep, "reward/mean", "train", "train_time_s", band, points, smooth, "training reward", ax)


def length_over_training_figure(sweep: Sweep, band: str = "ci95", smooth: int = 1, ax: Any = None) -> Any:
    """The paper's Figure 6b: mean length (tokens) of the training samples (completions/mean_length)
    against the optimizer step per arm (KL on and off in kl_on_off), mean over seeds."""
    return curve_figure(sweep, "completions/mean_length", "train", "step", band, None, smooth,
                        "response length (tokens), training samples", ax)


def pass_at_k_figure(sweep: Sweep, band: str = "ci95", task: str | None = None, ax: Any = None) -> Any:
    """The paper's Figure 5: pass@k against k (log2 axis) for the base model (step 0) and each arm
    at the end of training, mean over seeds with the band (``pass_at_k_table``)."""
    table = pass_at_k_table(sweep, task)
    labels = {"base (step 0)": "base (step 0)", **series_labels(sweep)}
    where = f"{task} " if task else ""
    title = f"{sweep.name}: {where}pass@k, mean over seeds (band: {BANDS.get(band, band)})"
    figure = band_figure(table, "k", "series", band, labels, "k (samples per problem)", "pass@k", title, ax)
    axes = figure.axes[0] if ax is None else ax
    axes.set_xscale("log", base=2)
    ks = sorted(table["k"].unique())
    if ks:
        axes.set_xticks(ks, [str(k) for k in ks])
    return figure


def figures_for(sweep: Sweep, asked: str | Iterable[str] = "") -> list[str]:
    """The figure kinds (FIGURE_KINDS) the report draws for ``sweep``: its experiment's paper
    figures (PAPER_FIGURES), or every kind if the experiment is ``asked`` for (names, comma-separated,
    or "all"); only the kinds its data can draw: a curve needs its metric (FIGURE_METRICS) in the
    training curves (metrics.jsonl, not in a runs.csv), pass@k needs runs that evaluated it."""
    names = [a.strip() for a in (asked.split(",") if isinstance(asked, str) else asked) if a.strip()]
    kinds = FIGURE_KINDS if "all" in names or sweep.name in names else PAPER_FIGURES.get(sweep.name, ())
    train_metrics = set(sweep.curves.loc[sweep.curves["kind"] == "train", "metric"])
    drawable = []
    for kind in kinds:
        if kind == "pass_at_k":
            if pass_at_k_columns(sweep.runs):
                drawable.append(kind)
        elif FIGURE_METRICS[kind] in train_metrics:
            drawable.append(kind)
    return drawable


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``mean ± half-width of the 95% confidence interval`` strings for reading (``mean ± std``
    where a table has no interval), in the table's column order (the CSV keeps the numbers apart);
    other numbers rounded to ``digits``."""
    out = {}
    for column in table.columns:
        if column.endswith((" std", " ci95")):
            continue
        if column.endswith(" mean"):
            name = column[: -len(" mean")]
            spread = next((f"{name} {s}" for s in ("ci95", "std") if f"{name} {s}" in table), None)
            spreads = table[spread] if spread else [math.nan] * len(table)
            out[name] = [_mean_std(m, s, digits) for m, s in zip(table[column], spreads)]
        elif pd.api.types.is_float_dtype(table[column]):
            out[column] = ["" if _isnan(v) else f"{v:.{digits}f}" for v in table[column]]
        else:
            out[column] = ["" if v is None or _isnan(v) else str(v) for v in table[column]]
    return pd.DataFrame(out)


def _mean_std(mean: Any, std: Any, digits: int) -> str:
    mean, std = float(mean), float(std)
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def save_table(table: pd.DataFrame, report_dir: Path | str, name: str, digits: int = 3) -> Path:
    """``tables/<name>.csv`` (the numbers) and ``tables/<name>.md`` (mean ± 95% CI, for reading)."""
    folder = Path(report_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / f"{name}.csv", index=False)
    (folder / f"{name}.md").write_text(format_table(table, digits).to_markdown(index=False, disable_numparse=True) + "\n")
    return folder / f"{name}.csv"


def save_figure(figure: Any, report_dir: Path | str, name: str) -> Path:
    folder = Path(report_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight")
    return folder / f"{name}.png"


# ---------------------------------------------------------------- paired comparisons
# Metrics compared arm against reference, and which direction is the better one ("higher",
# "lower"; None: neither, the verdict says "higher"/"lower"). The held-out accuracies of every
# evaluation task (accuracy_columns: greedy and sampled) are added in front, higher is better.
COMPARISON_METRICS: dict[str, str | None] = {
    "train_time_s": "lower",
    # Steps reached: what an arm pays in a time budget (ppo_equal_time, filter_vs_dynamic).
    "steps": None,
    "final/greedy_mean_length": None,
    "final/sampled_mean_length": None,
    "train/final_mean_length": None,
    "train/reward_roughness": None,
}
# The arm (its conf/arm file) each experiment compares the others with; an experiment not listed
# compares with its first arm in sweep order (the first of the experiment file's arm list):
# kl_on_off DASH (KL on, as published), ppo_equal_time DASH, wall_clock GRPO,
# generation_batch_size the smallest batch. sft_vs_rl lists SFT-H first, but the paper's claim
# is about RL against SFT, so DASH is its reference, as in findings (SFT, No-KL, GRPO and No-GF each
# against DASH); loss_variants and filter_vs_dynamic compare
# each update rule or sample selector with plain DASH (no KL, no filter), as their files say.
REFERENCE_ARMS = {
    "sft_vs_rl": "dash",
    "findings": "dash",
    "loss_variants": "dash_plain",
    "filter_vs_dynamic": "dash_plain",
}


def comparison_metrics(runs: pd.DataFrame) -> dict[str, str | None]:
    """The metrics a comparison table covers for these runs, each with its better direction."""
    accuracies = [c for c in accuracy_columns(runs) if re.search(r"(greedy|sampled)_acc$", c)]
    metrics: dict[str, str | None] = {c: "higher" for c in accuracies}
    metrics.update({c: better for c, better in COMPARISON_METRICS.items() if c in runs})
    return metrics


def reference_arm(sweep: Sweep) -> str:
    """The arm label of the sweep's reference arm: REFERENCE_ARMS' arm file for the experiment,
    else the first arm in sweep order. A listed arm file the sweep did not run is warned about."""
    runs = sweep.runs
    if runs.empty:
        raise ValueError(f"{sweep.name}: no runs to compare")
    wanted = REFERENCE_ARMS.get(sweep.name)
    if wanted is not None:
        hits = runs[runs["arm_file"] == wanted] if "arm_file" in runs else runs.iloc[0:0]
        if len(hits):
            return str(hits["arm"].iloc[0])
        warnings.warn(f"{sweep.name}: its reference arm {wanted} is not among the runs; comparing with the first arm, "
                      f"{runs['arm'].iloc[0]}", stacklevel=2)
    return str(runs["arm"].iloc[0])


def per_seed(sweep: Sweep, arm: str, column: str) -> pd.Series:
    """One arm's ``column`` per seed, over its completed runs (the mean if a seed ran twice)."""
    done = sweep.completed
    done = done[done["arm"] == arm]
    if column not in done or done.empty:
        return pd.Series(dtype=float)
    values = pd.to_numeric(done[column], errors="coerce")
    return values.groupby(done["seed"]).mean()


def _paired(sweep: Sweep, arm: str, reference: str, metric: str) -> tuple[PairedDifference, pd.Series, pd.Series]:
    """The paired difference arm - reference on ``metric``, and each side's values on the paired seeds."""
    a, r = per_seed(sweep, arm, metric), per_seed(sweep, reference, metric)
    diff = paired_difference(a, r)
    seeds = list(diff.seeds)
    return diff, a.loc[seeds], r.loc[seeds]


def _difference_columns(diff: PairedDifference, arm_values: pd.Series, reference_values: pd.Series) -> dict[str, Any]:
    """The columns a paired comparison shows: pairs, both means over the paired seeds, the difference's interval."""
    return {"n_pairs": diff.n, "reference_mean": reference_values.mean(), "arm_mean": arm_values.mean(),
            "difference mean": diff.mean, "difference ci95": diff.half_width,
            "difference low": diff.low, "difference high": diff.high}


def comparison_table(sweep: Sweep, reference: str | None = None, metrics: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """Each arm against the reference arm (``reference_arm`` by default), metric by metric: the
    paired difference arm - reference over the seeds both completed, its 95% t interval and the
    verdict ("better"/"worse" only when the interval excludes 0, else "inconclusive"). The two
    means are over the paired seeds, so their difference is the difference's mean."""
    reference = reference_arm(sweep) if reference is None else reference
    metrics = comparison_metrics(sweep.runs) if metrics is None else dict(metrics)
    keys = [k for k in _arm_keys(sweep) if k not in sweep.arm_axes]
    rows = []
    for arm, group in sweep.runs.groupby("arm", sort=False):
        if arm == reference:
            continue
        for metric, better in metrics.items():
            diff, arm_values, reference_values = _paired(sweep, arm, reference, metric)
            row = {k: group.iloc[0][k] for k in keys}
            row.update({
                "reference": reference,
                "metric": metric,
                "better": {"higher": "higher", "lower": "lower", None: "-"}[better],
                **_difference_columns(diff, arm_values, reference_values),
                "verdict": verdict(diff, better),
            })
            rows.append(row)
    columns = [*keys, "reference", "metric", "better", "n_pairs", "reference_mean", "arm_mean", "difference mean",
               "difference ci95", "difference low", "difference high", "verdict"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- the paper's findings, as verdicts
@dataclass(frozen=True)
class Claim:
    """One measurable part of a finding: ``arm - reference`` on ``metric`` in ``experiment``'s sweep
    (arms named by their conf/arm file) goes the paper's way, ``sign`` ("higher" | "lower"). A metric
    with ``*`` stands for each matching column (``final/*/greedy_acc``: every extra evaluation task).
    Only ``primary`` claims decide the finding's verdict; the others are shown beside it."""

    experiment: str
    arm: str
    reference: str
    metric: str
    sign: str
    paper: str
    primary: bool = True


@dataclass(frozen=True)
class Finding:
    name: str
    claims: tuple[Claim, ...]


_DASH_SFT_H = "DASH 27.2 vs SFT-H 8.0 (MATH-500, 0.5B); 64.6 vs 24.0 (3B)"
_DASH_SFT_M = "DASH 27.2 vs SFT-M 24.0 (MATH-500, 0.5B); 64.6 vs 53.0 (3B)"
_MULTI = "PPO-Multi 28.8 vs DASH 27.2 (MATH-500, 0.5B); 54.0 vs 54.0 (1.5B)"
_MINI = "PPO-Mini 29.8 vs DASH 27.2 (MATH-500, 0.5B); 36.0 vs 54.0 (1.5B)"
_NO_KL = "No-KL 31.4 vs DASH 27.2 (MATH-500, 0.5B); 56.8 vs 54.0 (1.5B)"
# The paper's four findings (analysis/paper_results.csv, and its figures for length and noise), each as
# claims on the findings and ppo_equal_time sweeps (`make findings`). Accuracy is claimed for greedy and
# sampled decoding alike (the paper reports one accuracy); the extra evaluation tasks (the OOD split,
# the paper's GSM8K) are shown, not decisive.
FINDINGS = (
    Finding("1. On-policy RL beats SFT", (
        Claim("findings", "dash", "sft_reference", "final/greedy_acc", "higher", _DASH_SFT_H),
        Claim("findings", "dash", "sft_reference", "final/sampled_acc", "higher", _DASH_SFT_H),
        Claim("findings", "dash", "sft_teacher", "final/greedy_acc", "higher", _DASH_SFT_M),
        Claim("findings", "dash", "sft_teacher", "final/sampled_acc", "higher", _DASH_SFT_M),
        Claim("findings", "dash", "sft_reference", "final/*/greedy_acc", "higher", "DASH 31.1 vs SFT-H 7.2 (GSM8K, 0.5B)", False),
        Claim("findings", "dash", "sft_teacher", "final/*/greedy_acc", "higher", "DASH 31.1 vs SFT-M 22.7 (GSM8K, 0.5B)", False),
    )),
    Finding("2a. PPO-Multi at equal time: a little more accuracy, noisier training", (
        Claim("ppo_equal_time", "ppo_multi", "dash", "final/greedy_acc", "higher", _MULTI),
        Claim("ppo_equal_time", "ppo_multi", "dash", "final/sampled_acc", "higher", _MULTI),
        Claim("ppo_equal_time", "ppo_multi", "dash", "train/reward_roughness", "higher", "noisier reward curves (Figure 4)"),
        Claim("ppo_equal_time", "ppo_multi", "dash", "final/*/greedy_acc", "higher", "PPO-Multi 31.5 vs DASH 31.1 (GSM8K, 0.5B)", False),
    )),
    Finding("2b. PPO-Mini at equal time: a little more accuracy, noisier training", (
        Claim("ppo_equal_time", "ppo_mini", "dash", "final/greedy_acc", "higher", _MINI),
        Claim("ppo_equal_time", "ppo_mini", "dash", "final/sampled_acc", "higher", _MINI),
        Claim("ppo_equal_time", "ppo_mini", "dash", "train/reward_roughness", "higher", "noisier reward curves (Figure 4)"),
        Claim("ppo_equal_time", "ppo_mini", "dash", "final/*/greedy_acc", "higher", "PPO-Mini 31.6 vs DASH 31.1 (GSM8K, 0.5B)", False),
    )),
    Finding("3. Without KL: higher accuracy, shorter answers, less time", (
        Claim("findings", "dash_no_kl", "dash", "final/greedy_acc", "higher", _NO_KL),
        Claim("findings", "dash_no_kl", "dash", "final/sampled_acc", "higher", _NO_KL),
        Claim("findings", "dash_no_kl", "dash", "final/sampled_mean_length", "lower", "about 548 vs 627 tokens at the end (0.5B)"),
        Claim("findings", "dash_no_kl", "dash", "train_time_s", "lower", "No-KL 5.7 h vs DASH 6.6 h (0.5B)"),
        Claim("findings", "dash_no_kl", "dash", "final/*/greedy_acc", "higher", "No-KL 34.0 vs DASH 31.1 (GSM8K, 0.5B)", False),
    )),
    Finding("4. DASH cuts training time (accuracy about equal)", (
        Claim("findings", "dash", "grpo", "train_time_s", "lower", "DASH 6.6 h vs GRPO 38.9 h (-83%, 0.5B)"),
        Claim("findings", "dash_no_filter", "grpo", "train_time_s", "lower", "No-GF 6.9 h vs GRPO 38.9 h (0.5B)", False),
        Claim("findings", "dash", "dash_no_filter", "train_time_s", "lower", "DASH 6.6 h vs No-GF 6.9 h (0.5B)", False),
        Claim("findings", "dash", "grpo", "final/greedy_acc", "higher", "DASH 27.2 vs GRPO 27.6 (MATH-500: about equal)", False),
        Claim("findings", "dash", "grpo", "final/sampled_acc", "higher", "DASH 27.2 vs GRPO 27.6 (MATH-500: about equal)", False),
    )),
)


def _claim_metrics(claim: Claim, runs: pd.DataFrame) -> list[str]:
    if "*" not in claim.metric:
        return [claim.metric]
    pattern = re.compile(re.escape(claim.metric).replace(r"\*", r"[^/]+") + "$")
    return [c for c in runs.columns if pattern.match(c)]


def claim_outcome(diff: PairedDifference, sign: str) -> str:
    """"agrees" or "disagrees" with the paper's direction when the paired difference's interval
    excludes 0 (and has at least MIN_PAIRS pairs), else "inconclusive"."""
    said = verdict(diff, sign)
    return {"better": "agrees", "worse": "disagrees"}.get(said, said)


def finding_verdict(outcomes: Iterable[str]) -> str:
    """Over a finding's primary claims: "reproduced" when every one agrees with the paper,
    "contradicted" when at least one disagrees and none agrees, else "inconclusive"."""
    outcomes = list(outcomes)
    if outcomes and all(o == "agrees" for o in outcomes):
        return "reproduced"
    if "disagrees" in outcomes and "agrees" not in outcomes:
        return "contradicted"
    return "inconclusive"


def findings_table(sweeps: Iterable[Sweep], findings: Iterable[Finding] = FINDINGS) -> pd.DataFrame:
    """The paper's findings, one row per claim: the paper's numbers, ours (reference and arm means
    over the paired seeds, the paired difference and its 95% t interval, and the arm/reference ratio
    averaged over seeds), the claim's outcome and its finding's verdict. A finding whose sweeps or
    arms are missing is left out."""
    by_name = {sweep.name: sweep for sweep in sweeps}
    rows = []
    for finding in findings:
        found = []
        for claim in finding.claims:
            sweep = by_name.get(claim.experiment)
            if sweep is None or "arm_file" not in sweep.runs:
                continue
            labels = {f: sweep.runs.loc[sweep.runs["arm_file"] == f, "arm"] for f in (claim.arm, claim.reference)}
            if any(label.empty for label in labels.values()):
                continue
            arm, reference = (str(labels[f].iloc[0]) for f in (claim.arm, claim.reference))
            for metric in _claim_metrics(claim, sweep.runs):
                diff, a, r = _paired(sweep, arm, reference, metric)
                ratio = mean_ci((a / r).replace([np.inf, -np.inf], np.nan))
                found.append({
                    "finding": finding.name, "experiment": claim.experiment, "claim": f"{claim.arm} vs {claim.reference}",
                    "metric": metric, "paper says": f"{claim.sign} ({claim.paper})", "primary": claim.primary,
                    **_difference_columns(diff, a, r),
                    "ratio mean": ratio[0], "ratio ci95": ratio[1],
                    "outcome": claim_outcome(diff, claim.sign),
                })
        primary = [row["outcome"] for row in found if row["primary"]]
        for row in found:
            row["verdict"] = finding_verdict(primary) if primary else "inconclusive"
        rows += found
    columns = ["finding", "verdict", "experiment", "claim", "metric", "paper says", "primary", "n_pairs", "reference_mean",
               "arm_mean", "difference mean", "difference ci95", "difference low", "difference high", "ratio mean",
               "ratio ci95", "outcome"]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- provenance of pooled runs
class PoolingWarning(UserWarning):
    """Runs pooled into one table were made by different code, libraries or machines."""


def provenance_warnings(sweep: Sweep) -> list[str]:
    """One line per provenance field (POOLING_FIELDS: commit, dirty, library versions, python,
    cpu, gpu) in which the sweep's completed runs differ, naming the values and how many runs have
    each; one for runs resumed under other code than they started with; one for runs made from a
    dirty tree (their commit alone does not say what code ran); one for runs that record no
    provenance (made before it was recorded) beside runs that do; and one per seed whose runs'
    base-model evaluations (base/greedy_acc, greedy decoding at step 0) differ, since pairing by seed
    assumes the same base model and prompts."""
    done = sweep.completed
    lines = []
    columns = [f"provenance/{f}" for f in POOLING_FIELDS]
    if done.empty or not any(c in done for c in columns):
        return lines
    recorded = done[columns[0]].notna() if columns[0] in done else pd.Series(False, index=done.index)
    if not recorded.all():
        lines.append(f"{sweep.name}: {int((~recorded).sum())} of {len(done)} runs record no provenance; "
                     "pooling is checked among the others only")
    for field, column in zip(POOLING_FIELDS, columns):
        if column not in done:
            continue
        values = done.loc[recorded, column].map(lambda v: "none" if v is None or _isnan(v) else str(v))
        if values.nunique() > 1:
            counts = values.value_counts(sort=False)
            shown = ", ".join(f"{(v[:12] if field == 'commit' else v)} ({n} runs)" for v, n in counts.items())
            lines.append(f"{sweep.name}: pooled runs differ in {field}: {shown}")
    if "provenance/dirty" in done:
        dirty = int(done.loc[recorded, "provenance/dirty"].map(lambda v: str(v) == "True").sum())  # not "unknown"
        if dirty:
            lines.append(f"{sweep.name}: {dirty} of {len(done)} runs were made from a dirty tree (uncommitted changes): "
                         "their commit alone does not say what code ran")
    if "base/greedy_acc" in done:
        for seed, base in pd.to_numeric(done["base/greedy_acc"], errors="coerce").groupby(done["seed"], sort=True):
            base = base.dropna()
            if len(base) > 1 and base.max() - base.min() > 1e-9:
                lines.append(f"{sweep.name}: seed {_fmt(seed)}: the runs' base-model greedy accuracy differs "
                             f"({', '.join(f'{v:.4g}' for v in sorted(base.unique()))}): their pairs may not share a base "
                             "model or prompts")
    if "provenance/resumed_from" in done:
        resumed = done[done["provenance/resumed_from"].notna()]
        for _, run in resumed.iterrows():
            lines.append(f"{sweep.name}: run {run['run']} was resumed under other {run['provenance/resumed_from']} "
                         "than it started with")
    return lines


def check_provenance(sweep: Sweep) -> list[str]:
    """``provenance_warnings``, each also raised as a PoolingWarning (warnings.warn)."""
    lines = provenance_warnings(sweep)
    for line in lines:
        warnings.warn(line, PoolingWarning, stacklevel=2)
    return lines


# ---------------------------------------------------------------- the compact per-run summary (runs.csv)
# The first columns of runs.csv, in this order; every other number of the runs table follows.
RUN_COLUMNS = ["experiment", "run", "arm", "arm_file", "paper_method", *AXES, "seed", "status", "error"]


def runs_summary(sweeps: Iterable[Sweep]) -> pd.DataFrame:
    """One row per run of every sweep: its experiment (the sweep's name), arm, axes, seed, status,
    every number of its summary.json (final/*, base/*, train_time_s, train_time/<phase>_s,
    steps, ...), the per-run numbers read from its curves (CURVE_NUMBERS) and its provenance
    (provenance/*). Every table of the report rebuilds from this alone (``load_runs_csv``)."""
    frames = []
    for sweep in sweeps:
        runs = sweep.runs.copy()
        runs.insert(0, "experiment", sweep.name)
        frames.append(runs)
    if not frames:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = pd.concat(frames, ignore_index=True)
    scalar = [c for c in runs.columns if not runs[c].map(lambda v: isinstance(v, (dict, list, tuple))).any()]
    runs = runs[scalar]
    for column in RUN_COLUMNS:
        if column not in runs:
            runs[column] = None
    return runs[RUN_COLUMNS + [c for c in runs.columns if c not in RUN_COLUMNS]]


def save_runs_csv(sweeps: Iterable[Sweep], path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs_summary(sweeps).to_csv(path, index=False)
    return path


def load_runs_csv(path: Path | str) -> list[Sweep]:
    """The sweeps of a runs.csv (``runs_summary``), one per experiment in file order, with the
    runs exactly as ``load_sweep`` gave them and no curves (the report skips the curve figures)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no runs file {path}")
    table = pd.read_csv(path, keep_default_na=True)
    missing = [c for c in ("experiment", "run", "arm", "seed", "status") if c not in table]
    if missing:
        raise ValueError(f"{path} is not a runs.csv from make analysis: it lacks the column(s) {', '.join(missing)}")
    sweeps = []
    for name, runs in table.groupby("experiment", sort=False):
        runs = runs.drop(columns="experiment").reset_index(drop=True)
        # Per experiment: over the whole file, ints beside another experiment's empty cells come back as 8.0.
        for column in ("run", "arm", "arm_file", "paper_method", "error", *AXES, "seed"):
            if column in runs:
                runs[column] = runs[column].astype(object).map(_csv_value)
        runs = _drop_empty(runs)
        sweeps.append(Sweep(name=str(name), path=str(path), runs=runs, curves=_curves_frame([])))
    return sweeps


def _csv_value(value: Any) -> Any:
    """A value read back from CSV as load_sweep had it from YAML: None for empty, 8 not 8.0."""
    if value is None or _isnan(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def report_name(source: Path | str) -> str:
    """The default report folder's name for a source of sweeps: the folder's name, or for a
    runs.csv the name of the folder holding it (docs/findings/runs.csv -> findings)."""
    source = Path(source).resolve()
    return source.parent.name if source.suffix == ".csv" else source.name


def load_sweeps(source: Path | str) -> list[Sweep]:
    """Every sweep of ``source``: a sweep folder, a folder of sweeps (one ``make sweep``), or a
    runs.csv written by ``make analysis`` (``load_runs_csv``)."""
    source = Path(source)
    if source.suffix == ".csv":
        return load_runs_csv(source)
    found = find_sweeps(source)
    if not found:
        raise FileNotFoundError(f"no sweep (multirun.yaml) under {source}")
    return [load_sweep(p) for p in found]


# ---------------------------------------------------------------- the paper's numbers
def paper_results() -> pd.DataFrame:
    """Every number of the paper's main tables (analysis/paper_results.csv, from arXiv 2505.17218)."""
    results = pd.read_csv(PAPER_RESULTS)
    results["method"] = results["method"].replace(PAPER_METHOD_ALIASES)
    return results


def paper_setting(runs: pd.DataFrame) -> float | None:
    """The paper's model size (billions) if every run is in its setting (Qwen2.5 on MATH), else None."""
    sizes = set()
    for _, run in runs.iterrows():
        match = re.fullmatch(r"qwen2\.5-(\d+(?:\.\d+)?)b", str(run["model"]).lower())
        if not match or run["task"] not in PAPER_TASKS:
            return None
        sizes.add(float(match.group(1)))
    return sizes.pop() if len(sizes) == 1 else None


def paper_beside(table: pd.DataFrame, sweep: Sweep) -> pd.DataFrame:
    """``table`` with a ``paper <metric>`` column beside each of our columns the paper reports,
    filled where the sweep's setting is the paper's (same model size, MATH) and empty elsewhere."""
    size = paper_setting(sweep.runs)
    results = paper_results()
    out = table.copy()
    for ours, (theirs, scale) in PAPER_METRICS.items():
        if f"{ours} mean" not in out:
            continue
        values = []
        for method in out["paper_method"]:
            hit = results[(results["method"] == method) & (results["metric"] == theirs) & (results["model_size_b"] == size)]
            values.append(float(hit["value"].iloc[0]) * scale if size is not None and len(hit) else math.nan)
        after = f"{ours} ci95" if f"{ours} ci95" in out else f"{ours} std"
        out.insert(out.columns.get_loc(after) + 1, f"paper {ours}", values)
    return out


def paper_reference(sweep: Sweep) -> pd.DataFrame:
    """The paper's numbers for the arms this sweep runs (every model size), for reading beside
    ours when the setting differs: one row per (method, model size), one column per metric. A sweep on
    a code task gets the code tables (MBPP+ pass@1/8, training minutes), any other the math ones."""
    methods = set(sweep.runs["paper_method"].dropna()) | {"Base"}
    results = paper_results()
    on_code = bool(set(sweep.runs["task"].dropna()) & set(CODE_TASKS))
    results = results[results["method"].isin(methods) & (results["table"].isin(PAPER_CODE_TABLES) == on_code)]
    if results.empty:
        return pd.DataFrame(columns=["method", "model_size_b"])
    wide = results.drop_duplicates(["method", "model_size_b", "metric"]).pivot(
        index=["method", "model_size_b"], columns="metric", values="value"
    )
    return wide.reset_index()


# ---------------------------------------------------------------- W&B
class OfflineRun:
    """An offline W&B run file seen through the attributes of ``wandb.apis.public.Run`` that
    ``load_wandb_runs`` reads (id, name, config, summary, scan_history): so the online loader is
    tested on real offline runs (read by rlreason.wandb_history), with no server."""

    def __init__(self, path: Path | str):
        from rlreason.wandb_history import read_history, read_run_info

        info = read_run_info(path)
        self.id, self.name, self.group = info["id"], info["name"], info["group"]
        self.config = info["config"]
        self.summary = info["summary"]
        self._history = read_history(path)

    def scan_history(self) -> Iterator[dict[str, Any]]:
        return iter(self._history)


def load_wandb_offline(root: Path | str, name: str = "wandb-offline") -> Sweep:
    """Every offline run file (run-<id>.wandb) under ``root``, as a Sweep."""
    files = sorted(Path(root).glob("**/run-*.wandb"))
    return load_wandb_runs([OfflineRun(f) for f in files], name=name, path=str(root))


def load_wandb_project(project: str, entity: str | None = None, filters: dict[str, Any] | None = None, name: str | None = None) -> Sweep:
    """The runs of a W&B project (``filters``: W&B's MongoDB-style query, e.g.
    ``{"group": "dash-kl_off-filter_on"}`` or ``{"tags": "task:math"}``), as a Sweep."""
    import wandb

    path = f"{entity}/{project}" if entity else project
    runs = wandb.Api().runs(path, filters=filters or {})
    return load_wandb_runs(runs, name=name or project, path=path)


def load_wandb_runs(runs: Iterable[Any], name: str, path: str = "") -> Sweep:
    """Runs with W&B's public-API attributes into the same tables as ``load_sweep``: the axes
    from each run's config (the resolved config.yaml that training logged), the summary, and
    the history (eval/* keys are evaluation rows, the rest training rows)."""
    rows, curves = [], []
    for order, run in enumerate(runs):
        config = dict(run.config)
        summary = {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
        summary = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))}
        run_name = f"{run.name} ({run.id})" if getattr(run, "name", None) else run.id
        metric_rows = []
        for record in run.scan_history():
            step = record.get("_step")
            values = {k: v for k, v in record.items() if not k.startswith("_")}
            train = {k: v for k, v in values.items() if not k.startswith("eval/")}
            evals = {k: v for k, v in values.items() if k.startswith("eval/")}
            if train:
                metric_rows.append({"kind": "train", "step": step, **train})
            if evals:
                metric_rows.append({"kind": "eval", "step": step, **evals})
        # The phase totals from the history, so a run that stopped before its final summary has them too.
        for phase in PHASES:
            steps = [r[f"time/{phase}_s"] for r in metric_rows if r["kind"] == "train" and r.get(f"time/{phase}_s") is not None]
            if steps:
                summary[f"train_time/{phase}_s"] = sum(steps)
        rows.append(_run_row(run_name, config, {"status": "incomplete", **summary}, order=order))
        curves.extend(_curve_rows(run_name, metric_rows))
    curves_frame = _curves_frame(curves)
    return Sweep(name=name, path=path, runs=_runs_frame(rows, curves_frame), curves=curves_frame)
