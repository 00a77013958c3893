"""The gate's arithmetic on per-pixel losses and predictions: pure numpy, no model.

Notation: a synthetic set of N pairs; pair n has a label ``y_n`` ``[H, W]`` (class ids
``0..C-1``, or ``ignore_index``), the scorer's per-pixel loss ``l_n`` ``[H, W]`` float (the
cross-entropy of its logits against ``y_n``; NaN at ignored pixels) and its prediction ``p_n``.

- class mean loss (over the whole set): ``m_c = sum_{n, i: y_n[i] = c} l_n[i] / #{n, i: y_n[i] = c}``;
- FreeMask pixel filter (Yang et al., NeurIPS 2023): pixel i of class c is ignored when
  ``l_n[i] > tau * m_c`` (strictly); ``tau = 0`` ignores nothing;
- fidelity of a pair: the mean over the classes its label holds of
  ``IoU_c = tp_c / (tp_c + fp_c + fn_c)`` of ``p_n`` against ``y_n`` (ignored pixels excluded);
- hardness weight of a source mask k: ``w_k = h_k^p / mean_j h_j^p`` with ``h_k`` the mean
  per-pixel loss of the pairs drawn from mask k (``p = 0``: every weight is 1).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["class_mean_loss", "high_loss_pixels", "ignore_pixels", "pair_iou", "fidelity",
           "hardness_weights"]


def _valid(label: np.ndarray, num_classes: int) -> np.ndarray:
    return label < num_classes  # ignore_index is >= num_classes (checked by DataConfig)


def class_mean_loss(losses: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    num_classes: int) -> np.ndarray:
    """``m_c`` float64 ``[C]`` over every pixel of every pair (NaN for a class no label holds).

    Args:
        losses: ``[H, W]`` float per pair; labels: ``[H, W]`` integer ids per pair (same shapes).
    """
    sums, counts = np.zeros(num_classes), np.zeros(num_classes, dtype=np.int64)
    for loss, label in zip(losses, labels):
        keep = _valid(label, num_classes)
        ids = label[keep].astype(np.int64)
        sums += np.bincount(ids, weights=loss[keep].astype(np.float64), minlength=num_classes)
        counts += np.bincount(ids, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def high_loss_pixels(loss: np.ndarray, label: np.ndarray, class_means: np.ndarray,
                     tau: float) -> np.ndarray:
    """bool ``[H, W]``: labelled pixels with ``loss > tau * m_{label}``; none when ``tau == 0``."""
    num_classes = len(class_means)
    keep = _valid(label, num_classes)
    if tau <= 0:
        return np.zeros(label.shape, dtype=bool)
    limit = tau * class_means[np.where(keep, label, 0).astype(np.int64)]
    return keep & (loss > limit)


def ignore_pixels(label: np.ndarray, high: np.ndarray, ignore_index: int,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(``label`` with the ``high`` pixels set to ``ignore_index``, int64 ``[C]`` pixels
    ignored per class); the input is not modified."""
    ignored = np.bincount(label[high].astype(np.int64), minlength=num_classes)[:num_classes]
    out = label.copy()
    out[high] = ignore_index
    return out, ignored.astype(np.int64)


def pair_iou(pred: np.ndarray, label: np.ndarray, num_classes: int) -> dict[int, float]:
    """``IoU_c`` of ``pred`` against ``label`` for every class in either (ignored pixels of the
    label excluded); a class only predicted has IoU 0."""
    keep = _valid(label, num_classes)
    y, p = label[keep].astype(np.int64), pred[keep].astype(np.int64)
    cm = np.bincount(y * num_classes + p, minlength=num_classes ** 2).reshape(num_classes,
                                                                             num_classes)
    tp = np.diagonal(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    return {c: float(tp[c] / union[c]) for c in range(num_classes) if union[c] > 0}


def fidelity(iou: Mapping[int, float], label: np.ndarray, num_classes: int) -> Optional[float]:
    """Mean of ``iou`` over the classes ``label`` holds; None for a label without classes."""
    present = [int(c) for c in np.unique(label) if c < num_classes]
    return float(np.mean([iou[c] for c in present])) if present else None


def hardness_weights(mean_losses: Mapping[str, Sequence[float]],
                     power: float) -> dict[str, float]:
    """``w_k`` per source mask ``k`` from the mean losses of its pairs (see the module
    docstring); a mask without a finite loss gets weight 1 and is left out of the mean."""
    hard = {k: float(np.mean([v for v in mean_losses[k] if math.isfinite(v)]))
            for k in sorted(mean_losses) if any(math.isfinite(v) for v in mean_losses[k])}
    raw = {k: h ** power for k, h in hard.items()}
    norm = float(np.mean(list(raw.values()))) if raw else 1.0
    return {k: (raw[k] / norm if k in raw and norm > 0 else 1.0) for k in sorted(mean_losses)}
