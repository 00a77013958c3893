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
# OpenMP threads: spinning between parallel regions (ACTIVE) makes a training step ~20 % faster
# than sleeping (PASSIVE) when one job has the cores (0.52 vs 0.65 s per default-preset step on 2
# cores); the test suite runs several processes at once (DDP, workers), so there they sleep.
repro bench: export OMP_WAIT_POLICY := ACTIVE
test test-fast: export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup test test-fast repro bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS) -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# One MLflow pipeline id (tag isdm.pipeline) for every stage of this repro; yours wins if exported.
repro: setup
	test -d .dvc || (PATH=$(BIN):$$PATH $(BIN)/dvc init --quiet && $(BIN)/dvc config core.analytics false)
	ISDM_PIPELINE_ID=$${ISDM_PIPELINE_ID:-repro-$$(date -u +%Y%m%dT%H%M%SZ)} PATH=$(BIN):$$PATH $(BIN)/dvc repro
	PATH=$(BIN):$$PATH $(BIN)/dvc metrics show
	@echo; cat reports/evaluate/report.md

bench: setup
	PATH=$(BIN):$$PATH $(BIN)/python -m isdm.bench --out bench/results.json $(if $(wildcard ../shared/data/crackforest/train/images),--crackforest ../shared/data/crackforest)

clean:
	rm -rf $(VENV) .pytest_cache
