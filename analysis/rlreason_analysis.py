"""Sweeps into pandas, and the tables and figures of the paper's results.

A sweep is a folder Hydra's multirun wrote (``multirun.yaml`` plus one folder per job). Each run
becomes one row of ``Sweep.runs``: the ablation axes read from the run's saved ``config.yaml``
(never from folder names), its seed, status and every number of its ``summary.json``.
``Sweep.curves`` is the long table of its per-step metrics (``metrics.jsonl``): one row per
(run, kind, step, metric) with the training time reached at that step. ``load_wandb_project``
builds the same two tables from a W&B project, for runs logged online.

Arms are the axes that differ between the sweep's runs (the seed aside); tables give the mean and
the standard deviation over seeds of each arm. Imported by the notebooks in this folder, which run
with this folder or the repository root as working directory.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

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
}
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
        rows.append(_run_row(name, config, summary, order=_job_number(run_dir)))
        metrics_path = run_dir / "metrics.jsonl"
        if metrics_path.exists():
            curves.extend(_curve_rows(name, _read_jsonl(metrics_path)))
    return Sweep(name=_sweep_name(path), path=str(path), runs=_runs_frame(rows), curves=_curves_frame(curves))


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
        if key not in row and key not in ("algorithm", "kl", "filter", "task", "model", "seed"):
            row[key] = value
    return row


def _runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    runs = pd.DataFrame(rows)
    if runs.empty:
        return pd.DataFrame(columns=["run", *AXES, "seed", "status", "arm", "paper_method"])
    runs = runs.sort_values(["order", "run"], kind="stable").drop(columns="order").reset_index(drop=True)
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
    """The axes with more than one value among the runs (missing counts as a value)."""
    return [a for a in AXES if a in runs and runs[a].astype("object").where(runs[a].notna(), "-").nunique() > 1]


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


def _arm_frame(sweep: Sweep) -> pd.DataFrame:
    """The columns that identify an arm in tables: the varying axes, then arm and paper name."""
    return sweep.runs[["run", *sweep.arm_axes, "arm", "paper_method", "seed"]]


# ---------------------------------------------------------------- tables (mean and spread over seeds)
def aggregate(sweep: Sweep, columns: list[str]) -> pd.DataFrame:
    """Per arm (in sweep order): seeds completed, runs failed, then mean and std of each column.

    Only completed runs enter the means; ``n_failed`` keeps the others in sight.
    """
    runs = sweep.runs
    keys = [*sweep.arm_axes, "arm", "paper_method"]
    out = []
    for arm, group in runs.groupby("arm", sort=False):
        done = group[group["status"] == "completed"]
        row = {k: group.iloc[0][k] for k in keys}
        row["n_seeds"] = int(done["seed"].nunique())
        row["n_failed"] = int(len(group) - len(done))
        for column in columns:
            values = pd.to_numeric(done[column], errors="coerce") if column in done else pd.Series(dtype=float)
            row[f"{column} mean"] = values.mean()
            row[f"{column} std"] = values.std(ddof=1) if values.count() > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


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
    row: dict[str, Any] = {a: None for a in sweep.arm_axes}
    row.update(arm="base (step 0)", paper_method="Base", n_seeds=len(per_seed), n_failed=0)
    for column, base in base_columns.items():
        row[f"{column} mean"] = per_seed[base].mean()
        row[f"{column} std"] = per_seed[base].std(ddof=1) if len(per_seed) > 1 else math.nan
    return pd.DataFrame([row])


def length_table(sweep: Sweep) -> pd.DataFrame:
    """Response length per arm: held-out completions at the end (greedy, sampled) and the training
    samples of the last steps (mean of completions/mean_length over the last quarter of steps)."""
    runs = sweep.runs.copy()
    runs["train/final_mean_length"] = [_tail_mean(sweep.curves, r, "completions/mean_length") for r in runs["run"]]
    columns = [c for c in ("final/greedy_mean_length", "final/sampled_mean_length", "train/final_mean_length") if c in runs]
    return aggregate(Sweep(sweep.name, sweep.path, runs, sweep.curves), columns)


def _tail_mean(curves: pd.DataFrame, run: str, metric: str, fraction: float = 0.25) -> float:
    rows = curves[(curves["run"] == run) & (curves["kind"] == "train") & (curves["metric"] == metric)].sort_values("step")
    if rows.empty:
        return math.nan
    return float(rows["value"].tail(max(1, math.ceil(len(rows) * fraction))).mean())


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
    each the mean over a run's steps after the first (which pays one-off warm-up costs)."""
    runs = sweep.runs.copy()
    for metric in ("throughput/sampling_tok_s", "time/sampling_s"):
        runs[metric] = [_steady_mean(sweep.curves, r, metric) for r in runs["run"]]
    return aggregate(Sweep(sweep.name, sweep.path, runs, sweep.curves), ["throughput/sampling_tok_s", "time/sampling_s"])


def _steady_mean(curves: pd.DataFrame, run: str, metric: str) -> float:
    rows = curves[(curves["run"] == run) & (curves["kind"] == "train") & (curves["metric"] == metric)].sort_values("step")
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


def format_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``mean ± std`` strings for reading, in the table's column order (the CSV keeps the two
    numbers apart); other numbers rounded to ``digits``."""
    out = {}
    for column in table.columns:
        if column.endswith(" std"):
            continue
        if column.endswith(" mean"):
            name = column[: -len(" mean")]
            out[name] = [_mean_std(m, s, digits) for m, s in zip(table[column], table[f"{name} std"])]
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
    """``tables/<name>.csv`` (the numbers) and ``tables/<name>.md`` (mean ± std, for reading)."""
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
        out.insert(out.columns.get_loc(f"{ours} std") + 1, f"paper {ours}", values)
    return out


def paper_reference(sweep: Sweep) -> pd.DataFrame:
    """The paper's numbers for the arms this sweep runs (every model size), for reading beside
    ours when the setting differs: one row per (method, model size), one column per metric."""
    methods = set(sweep.runs["paper_method"].dropna()) | {"Base"}
    results = paper_results()
    results = results[results["method"].isin(methods) & ~results["metric"].str.startswith("mbpp")]
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
    return Sweep(name=name, path=path, runs=_runs_frame(rows), curves=_curves_frame(curves))
