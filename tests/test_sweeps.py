"""The paper's experiments as Hydra sweeps, the launchers, and the analysis that reads them back.

Sweeps run for real (Hydra's multirun and launchers, W&B offline, nbclient), on the debug model
with one thread per job so each job takes well under a second on a busy machine.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import rlreason_analysis as ra
from conftest import CONF, ROOT, compose
from rlreason.cli import run_and_report
from rlreason.config import validate
from rlreason.sweep_status import job_statuses

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# The paper's setting of each experiment, besides its embedded default: math, or MBPP+ for the code tables.
CODE_EXPERIMENTS = ("sft_vs_rl_code", "wall_clock_code")
ARMS = sorted(p.stem for p in (CONF / "arm").glob("*.yaml"))
# Each arm file is the paper's method of the same name.
PAPER_NAME_OF_ARM = {
    "sft_reference": "SFT-H",
    "sft_teacher": "SFT-M",
    "grpo": "GRPO",
    "dash_no_filter": "No-GF",
    "dash": "DASH",
    "dash_no_kl": "No-KL",
    "ppo_multi": "PPO-Multi",
    "ppo_mini": "PPO-Mini",
}
# Debug runs shrunk further: one thread (fast on a shared machine), a tiny test split, short answers.
TINY = [
    "debug=true", "threads=1", "logger=none", "logger.progress=false", "task.n_test_problems=4",
    "task.max_completion_tokens=8", "algorithm.overlong_buffer=4", "checkpoint.save_final=false",
]


def multirun(*overrides: str) -> int:
    """``python train.py --multirun OVERRIDES``, run in this process (torch is imported once for
    all the sweeps of the session); returns the exit status."""
    argv = sys.argv
    sys.argv = [str(ROOT / "train.py"), "--multirun", *overrides]
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The experiment file's sweep: parameter -> its values."""
    params = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text())["hydra"]["sweeper"]["params"]
    return {key: str(values).split(",") for key, values in params.items()}


# ---------------------------------------------------------------- experiment files
def test_every_arm_is_the_papers_method_of_its_name():
    assert set(PAPER_NAME_OF_ARM) <= set(ARMS)  # the other arms (dapo, gspo, ...) are methods the paper did not run
    for arm in PAPER_NAME_OF_ARM:
        cfg = compose(f"arm={arm}")
        run = {"algorithm": cfg.algorithm.name, "kl": cfg.kl.name, "filter": cfg.filter.name,
               "sft_source": None if cfg.algorithm.schedule != "sft" else cfg.sft.source}
        assert ra.paper_method(run) == PAPER_NAME_OF_ARM[arm], arm


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_jobs_compose_on_the_embedded_and_the_real_setting(experiment):
    params = sweep_params(experiment)
    assert len(params.pop("seed")) >= 3, "compare arms over several seeds"
    (axis, values), = params.items()  # one axis compared per experiment
    assert len(values) >= 2
    real_task = "mbppplus" if experiment in CODE_EXPERIMENTS else "math"
    for value, setting in itertools.product(values, ([], ["model=qwen2.5-0.5b", f"task={real_task}"])):
        cfg = compose(f"experiment={experiment}", f"{axis}={value}", *setting)  # debug=true: the smoke test below
        validate(cfg)
        if setting:
            assert (cfg.model.name, cfg.task.name) == ("qwen2.5-0.5b", real_task)
        elif experiment in CODE_EXPERIMENTS:
            assert cfg.task.name == "codegen"


@pytest.mark.parametrize("experiment", CODE_EXPERIMENTS)
def test_code_experiments_evaluate_and_filter_as_the_paper(experiment):
    """Tables 2 and 4 on code: pass@1 and pass@8 from 8 samples at temperature 0.9, greedy too, and
    the code threshold 0.01 where the arm filters."""
    for arm in sweep_params(experiment)["arm"]:
        cfg = compose(f"experiment={experiment}", f"arm={arm}")
        assert cfg.eval.samples_per_problem == 8 and list(cfg.eval.pass_k) == [1, 8] and cfg.eval.greedy
        assert cfg.sampler.temperature == 0.9 and cfg.filter.threshold == 0.01
    assert compose(f"experiment={experiment}", "arm=dash").filter.enabled


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_multirun(experiment, tmp_path):
    """Every job of the experiment's sweep runs (one seed, one step) and records its arm."""
    code = multirun(f"experiment={experiment}", f"hydra.sweep.dir={tmp_path}", "seed=0", "trainer.steps=1",
                    "eval.at_start=false", "eval.sampled=false", *TINY)
    assert code == 0
    sweep = ra.load_sweep(tmp_path)
    params = sweep_params(experiment)
    params.pop("seed")
    (axis, values), = params.items()
    assert sweep.name == experiment
    assert len(sweep.runs) == len(values) and (sweep.runs["status"] == "completed").all()
    if axis == "arm":
        assert list(sweep.runs["arm_file"]) == values
        methods = [None if pd.isna(m) else m for m in sweep.runs["paper_method"]]
        assert methods == [PAPER_NAME_OF_ARM.get(v) for v in values]  # dr_grpo, dapo, ...: the paper has no name
    else:
        assert sorted(sweep.runs["generation_batch_size"]) == sorted(int(v) for v in values)


