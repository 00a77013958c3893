#!/usr/bin/env bash
# The GPU check (issue 27; docs/guide/gpu.md): set-up, CUDA tests, make bench-gpu and the embedded
# pipeline on CUDA, each phase timed and capped, every result under one folder ($OUT when set,
# else gpu_results/). `scripts/gpu_check.sh --tiny` rehearses it on the CPU; --help lists options.
# $PYTHON (default python3) runs the check: on a GPU image, the python that holds torch.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
