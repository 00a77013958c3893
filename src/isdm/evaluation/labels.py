"""The label-efficiency curve: how many real labelled images is the synthetic data worth?

Each point ``p`` of the curve is an ``isdm evaluate`` report on a nested real subset of the train
split (``isdm data subset``; ``n_p`` labelled images: the subset's train split, validation
included) with the same architectures, seeds and full test split at every point, and an SDM of
the point's own. It gives two numbers (mean over architectures of the mean over seeds of the test
mIoU, background included, as the report's tables): the real-only row ``r_p`` (``RALLF000``) and
the real + synthetic row ``m_p`` (the report's main row, e.g. ``RALLFALL[synthetic]``).

**Worth.** The real-only curve ``r(n)`` is the piecewise-linear interpolation of the points
``(n_p, r_p)``. The real images that give the mixed mIoU ``m_p`` are found by walking along
that curve from the point itself in the direction of the gain (:func:`equivalent_images`):

    m_p >= r_p:  n*(m_p) = the smallest n >= n_p with r(n) >= m_p
    m_p <  r_p:  n*(m_p) = the largest  n <= n_p with r(n) <= m_p

and the synthetic data is worth ``w_p = n*(m_p) - n_p`` real images at point ``p``. So the
worth has the sign of the gain at the point (0 when the rows are equal), and a noisy,
non-monotone curve is read near the point, not at a far crossing. ``w_p > 0``: the synthetic set
raised the mIoU as much as ``w_p`` more labels would have; ``w_p <= 0``: it did not help (it is
worth that many labels fewer). Two cases have no interpolated answer:

- the curve never reaches ``m_p`` to the right (status ``above``, e.g. ``m_p`` above the whole
  curve): more than ``n_K - n_p`` real images, a lower bound (only a curve extended past the
  largest point, i.e. more real labels, could say how many);
- the curve never falls to ``m_p`` to the left (status ``below``): fewer than ``n_1 - n_p``
  (<= 0) images, an upper bound (the curve does not go below its smallest point).

**Interval.** A paired bootstrap over seeds and test images (as :mod:`isdm.evaluation.stats`):
each replicate draws the seed indices and the test images with replacement ONCE and applies the
draw to every point, both rows and every architecture (the points share the seeds and the test
split), recomputes every ``r_p`` and ``m_p`` from the resampled counts and ``w_p`` from them;
the 95 % interval is the 2.5 / 97.5 percentile of the replicates (no interpolation between
replicates, so a replicate above or below the curve gives an open end: ``+inf`` / ``-inf``,
reported as the bound). The point's SDM is not resampled: the interval is that of the
downstream noise for these SDMs, not of retraining them.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from isdm.errors import EvaluationError
from isdm.evaluation.metrics import miou_from_counts
from isdm.evaluation.mixes import BASELINE, mix_label

__all__ = ["Point", "equivalent_images", "worth", "status", "load_point", "check_points",
           "point_mious", "curve_bootstrap", "interval", "point_name"]


@dataclass(frozen=True)
class Point:
    """One point of the curve: its ``fraction`` of the train split, ``n`` labelled images, the
    mixed row's ``label``, and the test counts ``[A, S, N, C, 3]`` of the real-only row
    (``real``) and the mixed row (``mixed``) for ``archs`` and ``seeds``."""

    fraction: float
    n: int
    label: str
    archs: tuple[str, ...]
    seeds: tuple[int, ...]
    real: np.ndarray
    mixed: np.ndarray


def point_name(fraction: float) -> str:
    """A point's folder name: ``0.25``, ``0.5``, ``1.0`` (how DVC writes a float ``${item}``)."""
    return str(float(fraction))


def equivalent_images(ns: Sequence[float], curve: Sequence[float], target: float,
                      at: int) -> float:
    """The real images at which the piecewise-linear ``curve`` (over ascending ``ns``) gives
    ``target``, walking from point ``at`` up the curve for ``target >= curve[at]`` and down it
    otherwise (see the module docstring); ``+inf`` / ``-inf`` when the curve never gets there,
    NaN when a value is undefined."""
    ns, c = np.asarray(ns, np.float64), np.asarray(curve, np.float64)
    if not (np.isfinite(target) and np.all(np.isfinite(c))):
        return math.nan
    if target == c[at]:
        return float(ns[at])
    if target > c[at]:
        for j in range(at + 1, len(c)):
            if c[j] >= target:  # c[j - 1] < target <= c[j]
                return float(ns[j - 1] + (target - c[j - 1]) / (c[j] - c[j - 1])
                             * (ns[j] - ns[j - 1]))
        return math.inf
    for j in range(at - 1, -1, -1):
        if c[j] <= target:  # c[j] <= target < c[j + 1]
            return float(ns[j] + (target - c[j]) / (c[j + 1] - c[j]) * (ns[j + 1] - ns[j]))
    return -math.inf


def worth(ns: Sequence[float], real: Sequence[float], mixed: float, at: int) -> float:
    """``equivalent_images(ns, real, mixed, at) - ns[at]``: the real images the synthetic data
    is worth at point ``at`` (``+inf`` above the curve, ``-inf`` below it)."""
    return equivalent_images(ns, real, mixed, at) - float(ns[at])


def status(value: float) -> str:
    """``interpolated``, ``above`` (+inf), ``below`` (-inf) or ``undefined`` (NaN)."""
    if math.isnan(value):
        return "undefined"
    return "above" if value == math.inf else "below" if value == -math.inf else "interpolated"


