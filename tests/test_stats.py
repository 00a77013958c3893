"""Paired bootstrap on constructed counts: identical mixes, clear gain, clear loss."""

from __future__ import annotations

import numpy as np
import pytest

from isdm.evaluation.stats import mean_std, paired_bootstrap, seed_metric, verdict


def _counts(n_seeds: int, n_images: int, defect_tp: int, seed: int) -> np.ndarray:
    """Binary counts [S, N, 2, 3]: each image has 10 defect px of which ``defect_tp`` (+-1) found."""
    g = np.random.default_rng(seed)
    tp1 = np.clip(defect_tp + g.integers(-1, 2, size=(n_seeds, n_images)), 0, 10)
    fn1 = 10 - tp1
    fp1 = g.integers(0, 3, size=(n_seeds, n_images))
    tp0 = 90 - fp1
    out = np.zeros((n_seeds, n_images, 2, 3), dtype=np.int64)
    out[..., 0, :] = np.stack([tp0, fn1, fp1], axis=-1)   # background: fp0 = fn1, fn0 = fp1
    out[..., 1, :] = np.stack([tp1, fp1, fn1], axis=-1)
    return out


def test_identical_mixes_give_zero_gain_and_no_significant_difference():
    base = _counts(3, 20, 5, seed=0)
    res = paired_bootstrap(base, base.copy(), n_boot=200, seed=0)
    assert res.gain == 0.0 and res.lo == 0.0 and res.hi == 0.0   # paired: every replicate is 0
    assert res.verdict == "no significant difference"


def test_noisy_equal_mixes_cover_zero():
    base, other = _counts(3, 30, 5, seed=0), _counts(3, 30, 5, seed=1)
    res = paired_bootstrap(base, other, n_boot=500, seed=0)
    assert res.lo < 0 < res.hi and res.verdict == "no significant difference"


def test_clearly_better_mix_is_a_gain_and_worse_a_loss():
    base, better = _counts(2, 25, 4, seed=0), _counts(2, 25, 8, seed=1)
    res = paired_bootstrap(base, better, n_boot=500, seed=0)
    assert 0 < res.lo <= res.gain <= res.hi and res.verdict == "gain"
    expected = seed_metric(better).mean() - seed_metric(base).mean()
    assert res.gain == pytest.approx(expected)
    assert paired_bootstrap(better, base, n_boot=500, seed=0).verdict == "loss"
    nobg = paired_bootstrap(base, better, n_boot=200, seed=0, background=False)
    assert nobg.gain > res.gain > 0                              # defect IoU moves more


def test_bootstrap_is_reproducible_and_checks_pairing():
    base, other = _counts(2, 10, 5, seed=0), _counts(2, 10, 6, seed=1)
    assert paired_bootstrap(base, other, n_boot=100, seed=7) == paired_bootstrap(base, other, n_boot=100, seed=7)
    with pytest.raises(ValueError, match="same seeds and test images"):
        paired_bootstrap(base, other[:, :5], n_boot=10)


def test_mean_std_and_verdict_rules():
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([0.4, 0.6, float("nan")])
    assert m == pytest.approx(0.5) and s == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert verdict(0.01, 0.2) == "gain" and verdict(-0.2, -0.01) == "loss"
    assert verdict(-0.1, 0.1) == "no significant difference"
    assert verdict(float("nan"), float("nan")) == "no significant difference"


def test_mean_over_architectures_is_the_mean_of_their_gains_with_one_shared_draw():
    """[A, S, N, C, 3] counts: the gain is the mean of the architectures' gains, and every
    replicate draws seeds and images once for all architectures."""
    base, better = _counts(2, 25, 4, seed=0), _counts(2, 25, 8, seed=1)
    one = paired_bootstrap(base, better, n_boot=300, seed=3)
    # one architecture stacked: the same bootstrap, draw for draw
    assert paired_bootstrap(base[None], better[None], n_boot=300, seed=3) == one
    # two identical architectures: the mean of two equal replicates is that replicate
    twin = paired_bootstrap(np.stack([base, base]), np.stack([better, better]), n_boot=300, seed=3)
    assert (twin.gain, twin.lo, twin.hi) == pytest.approx((one.gain, one.lo, one.hi), abs=1e-12)
    # the second architecture loses exactly what the first gains: with one shared draw every
    # replicate's mean is 0 (independent draws per architecture would spread it around 0)
    flip = paired_bootstrap(np.stack([base, better]), np.stack([better, base]), n_boot=300, seed=3)
    assert flip.gain == 0.0 and flip.lo == pytest.approx(0, abs=1e-12)
    assert flip.hi == pytest.approx(0, abs=1e-12)


def test_mean_over_architectures_of_constant_gains_on_hand_counts():
    """Every image identical, one seed: resampling changes nothing, so the CI collapses on the
    hand-computed mean of the architectures' gains: binary IoUs (bg, defect) per image
    base (80/100, 0/20 -> mIoU 0.4) vs (90/100, 10/20 -> 0.7) and (85/100, 5/20 -> 0.55)."""
    def counts(tp0, fp0, fn0, tp1, fp1, fn1):
        return np.tile(np.array([[tp0, fp0, fn0], [tp1, fp1, fn1]]), (1, 5, 1, 1))  # [1, 5, 2, 3]

    base = counts(80, 20, 0, 0, 0, 20)       # IoU 0.8, 0.0 -> 0.4
    high = counts(90, 10, 0, 10, 0, 10)      # IoU 0.9, 0.5 -> 0.7 (gain 0.3)
    mid = counts(85, 15, 0, 5, 0, 15)        # IoU 0.85, 0.25 -> 0.55 (gain 0.15)
    res = paired_bootstrap(np.stack([base, base]), np.stack([high, mid]), n_boot=50, seed=0)
    assert (res.gain, res.lo, res.hi) == pytest.approx((0.225, 0.225, 0.225), abs=1e-12)
    assert res.verdict == "gain"
    with pytest.raises(ValueError, match="same seeds and test images"):
        paired_bootstrap(np.stack([base, base]), np.stack([high]), n_boot=10)
