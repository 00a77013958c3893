"""Class balancing of the conditioning masks (the original tool's ``balance_args``).

Given a pool of candidate masks (the train masks, plus augmented variants when
``use_mask_augmentation``), choose ``num_samples`` of them, with repetition, so that the class
distribution of the data set moves toward balance.

Definitions:

- *Counts* per class are pixel counts (``based_on_pixel_count``) or image counts (the number of
  masks that contain the class). ``ignore_index`` pixels are never counted.
- *Counted classes* are all classes except ``ejection_classes`` (default: background 0).
  **Binary rule**: when fewer than two classes remain counted (binary data with background
  ejected), balancing between one class and itself is meaningless, so the ejected classes are
  counted again: binary balancing compares defect with background, i.e. it favours masks with a
  larger defect share (pixel mode) or masks that contain a defect at all (image mode).
- *Start*: the real train totals, or zero with ``based_on_generated_data_only``.
- *Imbalance* ``L(n) = sum_c (p_c - 1/K)^2`` with ``p = n / sum(n)`` over the K counted classes
  (squared distance of the class shares to uniform; ``1 - 1/K``, its maximum, for ``n = 0``).
- *Balanced within d* (``max_class_dif``): ``max(n) <= (1 + d) * min(n)`` and ``min(n) > 0``,
  the original's "every class is complete" rule.

Choice, one mask per step (exactly ``num_samples`` steps), generalising the original's "walk
the masks that contain no complete class in a seeded shuffled order":

1. While not balanced within d, the *helpful* candidates are those whose addition reduces
   ``L``; take the helpful one of highest seeded priority that is unused in the current round
   (a round ends when every helpful candidate has been taken once; then all are available
   again). Walking in priority order rather than always taking the single best mask keeps the
   layouts diverse; every step still moves the distribution toward balance. When no candidate
   reduces ``L``, take the least harmful one (the pool cannot do better; ties by priority).
2. Once balanced within d, the helpful candidates are those whose addition keeps the balance
   (same rounds and priority); if none does, step 1's fallback.
3. A candidate with no pixel of any counted class is never taken. If there is none at all,
   the masks are drawn uniformly from the pool (seeded) and :attr:`BalanceResult.notes` says so,
   instead of the original's crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from isdm.seeds import Stream, generator

__all__ = ["Choice", "BalanceResult", "class_counts", "counted_classes", "imbalance", "balance",
           "priority"]


@dataclass(frozen=True)
class Choice:
    """One planned sample: mask ``source`` (index into the mask list), the augmentation seed
    (``None`` = the mask as it is) and, with ``data.crop``, the seed of its crop."""

    source: int
    aug_seed: Optional[int] = None
    crop_seed: Optional[int] = None


@dataclass
class BalanceResult:
    """Chosen masks and the class distributions before / after (counts over ALL classes)."""

    choices: list[Choice]
    counted: tuple[int, ...]
    basis: str  # "pixels" or "images"
    before: np.ndarray  # real train totals [num_classes]
    generated: np.ndarray  # totals of the chosen masks [num_classes]
    from_zero: bool
    notes: list[str] = field(default_factory=list)

    @property
    def after(self) -> np.ndarray:
        """Distribution of the enlarged data set (real + generated), or generated only."""
        return self.generated if self.from_zero else self.before + self.generated

    def report(self) -> dict:
        """JSON-ready report: counts, shares of the counted classes and imbalance before/after."""

        def side(n: np.ndarray) -> dict:
            sub = n[list(self.counted)].astype(np.float64)
            total = sub.sum()
            return {
                "counts": [int(x) for x in n],
                "shares": {str(c): (float(n[c] / total) if total else 0.0) for c in self.counted},
                "imbalance": float(imbalance(sub)),
                "max_over_min": float(sub.max() / sub.min()) if sub.min() > 0 else None,
            }

        return {
            "basis": self.basis,
            "counted_classes": list(self.counted),
            "from_generated_only": self.from_zero,
            "before": side(self.before),
            "after": side(self.after),
            "generated": side(self.generated),
            "notes": list(self.notes),
        }


def class_counts(mask: np.ndarray, num_classes: int, *, pixels: bool) -> np.ndarray:
    """int64 [num_classes]: pixel counts of each class id in ``mask``, or 0/1 presence when
    ``pixels`` is False. Ids >= num_classes (the ignore index) are not counted."""
    hist = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=256)[:num_classes]
    return hist.astype(np.int64) if pixels else (hist > 0).astype(np.int64)


def counted_classes(num_classes: int, ejection_classes: Sequence[int]) -> tuple[int, ...]:
    """Classes that take part in balancing; see the module docstring for the binary rule."""
    bad = [c for c in ejection_classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"sample.balance.ejection_classes={list(ejection_classes)}: ids {bad} "
                         f"are not classes 0..{num_classes - 1}")
    counted = tuple(c for c in range(num_classes) if c not in set(ejection_classes))
    return counted if len(counted) >= 2 else tuple(range(num_classes))


def imbalance(n: np.ndarray) -> np.ndarray:
    """``L(n) = sum_c (n_c / sum(n) - 1/K)^2`` over the last axis (``1 - 1/K`` where sum is 0)."""
    n = np.asarray(n, dtype=np.float64)
    k = n.shape[-1]
    total = n.sum(-1, keepdims=True)
    shares = np.divide(n, total, out=np.full_like(n, 1.0 / k), where=total > 0)
    out = ((shares - 1.0 / k) ** 2).sum(-1)
    return np.where(total[..., 0] > 0, out, 1.0 - 1.0 / k)


def _balanced(n: np.ndarray, d: float) -> np.ndarray:
    lo, hi = n.min(-1), n.max(-1)
    return (lo > 0) & (hi <= (1.0 + d) * lo)


def balance(
    pool_counts: np.ndarray,
    pool: Sequence[Choice],
    real_counts: np.ndarray,
    num_samples: int,
    *,
    ejection_classes: Sequence[int] = (0,),
    max_class_dif: float = 0.1,
    based_on_generated_data_only: bool = False,
    basis: str = "pixels",
    seed: int = 0,
) -> BalanceResult:
    """Choose ``num_samples`` candidates from ``pool`` greedily toward class balance.

    Args:
        pool_counts: int [P, num_classes] per-candidate counts (pixels or presence, see
            :func:`class_counts`), in the same basis as ``real_counts``.
        pool: the P candidates (:class:`Choice`).
        real_counts: int [num_classes] totals of the real train masks (the "before").
        num_samples: how many choices to return (exactly).
        ejection_classes: classes never counted (see the binary rule).
        max_class_dif: tolerance d of "balanced" (``max <= (1 + d) min``).
        based_on_generated_data_only: start the running counts at zero instead of the real totals.
        basis: ``"pixels"`` or ``"images"``, for the report.
        seed: seeds the tie-breaking priority (and the uniform fallback).

    Returns:
        :class:`BalanceResult` with ``len(choices) == num_samples``.
    """
    pool_counts = np.asarray(pool_counts, dtype=np.int64)
    num_classes = pool_counts.shape[1]
    if len(pool) != len(pool_counts) or not len(pool):
        raise ValueError(f"balance: {len(pool)} candidates but {len(pool_counts)} count rows; "
                         "the pool must be non-empty")
    if max_class_dif < 0:
        raise ValueError(f"sample.balance.max_class_dif={max_class_dif}: must be >= 0")
    counted = counted_classes(num_classes, ejection_classes)
    v = pool_counts[:, counted].astype(np.float64)
    rng = generator(Stream.BALANCE_DRAW, seed)
    rank = priority(seed, len(pool))
    notes: list[str] = []
    if sorted(counted) == list(range(num_classes)) and len(ejection_classes):
        notes.append(f"fewer than two classes left after ejecting {list(ejection_classes)}: "
                     f"balancing all classes {list(counted)} (binary rule)")
    useful = v.sum(1) > 0
    if not useful.any():
        notes.append("no candidate mask contains any counted class: masks drawn uniformly")
        picks = rng.integers(len(pool), size=num_samples)
    else:
        start = np.zeros(len(counted)) if based_on_generated_data_only \
            else np.asarray(real_counts, dtype=np.float64)[list(counted)]
        picks = _greedy(v, useful, rank, start, num_samples, max_class_dif)
    chosen = [pool[int(i)] for i in picks]
    generated = pool_counts[np.asarray(picks, dtype=np.int64)].sum(0) if num_samples else \
        np.zeros(num_classes, dtype=np.int64)
    return BalanceResult(choices=chosen, counted=counted, basis=basis,
                         before=np.asarray(real_counts, dtype=np.int64), generated=generated,
                         from_zero=based_on_generated_data_only, notes=notes)


def priority(seed: int, size: int) -> np.ndarray:
    """int64 [size]: the seeded rank of each candidate (0 = taken first among equals)."""
    rank = np.empty(size, dtype=np.int64)
    rank[generator(Stream.BALANCE_PRIORITY, seed).permutation(size)] = np.arange(size)
    return rank


def _first(mask: np.ndarray, rank: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[np.argmin(rank[mask])])


def _greedy(v: np.ndarray, useful: np.ndarray, rank: np.ndarray, n: np.ndarray,
            num_samples: int, d: float) -> list[int]:
    """The selection loop of :func:`balance` (module docstring, steps 1-2); pool indices."""
    used = np.zeros(len(v), dtype=bool)
    picks: list[int] = []
    n = n.copy()
    for _ in range(num_samples):
        new = n[None, :] + v  # [P, K] counts after adding each candidate
        if _balanced(n, d):
            ok = useful & _balanced(new, d)  # keeps the balance
        else:
            ok = useful & (imbalance(n) - imbalance(new) > 0)  # reduces the imbalance
        if ok.any() and not (ok & ~used).any():
            used[:] = False  # every helpful candidate was taken: next round
        if ok.any():
            pick = _first(ok & ~used, rank)
        else:  # nothing helps: the least harmful candidate (the pool cannot do better)
            score = imbalance(n) - imbalance(new)
            best = score[useful].max()
            pick = _first(useful & (score >= best), rank)
        used[pick] = True
        picks.append(pick)
        n += v[pick]
    return picks