def _mixed_label(summary: dict[str, Any], where: Path) -> str:
    """The report's main row: its main mix with the first set and that set's main protocol."""
    main, sets = summary.get("main_mix"), summary.get("sets") or []
    if not main or not sets:
        raise EvaluationError(f"{where}: this report has no real + synthetic row; evaluate the "
                              "point with --synthetic (and a mix like RALLFALL)")
    protocol = next((p for m, s, p in summary.get("rows", []) if m == main and s == sets[0]),
                    "mix")
    return mix_label(main, sets[0], protocol)


def load_point(folder: str | Path, fraction: float) -> Point:
    """A point from an ``isdm evaluate`` output folder (``report.json``, ``counts.npz``,
    ``cells.csv``); ``n`` = the real-only cells' training + validation images.

    Raises:
        EvaluationError: a file missing, or no real + synthetic row.
    """
    folder = Path(folder)
    for name in ("report.json", "counts.npz", "cells.csv"):
        if not (folder / name).is_file():
            raise EvaluationError(f"{folder / name} is missing: the point {point_name(fraction)} "
                                  "has no evaluate report yet (run its evaluate stage: `dvc "
                                  "repro pipelines/labels/dvc.yaml`)")
    summary = json.loads((folder / "report.json").read_text())
    label = _mixed_label(summary, folder)
    archs = tuple(summary["budget"]["architectures"])
    with np.load(folder / "counts.npz") as npz:
        real = np.stack([npz[f"{a}__{BASELINE}"] for a in archs])
        mixed = np.stack([npz[f"{a}__{label}"] for a in archs])
    with open(folder / "cells.csv", newline="") as f:
        base = next(r for r in csv.DictReader(f) if r["mix"] == BASELINE)
    return Point(float(fraction), int(base["n_real"]) + int(base["n_val"]), label, archs,
                 tuple(summary["budget"]["seeds"]), real, mixed)


def check_points(points: Sequence[Point]) -> list[Point]:
    """The points sorted by ``n``, checked to share architectures, seeds and test images and
    to have distinct sizes.

    Raises:
        EvaluationError: naming the first point that differs.
    """
    points = sorted(points, key=lambda p: p.n)
    first = points[0]
    for p in points[1:]:
        for what, mine, theirs in (("architectures", p.archs, first.archs),
                                   ("seeds", p.seeds, first.seeds),
                                   ("test counts [A, S, N, C, 3]", p.real.shape, first.real.shape)):
            if mine != theirs:
                raise EvaluationError(
                    f"point {point_name(p.fraction)} was evaluated with {what} {mine}, point "
                    f"{point_name(first.fraction)} with {theirs}: every point needs the same "
                    "evaluate.architectures, evaluate.seeds and test split (the labels "
                    "pipeline's evaluate overlay)")
    sizes = [p.n for p in points]
    if len(set(sizes)) != len(sizes):
        raise EvaluationError(f"two points have the same number of labelled images ({sizes}): "
                              "choose labels.fractions that give distinct subset sizes")
    return points


def _mean_miou(counts: np.ndarray, weights: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Counts ``[A, S, N, C, 3]``, image weights ``[B, N]``, seed draws ``[B, S]`` -> the mean
    over architectures of the mean over drawn seeds of the seeds' pooled mIoU, ``[B]``."""
    summed = np.einsum("bn,asnck->basck", weights, counts.astype(np.float64))
    per_seed = miou_from_counts(summed)  # [B, A, S]
    drawn = np.take_along_axis(per_seed, seeds[:, None, :], axis=2)
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.nanmean(drawn, axis=2), axis=1)


def point_mious(point: Point) -> tuple[float, float]:
    """``(r_p, m_p)``: the real-only and mixed mIoU of a point (no resampling)."""
    n_seeds, n_images = point.real.shape[1:3]
    w, s = np.ones((1, n_images)), np.arange(n_seeds)[None]
    return float(_mean_miou(point.real, w, s)[0]), float(_mean_miou(point.mixed, w, s)[0])


def curve_bootstrap(points: Sequence[Point], n_boot: int, seed: int,
                    batch: int = 250) -> dict[str, np.ndarray]:
    """``{"real", "mixed", "worth"}``: ``[n_boot, P]`` replicates of ``r_p``, ``m_p`` and
    ``w_p`` (see the module docstring), one draw of seeds and test images per replicate shared
    by every point."""
    rng = np.random.default_rng(seed)
    n_seeds, n_images = points[0].real.shape[1:3]
    ns = [p.n for p in points]
    real, mixed = [], []
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        img = rng.integers(0, n_images, size=(b, n_images))
        weights = np.stack([np.bincount(row, minlength=n_images) for row in img]).astype(float)
        seeds = (rng.integers(0, n_seeds, size=(b, n_seeds)) if n_seeds > 1
                 else np.zeros((b, 1), int))
        real.append(np.stack([_mean_miou(p.real, weights, seeds) for p in points], axis=1))
        mixed.append(np.stack([_mean_miou(p.mixed, weights, seeds) for p in points], axis=1))
    r = np.concatenate(real) if real else np.zeros((0, len(points)))
    m = np.concatenate(mixed) if mixed else np.zeros((0, len(points)))
    w = np.array([[worth(ns, r[i], m[i, j], j) for j in range(len(points))]
                  for i in range(len(r))]).reshape(len(r), len(points))
    return {"real": r, "mixed": m, "worth": w}


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of ``values`` (NaN left out; ``inf`` kept: an open end), taken
    as replicate values (``inverted_cdf``); NaN for no defined value."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = np.quantile(v, [alpha, 1 - alpha], method="inverted_cdf")
    return float(lo), float(hi)
