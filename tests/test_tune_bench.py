"""The tuning benchmark: spread / se among the top trials on hand-made rows, both repeat rules
on the same trials (stand-in cells), and the corners' noise / spread arithmetic."""

from __future__ import annotations

import math
import statistics

import pytest
from test_tune import _NO_GATE, _cells
from test_tune import _cfg as _tune_cfg
from test_tune import standins as standins  # noqa: F401 (a fixture of test_tune)

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


def _csv_row(number: int, state: str, diffs: list[float]) -> dict:
    row = {"number": str(number), "state": state, "repeats": str(len(diffs)),
           "gain": str(sum(diffs) / len(diffs)) if state == "COMPLETE" else ""}
    row.update({f"gain_r{r}": str(d) for r, d in enumerate(diffs)})
    return row


def test_top_separation_is_the_spread_of_the_top_gains_over_their_standard_error():
    from isdm.bench.tune_bench import top_separation

    rows = [_csv_row(0, "COMPLETE", [0.05, 0.07]),            # gain 0.06, var 0.0002
            _csv_row(1, "COMPLETE", [0.02, 0.04, 0.03, 0.03]),  # gain 0.03, var 0.0000667
            _csv_row(2, "COMPLETE", [0.0, 0.02]),             # gain 0.01, var 0.0002
            _csv_row(3, "COMPLETE", [-0.1, -0.1]),            # not in the top 3
            _csv_row(4, "PRUNED", [-0.3]),
            _csv_row(5, "FAIL", [0.9, -0.9])]                 # left out of the noise
    row = top_separation(rows, top=3)
    sigma = math.sqrt((0.0002 + 0.0002 + 0.0002 + 0.0) / (1 + 3 + 1 + 1))
    assert row["sigma"] == pytest.approx(sigma)
    assert (row["top"], row["best_gain"], row["best_repeats"]) == (3, pytest.approx(0.06), 2)
    assert row["spread"] == pytest.approx(statistics.stdev([0.06, 0.03, 0.01]))
    se = math.sqrt((sigma ** 2 / 2 + sigma ** 2 / 4 + sigma ** 2 / 2) / 3)
    assert row["se"] == pytest.approx(se)
    assert row["spread_over_se"] == pytest.approx(statistics.stdev([0.06, 0.03, 0.01]) / se)


@pytest.mark.slow
def test_the_rules_bench_runs_both_studies_on_the_same_trials(tmp_path, synth_dir, standins,
                                                              ckpt):
    """Stand-in cells (test_tune): fixed and adaptive repeats on the same 8 draws; the adaptive
    study prunes and uses no more cells than the fixed one."""
    from isdm.bench.tune_bench import compare_rules

    cfg = _tune_cfg("tune.repeats=2", "tune.min_repeats=1", "tune.max_repeats=4",
                    "tune.pruning_startup_trials=1", *_NO_GATE)
    fixed, adaptive = compare_rules(cfg, synth_dir, ckpt, tmp_path, n_trials=8, top=3)
    assert (fixed["rule"], adaptive["rule"]) == ("fixed", "adaptive")
    assert (fixed["trials"], fixed["complete"], fixed["pruned"]) == (8, 8, 0)
    assert fixed["segmenter_cells"] == fixed["fixed_repeats_cells"] == 8 * 2 + 2
    assert adaptive["pruned"] > 0 and adaptive["segmenter_cells"] <= fixed["segmenter_cells"]
    assert fixed["segmenter_steps"] == fixed["segmenter_cells"] * cfg.tune.eval_steps
    # no seed noise in the stand-ins: the best trial is never pruned
    assert fixed["top"] == 3 and adaptive["best_gain"] == pytest.approx(fixed["best_gain"])
    draws = [c["s"] for c in _cells(standins) if c["mix"] != "RALLF000"]
    assert set(draws[16:]) <= set(draws[:16])  # the adaptive study's trials are the fixed one's
