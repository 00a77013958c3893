"""Seed statistics and the paired bootstrap of a mix's gain over the real-only baseline.

A cell (architecture, mix) is trained with S seeds and tested on the same N real test images, so
its raw result is ``counts[S, N, C, 3]`` (per seed, image and class: tp, fp, fn; see
:mod:`isdm.evaluation.metrics`). The point estimate of a metric is the mean over seeds of the
metric of each seed's pooled counts; the gain of mix B over the baseline A is
``mean_s m(B_s) - mean_s m(A_s)``.

Paired bootstrap (two-level, seeded): each replicate draws S seed indices and N image indices with
replacement and uses the SAME draws for both mixes (pairing: seed index i of B is compared with
seed index i of A, which shared the validation split and the real-image draw; every image is
scored by both). The metric is recomputed from the resampled summed counts, never averaged
per image. The 95 % interval is the 2.5 / 97.5 percentile of the replicate gains. With one seed
only the test images are resampled.

Mean over architectures (the headline gain): with counts ``[A, S, N, C, 3]`` of A architectures
the gain is ``mean_a (mean_s m(B_as) - mean_s m(A_as))`` and each replicate applies its ONE draw
of seed indices and image indices to every architecture (seed ``e.seeds[i]`` holds out the same
validation split and draws the same real images for every architecture, and every architecture
is tested on the same images), so the interval is that of the mean over architectures of paired
gains, with the architectures' errors as correlated as the data make them. With A = 1 it is the
single-architecture bootstrap, draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isdm.evaluation.metrics import miou_from_counts

__all__ = ["mean_std", "BootstrapResult", "paired_bootstrap", "verdict", "seed_metric"]


def mean_std(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) ignoring NaN."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def seed_metric(counts: np.ndarray, background: bool = True) -> np.ndarray:
    """``[S, N, C, 3]`` counts -> ``[S]`` mIoU of each seed over the whole test set."""
    return miou_from_counts(np.asarray(counts).sum(axis=1), background=background)


@dataclass(frozen=True)
class BootstrapResult:
    """Gain of a mix over the baseline: point estimate and percentile CI."""

    gain: float
    lo: float
    hi: float
    level: float
    n_boot: int

    @property
    def verdict(self) -> str:
        return verdict(self.lo, self.hi)


def verdict(lo: float, hi: float) -> str:
    """``gain`` if the CI lies above 0, ``loss`` if below, else ``no significant difference``."""
    if np.isfinite(lo) and lo > 0:
        return "gain"
    if np.isfinite(hi) and hi < 0:
        return "loss"
    return "no significant difference"


def paired_bootstrap(base: np.ndarray, other: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, background: bool = True,
                     batch: int = 250) -> BootstrapResult:
    """Paired two-level bootstrap CI of ``mIoU(other) - mIoU(base)``.

    Args:
        base, other: int counts ``[S, N, C, 3]`` of the baseline and the compared mix, with the
            same seeds in the same order and the same test images in the same order; or
            ``[A, S, N, C, 3]`` of A architectures: the gain is then the mean over
            architectures, each replicate resampling all of them with the same draws.
        n_boot: replicates; seed: the bootstrap's own numpy seed (results are reproducible).
        background: include class 0 in the mIoU (False: defect classes only).
    """
    base, other = np.asarray(base, np.float64), np.asarray(other, np.float64)
    if base.shape != other.shape or base.ndim not in (4, 5):
        raise ValueError(f"paired bootstrap needs equal [S,N,C,3] or [A,S,N,C,3] counts, got "
                         f"{base.shape} vs {other.shape} (same seeds and test images for both mixes)")
    if base.ndim == 4:
        base, other = base[None], other[None]
    n_seeds, n_images = base.shape[1:3]
    gain = float(np.mean([np.nanmean(seed_metric(o, background)) - np.nanmean(seed_metric(b, background))
                          for b, o in zip(base, other)]))
    if n_boot < 1:
        return BootstrapResult(gain, float("nan"), float("nan"), level, n_boot)
    rng = np.random.default_rng(seed)
    gains = []
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        img = rng.integers(0, n_images, size=(b, n_images))
        weights = np.stack([np.bincount(row, minlength=n_images) for row in img]).astype(np.float64)
        seeds = rng.integers(0, n_seeds, size=(b, n_seeds)) if n_seeds > 1 else np.zeros((b, 1), int)
        per_arch = []
        for arch_base, arch_other in zip(base, other):
            reps = []
            for counts in (arch_base, arch_other):
                summed = np.einsum("bn,snck->bsck", weights, counts)        # [b, S, C, 3]
                per_seed = miou_from_counts(summed, background=background)  # [b, S]
                reps.append(np.nanmean(np.take_along_axis(per_seed, seeds, axis=1), axis=1))
            per_arch.append(reps[1] - reps[0])
        gains.append(np.mean(per_arch, axis=0))
    g = np.concatenate(gains)
    g = g[np.isfinite(g)]
    if g.size == 0:
        return BootstrapResult(gain, float("nan"), float("nan"), level, n_boot)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(g, [alpha, 1.0 - alpha])
    return BootstrapResult(gain, float(lo), float(hi), level, n_boot)
