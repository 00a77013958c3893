"""The tuning benchmark: its noise / spread arithmetic on hand-made rows, and its settings."""

from __future__ import annotations

import math

import pytest

from isdm.bench.tune_bench import _settings, signal_noise
from isdm.config import load_config


def _rows(noise_sd: float, corners: list[float]) -> list[dict]:
    return [{"setting": "real-only baseline"},
            {"setting": "noise: config knobs", "gain_mean": 0.01, "gain_sd": noise_sd},
            *({"setting": f"corner {i}", "gain_mean": g} for i, g in enumerate(corners))]


def test_signal_noise_compares_the_corners_spread_with_the_objectives_standard_error():
    row = signal_noise(_rows(0.02, [0.0, 0.02, 0.04, 0.06]), repeats=4)
    assert row["se_R"] == pytest.approx(0.01)  # 0.02 / sqrt(4)
    assert row["spread_sd"] == pytest.approx(math.sqrt(0.002 / 3))  # std (ddof 1) of the corners
    assert row["spread_range"] == pytest.approx(0.06)
    assert row["spread_over_se"] == pytest.approx(math.sqrt(0.002 / 3) / 0.01)
    assert row["verdict"] == "spread clearly exceeds noise"
    assert signal_noise(_rows(0.04, [0.0, 0.02, 0.04, 0.06]), repeats=4)["verdict"].startswith(
        "spread about the noise")


def test_no_spread_at_all_is_no_signal_not_an_infinite_ratio():
    """All settings tie (segmenters that predict background only): 0 / 0 is no signal."""
    row = signal_noise(_rows(0.0, [0.0, 0.0, 0.0, 0.0]), repeats=3)
    assert row["spread_over_se"] == 0.0 and row["verdict"].startswith("no signal")


def test_settings_are_the_config_knobs_and_the_four_corners_with_the_gate_off():
    cfg = load_config(None, ["tune.s_low=0.5", "tune.s_high=4", "tune.ratios=[2, 0.5, 1]"])
    settings = dict(_settings(cfg, n_real=32))
    own = settings.pop("noise: config knobs")
    assert own["sample.s"] == cfg.sample.s and own["synthetic_ratio"] == 40 / 32
    assert (own["curate.min_fidelity"], own["curate.pixel_threshold"]) == (0.0, 0.0)
    assert sorted((k["sample.s"], k["synthetic_ratio"]) for k in settings.values()) == [
        (0.5, 0.5), (0.5, 2), (4, 0.5), (4, 2)]
