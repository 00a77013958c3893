"""Segmentation metrics on hand-computed cases (pooled counts, NaN exclusion, ignore index)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isdm.evaluation.metrics import (confusion_matrix, counts_from_confusion, dice_per_class,
                                     image_counts, iou_per_class, miou_from_counts, summarize)


def test_perfect_prediction_scores_one_everywhere():
    target = np.array([[[0, 1], [1, 2]]])
    m = summarize(image_counts(target, target, 3))
    assert (m["miou"], m["miou_nobg"], m["micro_iou"], m["dice"], m["pixel_acc"]) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert [m[f"iou_class_{c}"] for c in range(3)] == [1.0, 1.0, 1.0]


def test_empty_prediction_binary_hand_values():
    # 4 pixels, 2 defect; the model predicts background everywhere.
    target = np.array([[[0, 1], [0, 1]]])
    pred = np.zeros_like(target)
    counts = image_counts(pred, target, 2)
    np.testing.assert_array_equal(counts[0], [[2, 2, 0], [0, 0, 2]])  # (tp, fp, fn) per class
    m = summarize(counts)
    assert m["iou_class_0"] == 0.5 and m["iou_class_1"] == 0.0
    assert m["miou"] == 0.25 and m["miou_nobg"] == 0.0
    assert m["micro_iou"] == pytest.approx(2 / 6)           # 2 / (2 + 2 + 2)
    assert m["dice_class_0"] == pytest.approx(4 / 6) and m["dice_class_1"] == 0.0
    assert m["pixel_acc"] == 0.5


def test_class_absent_from_both_is_nan_and_excluded_from_means():
    target = np.array([[[0, 0], [1, 1]]])
    pred = np.array([[[0, 1], [1, 1]]])
    m = summarize(image_counts(pred, target, 3))           # class 2 appears nowhere
    assert math.isnan(m["iou_class_2"]) and math.isnan(m["dice_class_2"])
    # class 0: tp 1, fp 0, fn 1 -> 1/2 ; class 1: tp 2, fp 1, fn 0 -> 2/3
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["miou_nobg"] == pytest.approx(2 / 3)
    assert m["n_classes_defined"] == 2.0


def test_ignore_index_pixels_enter_no_count():
    target = np.array([[[0, 255], [1, 255]]])
    pred = np.array([[[0, 1], [1, 0]]])                    # the two ignored pixels are "wrong"
    counts = image_counts(pred, target, 2, ignore_index=255)
    np.testing.assert_array_equal(counts[0], [[1, 0, 0], [1, 0, 0]])
    assert summarize(counts)["miou"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        image_counts(pred, target, 2, ignore_index=None)


def test_iou_is_pooled_over_images_not_averaged_per_image():
    # image A: defect 1 px predicted right; image B: 3 defect px all missed.
    target = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 0]]])
    pred = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    counts = image_counts(pred, target, 2)
    # pooled class 1: tp 1, fp 0, fn 3 -> 0.25 (a per-image mean would give (1 + 0) / 2 = 0.5)
    assert iou_per_class(counts)[1] == 0.25
    # micro: class 0 tp 4, fp 3, fn 0; class 1 tp 1, fp 0, fn 3 -> 5 / 11
    assert summarize(counts)["micro_iou"] == pytest.approx(5 / 11)
    assert dice_per_class(counts)[1] == pytest.approx(2 / 5)


def test_micro_iou_matches_smp_micro_reduction():
    import torch
    import segmentation_models_pytorch as smp

    g = np.random.default_rng(0)
    target = g.integers(0, 4, size=(3, 8, 8))
    pred = np.where(g.random((3, 8, 8)) < 0.6, target, g.integers(0, 4, size=(3, 8, 8)))
    tp, fp, fn, tn = smp.metrics.get_stats(torch.from_numpy(pred), torch.from_numpy(target),
                                           mode="multiclass", num_classes=4)
    ref = float(smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"))
    assert summarize(image_counts(pred, target, 4))["micro_iou"] == pytest.approx(ref, abs=1e-6)
    ours = image_counts(pred, target, 4)
    np.testing.assert_array_equal(ours[..., 0], tp.numpy())
    np.testing.assert_array_equal(ours[..., 1], fp.numpy())


def test_confusion_and_vectorised_miou_agree_with_summarize():
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    counts = counts_from_confusion(cm)
    np.testing.assert_array_equal(counts, [[1, 0, 0], [1, 1, 0], [1, 0, 1]])
    assert float(miou_from_counts(counts)) == pytest.approx(summarize(counts[None])["miou"])
    assert float(miou_from_counts(counts, background=False)) == pytest.approx((0.5 + 0.5) / 2)
    batch = np.stack([counts, np.zeros_like(counts)])
    out = miou_from_counts(batch)
    assert out.shape == (2,) and math.isnan(out[1])
