"""The training benchmark's arithmetic on a fake clock, and its loss curves (tiny sizes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from isdm.bench import train_bench
from isdm.config import MODEL_PRESETS, ModelConfig


def test_matmul_flops_divides_the_flops_by_the_best_of_three_timings():
    ticks = iter([0.0, 1.0, 10.0, 10.5, 20.0, 22.0])  # 1.0, 0.5 and 2.0 s
    flops = train_bench.matmul_flops(8, repeats=2, clock=lambda: next(ticks))
    assert flops == 2 * 8**3 * 2 / 0.5


def test_measure_training_reports_the_median_step(monkeypatch):
    wall = iter([0.0, 0.5, 1.0, 1.125, 2.0, 2.375])  # steps of 0.5, 0.125, 0.375 s
    cpu = iter([0.0, 1.0, 1.0, 1.75, 2.0, 4.0])  # 1.0, 0.75, 2.0 CPU seconds
    monkeypatch.setattr(train_bench, "time", SimpleNamespace(
        perf_counter=lambda: next(wall), process_time=lambda: next(cpu)))
    cfg = ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])
    res = train_bench.measure_training(cfg, 32, 5, batch=2, precision="fp32", warmup=0, steps=3)
    assert res["step_s"] == 0.375  # the median, not the mean 0.333
    assert res["images_per_s"] == 2 / 0.375
    assert res["images_per_cpu_s"] == 2 / 1.0  # the median CPU time, not the mean 1.25


@pytest.mark.slow
def test_loss_curves_are_real_deterministic_training_runs():
    first = train_bench.loss_curves(2, ("fp32",), window=1, batch=2)["fp32"]
    again = train_bench.loss_curves(2, ("fp32",), window=1, batch=2)["fp32"]
    assert len(first["curve"]) == 2 and all(0 < x < 10 for x in first["curve"])
    assert first["curve"] == again["curve"]  # same seed, same batches, t and noise
    assert first["curve"][0] != first["curve"][1]  # two different steps, not one value twice
