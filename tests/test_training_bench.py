"""The training benchmark's measuring functions run and report consistent numbers (tiny sizes)."""

from __future__ import annotations

import pytest

from isdm.bench import train_bench
from isdm.config import MODEL_PRESETS, ModelConfig


def test_measure_training_reports_throughput_of_real_steps():
    cfg = ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])
    res = train_bench.measure_training(cfg, 32, 5, batch=2, precision="fp32", warmup=0, steps=1)
    assert res["images_per_s"] == pytest.approx(2 / res["step_s"])
    assert res["images_per_s"] > 0 and res["images_per_cpu_s"] > 0
    assert res["fwd_GFLOP_per_img"] > 0 and 0.5 < res["params_M"] < 5


def test_matmul_flops_is_positive_and_finite():
    assert 1e6 < train_bench.matmul_flops(64, repeats=2) < 1e15


def test_loss_curves_are_real_deterministic_training_runs():
    first = train_bench.loss_curves(2, ("fp32",), window=1, batch=2)["fp32"]
    again = train_bench.loss_curves(2, ("fp32",), window=1, batch=2)["fp32"]
    assert len(first["curve"]) == 2 and all(0 < x < 10 for x in first["curve"])
    assert first["curve"] == again["curve"]  # same seed, same batches, t and noise
    assert first["curve"][0] != first["curve"][1]  # two different steps, not one value twice
