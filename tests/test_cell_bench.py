"""The segmenter-efficiency bench: counted GFLOP per step, the bare step and pooled cells."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def embedded64(tmp_path_factory):
    from isdm.config import SynthConfig
    from isdm.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("embedded64")
    write_synthetic_dataset(root, SynthConfig(num_train=10, num_test=2, image_size=64))
    return root


@pytest.mark.slow
def test_gflop_per_step_is_counted_and_a_cell_is_timed_in_its_worker(embedded64):
    from isdm.bench import cell_bench

    cpu = torch.device("cpu")
    flops = cell_bench.step_flops("FPN", embedded64, cpu)
    assert 12e9 < flops < 14.5e9  # forward + backward of FPN/resnet18, 64 px, batch 8, 5 classes
    assert cell_bench.bare_step("FPN", embedded64, cpu, warmup=0, steps=1) > 0
    pool = cell_bench.pool_cells_fresh("FPN", embedded64, cpu, steps=2, cells=1)  # its own parent
    assert pool["cells"] == 1 and 0 < pool["cell_s"] <= pool["pool_s"]


def test_a_row_gives_achieved_gflops_and_their_ratio_to_the_matmul_rate(monkeypatch):
    from isdm.bench import cell_bench

    monkeypatch.setattr(cell_bench, "step_flops", lambda arch, root, device: 20e9)
    monkeypatch.setattr(cell_bench, "bare_step", lambda *a, **k: 0.5)
    pool = {"workers": 2, "threads": 1, "cells": 2, "cell_s": 4.0, "pool_s": 6.0, "steps": 4}
    row = cell_bench._row("FPN", Path("."), torch.device("cpu"), 80.0, quick=True, pool=pool)
    assert (row["gflop_per_step"], row["step_ms"], row["step_gflops"]) == (20.0, 500.0, 40.0)
    assert row["step_mfu"] == 0.5
    assert row["cells_gflops"] == 2 * 4 * 20.0 / 4.0 and row["cells_mfu"] == 40.0 / 80.0


@pytest.mark.parametrize("workers, calmed", [(2, True), (1, False)])
def test_the_pools_parent_keeps_one_thread_only_when_workers_compute(workers, calmed):
    """Cells in worker processes: the parent at one torch thread, so no OpenMP team of its own
    spins beside them (evaluation.pool.calm_parent); cells in the parent itself: untouched."""
    from isdm.evaluation.pool import calm_parent

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert calm_parent(workers, 1, torch.device("cpu")) is calmed
        assert torch.get_num_threads() == (1 if calmed else 2)
        assert calm_parent(workers, 1, torch.device("meta")) is False  # not the CPU pool
    finally:
        torch.set_num_threads(before)
