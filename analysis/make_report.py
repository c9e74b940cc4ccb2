"""Execute the analysis notebooks headlessly on a sweep and collect a report folder.

    python analysis/make_report.py [SWEEP_DIR] [--report REPORT_DIR] [--figures all|EXPERIMENT,...] [--band ci95|minmax]
    python analysis/make_report.py --runs RUNS_CSV [--report REPORT_DIR]

SWEEP_DIR: a sweep, or a folder of sweeps (one ``make sweep``); default: the newest folder of
multirun/. RUNS_CSV: the runs.csv of an earlier report (one row per run), which rebuilds every
table without the sweep folders (the curve figures need the per-step metrics, so they are left
out). The report (default reports/<name of SWEEP_DIR, or of the folder holding RUNS_CSV>/) gets
runs.csv (the compact per-run summary), tables/ (CSV and markdown), figures/ (PNG), the executed
notebooks and a README.md that shows them all, headed by any provenance warning (runs pooled from
different code or libraries). The paper's figures (figures.ipynb) are drawn for their experiments
(ppo_equal_time: reward over training time, kl_on_off: length over training, pass_at_k: pass@k);
``--figures`` draws every kind for other experiments too ("all": every sweep), ``--band`` picks the
seed-to-seed band (ci95: the 95% t-interval of the mean, the default; minmax: lowest to highest
seed). ``make analysis`` runs this.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ANALYSIS_DIR = Path(__file__).resolve().parent
ROOT = ANALYSIS_DIR.parent
NOTEBOOKS = ("accuracy.ipynb", "response_length.ipynb", "wall_clock.ipynb", "comparisons.ipynb", "figures.ipynb")
sys.path.insert(0, str(ANALYSIS_DIR))

import rlreason_analysis as ra  # noqa: E402


def make_report(sweep_dir: Path | str | None = None, report_dir: Path | str | None = None, timeout_s: int = 600,
                figures: str = "", band: str = "ci95") -> Path:
    """Run every notebook on ``sweep_dir`` (a sweep, a folder of sweeps or a runs.csv) with the
    repository root as working directory; returns the report folder. ``figures``: experiments
    (comma-separated, or "all") that get every kind of figure (rlreason_analysis.FIGURE_KINDS), not
    only their paper figures; ``band``: "ci95" or "minmax" (rlreason_analysis.BANDS). A failing cell
    raises (nbclient's CellExecutionError), naming the cell."""
    if band not in ra.BANDS:
        raise ValueError(f"band {band!r}: one of {', '.join(ra.BANDS)}")
    sweep_dir = Path(sweep_dir) if sweep_dir else ra.latest_sweep(ROOT / "multirun")
    sweeps = ra.load_sweeps(sweep_dir)  # FileNotFoundError / ValueError: no sweep there, or not a runs.csv
    report_dir = Path(report_dir) if report_dir else ROOT / "reports" / ra.report_name(sweep_dir)
    (report_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    runs_csv = report_dir / "runs.csv"
    if runs_csv.resolve() != Path(sweep_dir).resolve():
        ra.save_runs_csv(sweeps, runs_csv)
    provenance = [line for sweep in sweeps for line in ra.check_provenance(sweep)]  # also warned (PoolingWarning)
    env = {
        "RLREASON_SWEEP_DIR": str(Path(sweep_dir).resolve()),
        "RLREASON_REPORT_DIR": str(report_dir.resolve()),
        # This checkout's rlreason first (the W&B reader, the config resolver), also from a worktree.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "RLREASON_FIGURES": figures,
        "RLREASON_BAND": band,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        for name in NOTEBOOKS:
            notebook = nbformat.read(ANALYSIS_DIR / name, as_version=4)
            print(f"running {name} on {sweep_dir}", file=sys.stderr)
            NotebookClient(notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
            nbformat.write(notebook, report_dir / "notebooks" / name)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _write_index(Path(sweep_dir), report_dir, provenance)
    return report_dir


def _write_index(sweep_dir: Path, report_dir: Path, warnings: list[str] = ()) -> None:
    """README.md: the provenance warnings, then every table (markdown) and figure of the report."""
    lines = [
        f"# Report: {sweep_dir}", "",
        "Mean ± half-width of the 95% Student-t confidence interval over seeds (the CSV files next to each table "
        "hold the numbers, the std too). `*_comparisons`: each arm against the experiment's reference arm, the "
        "paired difference over seeds with its 95% interval; *better*/*worse* only when the interval excludes 0. "
        "[runs.csv](runs.csv): one row per run, every table rebuilds from it "
        "(`python analysis/make_report.py --runs runs.csv`).", "",
    ]
    if warnings:
        lines += ["## Provenance warnings", "", *[f"- {w}" for w in warnings], ""]
    tables = sorted((report_dir / "tables").glob("*.md"))
    figures = sorted((report_dir / "figures").glob("*.png"))
    for table in tables:
        if "_curve_" in table.name or "_length_by_" in table.name:
            continue  # long per-step tables: CSV for plotting, not for reading
        lines += [f"## {table.stem}", "", table.read_text(), f"CSV: [tables/{table.stem}.csv](tables/{table.stem}.csv)", ""]
    for figure in figures:
        lines += [f"## {figure.stem}", "", f"![{figure.stem}](figures/{figure.name})", ""]
    lines += ["Executed notebooks: " + ", ".join(f"[{n}](notebooks/{n})" for n in NOTEBOOKS), ""]
    (report_dir / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="?", help="a sweep or a folder of sweeps (default: newest in multirun/)")
    parser.add_argument("--runs", help="rebuild the tables from this runs.csv (an earlier report's) instead of a sweep folder")
    parser.add_argument("--report", help="report folder (default: reports/<sweep folder name>/)")
    parser.add_argument("--figures", default="", help="experiments (comma-separated, or all) that get every kind of figure")
    parser.add_argument("--band", default="ci95", help="the figures' seed-to-seed band: ci95 (default) or minmax")
    args = parser.parse_args()
    if args.runs and args.sweep_dir:
        parser.error("give a sweep folder or --runs, not both")
    try:
        report = make_report(args.runs or args.sweep_dir, args.report, figures=args.figures, band=args.band)
    except (FileNotFoundError, ValueError) as exc:  # no sweep yet, or not a runs.csv: one line, not a traceback
        sys.exit(f"error: {exc}")
    print(f"report: {report}/README.md")


if __name__ == "__main__":
    main()