# ---------------------------------------------------------------- failures and launchers
def test_a_crashing_job_is_recorded_and_only_a_single_run_reraises(tmp_path, monkeypatch):
    def crash(cfg, run_dir):
        raise RuntimeError("boom")

    monkeypatch.setattr("rlreason.cli.run", crash)
    assert run_and_report(None, tmp_path / "job", multirun=True) is None
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: boom"
    assert "Traceback" in (tmp_path / "job" / "error.txt").read_text()
    with pytest.raises(RuntimeError, match="boom"):
        run_and_report(None, tmp_path / "single", multirun=False)
    assert json.loads((tmp_path / "single" / "summary.json").read_text())["status"] == "failed"


def test_job_statuses_count_a_job_without_summary_as_incomplete(tmp_path):
    for name, summary in [("0", {"status": "completed"}), ("1", {"status": "failed", "error": "x"}), ("2", None)]:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        if summary:
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    statuses = job_statuses(tmp_path)
    assert [s["status"] for s in statuses.values()] == ["completed", "failed", "incomplete"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_joblib", "local_submitit"])
def test_parallel_launchers_finish_the_sweep_and_report_the_failed_job(launcher, tmp_path):
    """A job with a bad value fails; the other still runs; the sweep exits 1 naming the failure."""
    proc = subprocess.run(
        [sys.executable, "train.py", "--multirun", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}",
         "optim.lr=-1,5e-5", "trainer.steps=1", "eval.at_start=false", "eval.sampled=false", *TINY],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 2 jobs completed" in proc.stderr
    sweep = ra.load_sweep(tmp_path)
    assert list(sweep.runs["status"]) == ["failed", "completed"]
    assert sweep.runs["error"].iloc[0] == "optim.lr=-1.0 must be > 0"
    if launcher == "local_submitit":
        assert list((tmp_path / ".submitit").iterdir()), "jobs ran through submitit"
    else:
        assert "Joblib.Parallel(n_jobs=2" in proc.stderr + proc.stdout


def test_slurm_launcher_config_renders_an_sbatch_script(tmp_path, monkeypatch):
    """No cluster here: the SLURM config's fields go through submitit's own checks (unknown
    parameters raise) into the sbatch script, as the plugin's launch() maps them."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}",
                  "hydra.job.name=train", with_hydra=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python train.py", "0")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--time=720", "--mem=64GB"):
        assert f"#SBATCH {line}" in script


# ---------------------------------------------------------------- a small real sweep, analysed
BUDGET_S = 0.5


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two real sweeps under one folder, as `make sweep` lays them out, and the report on them.

    kl: DASH with KL on and off, 2 seeds, stopped by a 0.5 s training budget, logged to W&B
    offline; plus GRPO, whose jobs fail (micro-batch not a multiple of the group).
    generation_batch_size: the experiment file with two batch sizes, one seed.
    """
    root = tmp_path_factory.mktemp("multirun")
    code = multirun(
        "arm=dash,dash_no_kl,grpo", "seed=0,1", f"hydra.sweep.dir={root / 'kl'}", "trainer.steps=1000",
        f"trainer.max_train_seconds={BUDGET_S}", "eval.every=3", "trainer.micro_batch_size=6", *TINY, "logger=wandb",
    )
    assert code == 1, "the GRPO jobs fail, so the sweep must say so"
    code = multirun(
        "experiment=generation_batch_size", "algorithm.generation_batch_size=4,16", "seed=0",
        f"hydra.sweep.dir={root / 'gbs'}", "trainer.steps=3", *TINY,
    )
    assert code == 0
    from make_report import make_report

    report = make_report(root, tmp_path_factory.mktemp("report"))
    return root, report


def _runs_from_files(sweep_dir: Path) -> pd.DataFrame:
    """Each run's config.yaml and summary.json read directly: the reference the tables must match."""
    rows = []
    for summary_path in sweep_dir.glob("*/summary.json"):
        config_path = summary_path.parent / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.exists() else None
        summary = json.loads(summary_path.read_text())
        rows.append({"run_dir": summary_path.parent, "kl": config and config["kl"]["name"],
                     "algorithm": config and config["algorithm"]["name"], **summary})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_accuracy_table_is_the_mean_over_seeds_of_the_runs_summaries(sweeps):
    root, report = sweeps
    table = pd.read_csv(report / "tables" / "kl_accuracy.csv")
    runs = _runs_from_files(root / "kl")
    done = runs[runs["status"] == "completed"]
    assert list(table["paper_method"]) == ["Base", "DASH", "No-KL", "GRPO"]
    assert list(table["n_seeds"]) == [2, 2, 2, 0] and list(table["n_failed"]) == [0, 0, 0, 2]
    for kl, method in (("on", "DASH"), ("off", "No-KL")):
        row = table[table["paper_method"] == method].iloc[0]
        mine = done[done["kl"] == kl]
        for metric in ("final/greedy_acc", "final/sampled_acc"):
            assert row[f"{metric} mean"] == pytest.approx(mine[metric].mean())
            assert row[f"{metric} std"] == pytest.approx(mine[metric].std(ddof=1), nan_ok=True)
    base = table.iloc[0]
    assert base["final/greedy_acc mean"] == pytest.approx(done.groupby("seed")["base/greedy_acc"].mean().mean())
    assert math.isnan(table.iloc[3]["final/greedy_acc mean"])  # GRPO: no completed run, no number
    assert not any(table[c].notna().any() for c in table if c.startswith("paper "))  # tiny model: not the paper's setting
    assert (report / "tables" / "kl_paper_reference.csv").exists()
    assert "±" in (report / "tables" / "kl_accuracy.md").read_text()


@pytest.mark.slow
def test_the_reports_runs_csv_rebuilds_its_tables_and_comparisons_pair_by_seed(sweeps):
    root, report = sweeps
    from_folder = ra.load_sweeps(root)
    from_csv = ra.load_runs_csv(report / "runs.csv")
    assert [s.name for s in from_csv] == [s.name for s in from_folder] == ["generation_batch_size", "kl"]
    for folder_sweep, csv_sweep in zip(from_folder, from_csv):
        for make in (ra.accuracy_table, ra.length_table, ra.time_table, ra.throughput_table, ra.comparison_table):
            pd.testing.assert_frame_equal(make(folder_sweep), make(csv_sweep), check_dtype=False)
    table = pd.read_csv(report / "tables" / "kl_comparisons.csv")
    assert set(table["reference"]) == {"algorithm=dash kl=on filter=on"}  # the first arm: kl has no REFERENCE_ARMS entry
    no_kl = table[table["paper_method"] == "No-KL"].set_index("metric")
    done = _runs_from_files(root / "kl").query("status == 'completed'").set_index("seed")
    diffs = done[done["kl"] == "off"]["train_time_s"] - done[(done["kl"] == "on") & (done["algorithm"] == "dash")]["train_time_s"]
    mean, half, n = ra.mean_ci(diffs)
    assert no_kl.loc["train_time_s", "n_pairs"] == n == 2
    assert no_kl.loc["train_time_s", "difference mean"] == pytest.approx(mean)
    assert no_kl.loc["train_time_s", "difference ci95"] == pytest.approx(half)
    grpo = table[table["paper_method"] == "GRPO"]
    assert (grpo["n_pairs"] == 0).all() and (grpo["verdict"] == "inconclusive (n=0)").all()  # its jobs all failed


@pytest.mark.slow
def test_time_budget_stops_every_run_with_a_final_evaluation(sweeps):
    root, _ = sweeps
    done = _runs_from_files(root / "kl").query("status == 'completed'")
    assert len(done) == 4
    for _, run in done.iterrows():
        assert run["steps"] < 1000 and run["train_time_s"] >= BUDGET_S
        evals = [json.loads(l) for l in (run["run_dir"] / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in evals if r["kind"] == "eval") == run["steps"]


@pytest.mark.slow
def test_time_and_length_tables_and_figures(sweeps):
    root, report = sweeps
    done = _runs_from_files(root / "kl").query("status == 'completed'")
    time_table = pd.read_csv(report / "tables" / "kl_time.csv").set_index("paper_method")
    lengths = pd.read_csv(report / "tables" / "kl_length.csv").set_index("paper_method")
    for kl, method in (("on", "DASH"), ("off", "No-KL")):
        mine = done[done["kl"] == kl]
        assert time_table.loc[method, "train_time_s mean"] == pytest.approx(mine["train_time_s"].mean())
        assert time_table.loc[method, "train_time/sampling_s mean"] == pytest.approx(mine["train_time/sampling_s"].mean())
        phases = [f"train_time/{p}_s mean" for p in (*ra.PHASES, "other")]
        assert time_table.loc[method, phases].sum() == pytest.approx(time_table.loc[method, "train_time_s mean"])
        assert lengths.loc[method, "final/sampled_mean_length mean"] == pytest.approx(mine["final/sampled_mean_length"].mean())
    by_kl = pd.read_csv(report / "tables" / "kl_length_by_kl_completions_mean_length.csv")
    assert set(by_kl["kl"]) == {"on", "off"}
    for name in ("kl_curves", "kl_length", "kl_time_split", "generation_batch_size_throughput"):
        png = (report / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
    index = (report / "README.md").read_text()
    assert "kl_accuracy" in index and "figures/kl_time_split.png" in index


@pytest.mark.slow
def test_throughput_table_is_the_mean_over_steps_after_the_first(sweeps):
    root, report = sweeps
    table = pd.read_csv(report / "tables" / "generation_batch_size_throughput.csv")
    assert list(table["generation_batch_size"]) == [4, 16] and list(table["n_seeds"]) == [1, 1]
    for run_dir in (root / "gbs").glob("*/config.yaml"):
        size = yaml.safe_load(run_dir.read_text())["algorithm"]["generation_batch_size"]
        rows = [json.loads(l) for l in (run_dir.parent / "metrics.jsonl").read_text().splitlines()]
        steady = [r["throughput/sampling_tok_s"] for r in rows if r["kind"] == "train" and r["step"] > 1]
        row = table[table["generation_batch_size"] == size].iloc[0]
        assert row["throughput/sampling_tok_s mean"] == pytest.approx(sum(steady) / len(steady))


@pytest.mark.slow
def test_wandb_loader_reads_the_same_runs_as_the_sweep_folder(sweeps, monkeypatch):
    root, _ = sweeps
    keys = ["algorithm", "kl", "filter", "seed"]  # the arm labels differ: W&B never saw the failed GRPO jobs
    local_sweep = ra.load_sweep(root / "kl")
    local = local_sweep.completed.set_index(keys).sort_index()
    offline = ra.load_wandb_offline(root / "kl")
    runs = offline.runs.set_index(keys).sort_index()
    assert list(runs.index) == list(local.index)
    assert (runs["status"] == "completed").all()
    for column in ("final/greedy_acc", "final/sampled_mean_length", "train_time_s", "train_time/sampling_s", "steps"):
        assert list(runs[column]) == pytest.approx(list(local[column]))

    def by_axes(sweep):
        curves = sweep.curves.merge(sweep.runs[["run", *keys]], on="run").drop(columns="run")
        return curves.sort_values([*keys, "kind", "step", "metric"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(by_axes(offline), by_axes(local_sweep))

    calls = []

    class FakeApi:  # wandb.Api answering with the offline runs, to check the project loader's plumbing
        def runs(self, path, filters):
            calls.append((path, filters))
            return [ra.OfflineRun(f) for f in sorted((root / "kl").glob("**/run-*.wandb"))]

    import wandb

    monkeypatch.setattr(wandb, "Api", FakeApi)
    project = ra.load_wandb_project("rlreason", entity="me", filters={"tags": "kl:on"})
    assert calls == [("me/rlreason", {"tags": "kl:on"})]
    assert len(project.runs) == 4


# ---------------------------------------------------------------- tables on hand-made runs
def _fake_run(folder: Path, kl: str, seed: int, status: str, acc: float, base: float, model: str = "qwen2.5-0.5b",
              task: str = "math") -> None:
    (folder / ".hydra").mkdir(parents=True)
    config = {"algorithm": {"name": "dash", "schedule": "preemptive", "generation_batch_size": None}, "kl": {"name": kl},
              "filter": {"name": "on"}, "sft": {"source": "teacher"}, "trainer": {"max_train_seconds": None},
              "task": {"name": task}, "model": {"name": model}, "seed": seed}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": status, "final/math500/greedy_acc": acc, "base/math500/greedy_acc": base,
               "train_time_s": 3600.0 * (seed + 1)}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_tables_on_hand_made_runs_mean_std_base_and_paper_numbers(tmp_path):
    """Known numbers: a failed run's value stays out of the means; std over seeds is the sample std;
    the base row averages per seed first; the paper's 0.5B MATH-500 numbers sit beside ours."""
    accuracy = {("on", 0): 0.2, ("on", 1): 0.3, ("on", 2): 0.7, ("off", 0): 0.4, ("off", 1): 0.5}
    base = {0: 0.1, 1: 0.2, 2: 0.3}
    for i, ((kl, seed), acc) in enumerate(accuracy.items()):
        _fake_run(tmp_path / str(i), kl, seed, "completed", acc, base[seed])
    _fake_run(tmp_path / "9", "off", 2, "failed", 0.99, 0.99)
    sweep = ra.load_sweep(tmp_path)
    assert sweep.arm_axes == ["kl"]
    table = ra.paper_beside(ra.accuracy_table(sweep), sweep).set_index("paper_method")
    assert list(table.index) == ["Base", "DASH", "No-KL"]
    assert table.loc["DASH", "final/math500/greedy_acc mean"] == pytest.approx(0.4)
    assert table.loc["DASH", "final/math500/greedy_acc std"] == pytest.approx(pd.Series([0.2, 0.3, 0.7]).std(ddof=1))
    assert table.loc["No-KL", "final/math500/greedy_acc mean"] == pytest.approx(0.45)
    assert (table.loc["No-KL", "n_seeds"], table.loc["No-KL", "n_failed"]) == (2, 1)
    assert table.loc["Base", "final/math500/greedy_acc mean"] == pytest.approx(0.2)  # seeds 0..2: 0.1, 0.2, 0.3
    assert table.loc["Base", "n_seeds"] == 3
    assert table.loc["DASH", "paper final/math500/greedy_acc"] == pytest.approx(0.272)
    assert table.loc["No-KL", "paper final/math500/greedy_acc"] == pytest.approx(0.314)
    assert table.loc["Base", "paper final/math500/greedy_acc"] == pytest.approx(0.226)
    times = ra.paper_beside(ra.time_table(sweep), sweep).set_index("paper_method")
    assert times.loc["DASH", "train_time_s mean"] == pytest.approx(7200.0)
    assert times.loc["DASH", "paper train_time_s"] == pytest.approx(6.6 * 3600)
    _fake_run(tmp_path / "10", "on", 3, "completed", 0.5, 0.5, model="tiny")  # a mixed setting: no paper numbers
    assert ra.paper_beside(ra.accuracy_table(ra.load_sweep(tmp_path)), ra.load_sweep(tmp_path))["paper final/math500/greedy_acc"].isna().all()


def test_the_papers_reference_numbers_are_its_code_tables_for_a_code_task(tmp_path):
    """Beside a code sweep, Tables 2 and 4 (MBPP+ pass@k, minutes); beside a math one, the math tables (hours)."""
    for task, folder in (("codegen", tmp_path / "code"), ("math", tmp_path / "math")):
        _fake_run(folder / "0", "on", 0, "completed", 0.5, 0.1, model="tiny", task=task)
    code = ra.paper_reference(ra.load_sweep(tmp_path / "code")).set_index(["method", "model_size_b"])
    assert code.loc[("DASH", 0.5), "mbppplus_pass@1"] == pytest.approx(11.4)
    assert code.loc[("DASH", 0.5), "train_time"] == pytest.approx(16.5)  # Table 4's minutes, not Table 3's hours
    assert not any(str(c).startswith("math500") for c in code.columns)
    math_ = ra.paper_reference(ra.load_sweep(tmp_path / "math")).set_index(["method", "model_size_b"])
    assert math_.loc[("DASH", 0.5), "math500_acc"] == pytest.approx(27.2)
    assert math_.loc[("DASH", 0.5), "train_time"] == pytest.approx(6.6)
    assert not any(str(c).startswith("mbpp") for c in math_.columns)


def test_a_sweep_run_into_a_sub_folder_of_another_is_part_of_it(tmp_path):
    """E.g. SFT-M on a traces file, run after the main sweep into <sweep>/sft_m: one sweep, all runs."""
    (tmp_path / "multirun.yaml").write_text("{}")
    _fake_run(tmp_path / "0", "on", 0, "completed", 0.2, 0.1)
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "multirun.yaml").write_text("{}")
    _fake_run(tmp_path / "extra" / "0", "off", 0, "completed", 0.3, 0.1)
    assert ra.find_sweeps(tmp_path) == [tmp_path]
    assert sorted(ra.load_sweep(tmp_path).runs["paper_method"]) == ["DASH", "No-KL"]
    assert ra.paper_method({"algorithm": "sft", "sft_source": "traces.jsonl"}) == "SFT-M"
