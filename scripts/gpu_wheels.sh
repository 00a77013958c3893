#!/usr/bin/env bash
# Fetch, on a machine WITH a package index, the wheels that a GPU image without one lacks, into
# .whl/ (ignored by git; the device tool carries it with `carry: [".whl"]`), for
# scripts/setup_offline.py (called by scripts/gpu_check.sh) to install there.
#
#   scripts/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12, the device image's Python
#
# The list: isdm's runtime imports that the device image's package list (the device README's
# KINDS.md) does not hold, at the versions pyproject.toml pins. Its torch, torchvision, numpy,
# pillow, click, pyyaml, tqdm, matplotlib, filelock, huggingface-hub, safetensors and pytest are
# used as they are; mlflow, dvc and optuna are not needed by the GPU check (tracking off, stages
# run as isdm commands, no tune). Both wheels are pure Python (about 3 MB together).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
WHEELS=(segmentation-models-pytorch==0.6.0 timm==1.0.31)
mkdir -p .whl
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYV" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -l .whl
