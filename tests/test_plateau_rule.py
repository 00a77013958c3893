"""The stopping rule of `evaluate.steps: auto` on hand-made curves: a rising curve goes to the
cap, a curve that flattens stops exactly at the check where its last-quarter rise falls below
the noise of the seed mean, a flat curve stops at the first check, a flat curve at the
background-only level never plateaus (cap, void)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isdm.config.calibration import CalibrationConfig
from isdm.evaluation.plateau_rule import (
    PlateauRule,
    check,
    curve_noise,
    first_stop,
    quarter_rise,
)


def _rule(**kw) -> PlateauRule:
    # validation every 10 steps, the rule checked every 2 validations (20 steps)
    return PlateauRule.from_config(CalibrationConfig(**{"check_every": 2, "max_steps": 400, **kw}),
                                   val_every=10)


def _seeds(base: np.ndarray, d: float = 0.01) -> np.ndarray:
    """Two seeds at base +- d: seed std (ddof 1) d * sqrt(2), standard error of the mean d."""
    return np.stack([base + d, base - d])


def _steps(n: int) -> list[int]:
    return [10 * (j + 1) for j in range(n)]


def test_checks_start_where_the_rule_may_stop_and_end_at_the_cap():
    assert _rule().checks()[:3] == [80, 100, 120] and _rule().checks()[-1] == 400
    assert _rule(min_steps=150).checks()[0] == 160
    assert _rule(max_steps=90).checks() == [80, 90]
    assert PlateauRule.from_config(CalibrationConfig(), 20).checks()[:2] == [200, 300]


def test_quarter_rise_and_noise_by_hand():
    assert quarter_rise([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) == pytest.approx(0.2)
    assert math.isnan(quarter_rise([0.5]))
    assert curve_noise(_seeds(np.full(8, 0.5))) == pytest.approx(0.01 * math.sqrt(2))
    # one seed: point-to-point noise sqrt(mean(diff^2) / 2) over the last half
    assert curve_noise(np.array([[0, 0, 0, 0, 0.5, 0.7, 0.5, 0.7]])) == pytest.approx(
        math.sqrt(0.04 / 2))


def test_a_curve_that_flattens_stops_exactly_where_its_rise_falls_below_the_noise():
    """Seed mean min(0.05 j, 0.5): flat from validation 10 (step 100); threshold = one standard
    error of the seed mean = 0.01. Checks (q = n // 4 validations per quarter):
    80: 0.375 - 0.275, 100: 0.475 - 0.375, 120: 0.5 - 0.4, 140: 0.5 - 0.4833, 160: 0.5 - 0.4875
    all rise >= 0.01; 180: 0.5 - 0.5 = 0 -> plateau at 180."""
    miou = _seeds(np.minimum(0.05 * np.arange(1, 41), 0.5))
    stop = first_stop(_rule(), _steps(40), miou, miou / 2)
    assert (stop.step, stop.decision) == (180, "plateau")
    assert stop.rise == pytest.approx(0.0, abs=1e-12) and stop.threshold == pytest.approx(0.01)
    before = check(_rule(), _steps(16), miou[:, :16], miou[:, :16] / 2)
    assert before.decision == "continue" and before.rise == pytest.approx(0.0125)
    # more seed noise, a higher bar: the same curve stops earlier (rise 0.0167 < 0.02 at 140)
    noisy = _seeds(np.minimum(0.05 * np.arange(1, 41), 0.5), d=0.02)
    assert first_stop(_rule(), _steps(40), noisy, noisy / 2).step == 140


def test_a_rising_curve_goes_to_the_cap():
    miou = _seeds(0.1 + 0.01 * np.arange(1, 41))  # +0.01 per validation, forever
    stop = first_stop(_rule(), _steps(40), miou, miou / 2)
    assert (stop.step, stop.decision) == (400, "cap")
    assert stop.rise == pytest.approx(0.01 * 10) and not stop.background_only
    # a rise below the noise over the last quarter is within it: +0.002 per validation rose
    # 0.004 over the last quarter at 80 steps, below one standard error (0.01)
    slow = _seeds(0.1 + 0.002 * np.arange(1, 41))
    assert first_stop(_rule(), _steps(40), slow, slow / 2).step == 80
    assert "cap reached (400 steps)" in stop.evidence()


def test_a_flat_curve_stops_at_the_first_check_or_at_min_steps():
    flat = _seeds(np.full(40, 0.6))
    assert first_stop(_rule(), _steps(40), flat, flat / 2).step == 80
    assert first_stop(_rule(min_steps=150), _steps(40), flat, flat / 2).step == 160
    # identical seeds: no noise, the floor decides
    same = np.full((3, 40), 0.6)
    stop = first_stop(_rule(), _steps(40), same, same / 2)
    assert stop.step == 80 and stop.threshold == pytest.approx(0.001)


def test_a_flat_curve_at_the_background_only_level_is_not_a_plateau():
    """Flat val mIoU 0.48 (background IoU 0.96, defects 0): no defect pixel found, so the
    calibration goes on to the cap and says so."""
    flat = _seeds(np.full(40, 0.48))
    stop = first_stop(_rule(), _steps(40), flat, np.zeros_like(flat))
    assert (stop.step, stop.decision, stop.background_only) == (400, "cap", True)
    assert "background only" in stop.evidence()
    # one defect IoU above the minimum ends it: it plateaus at the first check
    assert first_stop(_rule(), _steps(40), flat, np.full_like(flat, 0.06)).step == 80


def test_curves_shorter_than_a_check_give_no_stop_and_a_cap_between_validations_counts():
    flat = _seeds(np.full(7, 0.6))
    assert first_stop(_rule(), _steps(7), flat, flat / 2) is None
    rising = _seeds(0.1 + 0.01 * np.arange(1, 10))
    assert check(_rule(max_steps=95), _steps(9), rising, rising / 2, at=95).decision == "cap"
