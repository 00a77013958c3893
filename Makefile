# Two commands do all the set-up on a fresh machine: `make repro` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision MUST be pinned in the same pip command as everything else, or a later
# resolver step pulls another torch build (see README "Install").
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export MLFLOW_ALLOW_FILE_STORE := true
# OpenMP threads: spinning between parallel regions (ACTIVE) makes a training step ~1.2x faster
# than sleeping (PASSIVE) when one job has the cores, but ~2x slower when other busy processes
# share them (docs/guide/testing.md, "OpenMP threads"). repro and bench ask `python -m isdm.utils.cpu`:
# ACTIVE when other processes use under a quarter of the CPUs right now, else PASSIVE (an
# OMP_WAIT_POLICY set in the environment wins). The policy never changes results. The test suite
# runs several processes at once (DDP, workers), so there threads always sleep.
OMP_ENV = env $$(PYTHONPATH=src $(BIN)/python -m isdm.utils.cpu --explain)
test test-fast: export OMP_WAIT_POLICY := PASSIVE
# `make bench BENCH_ARGS=--quick`: every row at smoke-test sizes (a few minutes)
BENCH_ARGS ?=
# `make bench-gpu BENCH_GPU_ARGS="--budget-s 90 --out x.json"` (python -m isdm.bench.gpu_bench -h)
BENCH_GPU_ARGS ?=
# `make setup-offline`: wheels the GPU image lacks (scripts/gpu_wheels.sh fetches them)
WHEELS ?= .whl

.PHONY: setup setup-offline test test-fast repro bench bench-gpu gpu-check docs lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e ".[dev]"
	touch $(STAMP)

# No package index, torch already installed (a GPU image, the device machine): a venv on top of
# $(PYTHON)'s packages + $(WHEELS)/*.whl + this checkout's src; it writes $(STAMP) itself
setup-offline:
	$(PYTHON) scripts/setup_offline.py --venv $(VENV) --wheels $(WHEELS)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# One MLflow pipeline id (tag isdm.pipeline) for every stage of this repro; yours wins if exported.
repro: setup
	test -d .dvc || (PATH=$(BIN):$$PATH $(BIN)/dvc init --quiet && $(BIN)/dvc config core.analytics false)
	ISDM_PIPELINE_ID=$${ISDM_PIPELINE_ID:-repro-$$(date -u +%Y%m%dT%H%M%SZ)} $(OMP_ENV) PATH=$(BIN):$$PATH $(BIN)/dvc repro
	PATH=$(BIN):$$PATH $(BIN)/dvc metrics show
	@echo; cat reports/evaluate/report.md

bench: setup
	$(OMP_ENV) PATH=$(BIN):$$PATH $(BIN)/python -m isdm.bench --out bench/results.json $(if $(wildcard ../shared/data/crackforest/train/images),--crackforest ../shared/data/crackforest) $(BENCH_ARGS)

# one GPU, under 8 minutes: training images/s and sampling s/image of the original preset, 256 px
bench-gpu: setup
	PATH=$(BIN):$$PATH $(BIN)/python -m isdm.bench.gpu_bench --out bench/gpu.json $(BENCH_GPU_ARGS)

# the whole GPU check (docs/guide/gpu.md): set-up, CUDA tests, bench-gpu, the pipeline on CUDA, under
# 8 minutes -> $OUT or gpu_results/; GPU_CHECK_ARGS=--tiny rehearses it on the CPU
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

# the documentation site (MkDocs + Material) into site/, strictly: a broken link or a missing page
# fails; the configuration reference page is generated from src/isdm/config/ while it builds
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache site
