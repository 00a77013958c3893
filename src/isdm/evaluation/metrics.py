"""Segmentation metrics computed from per-image, per-class pixel counts.

Everything derives from one array, ``counts`` of shape ``[N, C, 3]`` (int64): for test image ``n``
and class ``c`` the number of true-positive, false-positive and false-negative pixels
(``counts[n, c] = (tp, fp, fn)``). Pixels whose ground truth equals ``ignore_index`` are removed
before counting, so they enter no metric. Keeping per-image counts makes the bootstrap cheap:
resampling test images is a weighted sum over ``n``, never a second forward pass.

Definitions (all pooled over the WHOLE test set, i.e. tp/fp/fn are summed over images first):

- per-class IoU   ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` with ``TP_c = sum_n tp[n, c]`` etc.
  A class absent from both prediction and ground truth over the whole set has
  ``TP_c + FP_c + FN_c = 0``: its IoU is undefined (NaN) and it is EXCLUDED from every mean
  (no "1.0 by zero-division" as in smp's default).
- ``miou``        mean of the defined ``IoU_c`` over all classes, background (class 0) included.
- ``miou_nobg``   the same mean over classes 1..C-1 (for binary data: the defect-class IoU).
- ``micro_iou``   the original ISDM tool's checkpoint metric (smp ``reduction="micro"`` on
  one-hot counts): ``sum_c TP_c / sum_c (TP_c + FP_c + FN_c)``, background included.
- per-class Dice  ``Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``; ``dice`` is their mean over
  defined classes, background included; ``dice_nobg`` without background.
- ``pixel_acc``   ``sum_c TP_c / number of non-ignored pixels``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "confusion_matrix",
    "image_counts",
    "counts_from_confusion",
    "iou_per_class",
    "dice_per_class",
    "summarize",
    "miou_from_counts",
]


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: Optional[int] = None) -> np.ndarray:
    """Confusion matrix of one label map pair.

    Args:
        pred: predicted class ids, any shape, values in ``[0, num_classes)``.
        target: ground-truth ids, same shape; pixels equal to ``ignore_index`` are skipped.
    Returns:
        int64 ``[C, C]`` with ``M[t, p]`` = number of pixels of true class t predicted as p.
    """
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.shape} vs {target.shape}")
    keep = np.ones_like(target, dtype=bool) if ignore_index is None else target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target holds ids outside 0..{num_classes - 1} (and not ignore_index="
                         f"{ignore_index}): {np.unique(target).tolist()}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred holds ids outside 0..{num_classes - 1}: {np.unique(pred).tolist()}")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes).astype(np.int64)


def counts_from_confusion(cm: np.ndarray) -> np.ndarray:
    """``[..., C, C]`` confusion matrices -> ``[..., C, 3]`` (tp, fp, fn) per class."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp  # predicted as c, truly something else
    fn = cm.sum(axis=-1) - tp  # truly c, predicted as something else
    return np.stack([tp, fp, fn], axis=-1).astype(np.int64)


def image_counts(pred: np.ndarray, target: np.ndarray, num_classes: int,
                 ignore_index: Optional[int] = None) -> np.ndarray:
    """Per-image counts for a batch.

    Args:
        pred, target: ``[N, H, W]`` class ids (numpy or CPU torch tensors).
    Returns:
        int64 ``[N, C, 3]`` with ``(tp, fp, fn)`` of each class in each image.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"expected pred and target of equal shape [N,H,W], got {pred.shape}, {target.shape}")
    cms = np.stack([confusion_matrix(p, t, num_classes, ignore_index) for p, t in zip(pred, target)])
    return counts_from_confusion(cms)


def _pooled(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    return counts if counts.ndim == 2 else counts.reshape(-1, *counts.shape[-2:]).sum(axis=0)


def iou_per_class(counts: np.ndarray) -> np.ndarray:
    """Pooled per-class IoU from ``[N, C, 3]`` (or already summed ``[C, 3]``) counts.

    Returns float64 ``[C]``; NaN where a class is absent from prediction and ground truth.
    """
    tp, fp, fn = _pooled(counts).astype(np.float64).T
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def dice_per_class(counts: np.ndarray) -> np.ndarray:
    """Pooled per-class Dice ``2TP / (2TP + FP + FN)``; NaN for classes absent from both."""
    tp, fp, fn = _pooled(counts).astype(np.float64).T
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def miou_from_counts(counts: np.ndarray, background: bool = True) -> np.ndarray:
    """Vectorised mIoU: ``[..., C, 3]`` summed counts -> ``[...]`` mean over defined classes.

    ``background=False`` drops class 0. Used by the bootstrap on many replicates at once.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not background:
        counts = counts[..., 1:, :]
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = tp + fp + fn
    defined = denom > 0
    iou = np.where(defined, tp / np.where(defined, denom, 1.0), 0.0)
    n = defined.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, iou.sum(axis=-1) / np.maximum(n, 1), np.nan)


def summarize(counts: np.ndarray) -> dict[str, float]:
    """All scalar metrics of one evaluation from its ``[N, C, 3]`` counts.

    Keys: ``miou``, ``miou_nobg``, ``micro_iou``, ``dice``, ``dice_nobg``, ``pixel_acc``,
    ``iou_class_<c>`` and ``dice_class_<c>`` (NaN when class c is absent from both), and
    ``n_classes_defined`` (how many classes entered ``miou``).
    """
    pooled = _pooled(counts).astype(np.float64)
    iou, dice = iou_per_class(pooled), dice_per_class(pooled)
    tp, fp, fn = pooled.T
    labelled = tp.sum() + fn.sum()  # every non-ignored pixel is tp or fn of its true class
    denom = (tp + fp + fn).sum()
    out = {
        "miou": _nanmean(iou),
        "miou_nobg": _nanmean(iou[1:]),
        "micro_iou": float(tp.sum() / denom) if denom > 0 else float("nan"),
        "dice": _nanmean(dice),
        "dice_nobg": _nanmean(dice[1:]),
        "pixel_acc": float(tp.sum() / labelled) if labelled > 0 else float("nan"),
        "n_classes_defined": float(np.isfinite(iou).sum()),
    }
    out.update({f"iou_class_{c}": float(v) for c, v in enumerate(iou)})
    out.update({f"dice_class_{c}": float(v) for c, v in enumerate(dice)})
    return out
