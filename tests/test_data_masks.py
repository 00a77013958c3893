"""Mask semantics (decode, one-hot, null label, drop, palette), transforms, dataset, split_keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from isdm.config import DataConfig
from isdm.data import masks
from isdm.data.dataset import SegmentationFolder, split_keys
from isdm.data.masks import MaskValueError, decode_mask, drop_labels, null_label, one_hot
from isdm.data.transforms import load_image, load_mask


# ---------------------------------------------------------------- decode


def test_binary_decode_01_and_0255_agree():
    ids01 = decode_mask(np.array([[0, 1], [1, 0]], np.uint8), "binary", 2)
    ids255 = decode_mask(np.array([[0, 255], [255, 0]], np.uint8), "binary", 2)
    np.testing.assert_array_equal(ids01, [[0, 1], [1, 0]])
    np.testing.assert_array_equal(ids255, ids01)
    assert ids01.dtype == np.uint8


def test_binary_decode_any_positive_and_rgb():
    np.testing.assert_array_equal(decode_mask(np.array([[0, 3, 254, 128]]), "binary", 2), [[0, 1, 1, 1]])
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1] = (1, 0, 0)      # a colour whose gray value would round to 0: still defect
    rgb[0, 2] = (255, 255, 255)
    np.testing.assert_array_equal(decode_mask(rgb, "binary", 2), [[0, 1, 1]])


def test_multiclass_palette_png_uses_indices(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    img = Image.frombytes("P", (3, 2), ids.tobytes())
    # colours chosen so that a gray conversion would give other numbers than the indices
    img.putpalette([10, 200, 30, 250, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", "multi-class", 3, 255, None), ids)


def test_multiclass_gray_ignore_kept_and_invalid_values_named():
    arr = np.array([[0, 1, 255], [2, 0, 1]], np.uint8)
    np.testing.assert_array_equal(decode_mask(arr, "multi-class", 3, 255), arr)
    with pytest.raises(MaskValueError) as e:
        decode_mask(np.array([[0, 7, 3, 255]], np.uint8), "multi-class", 3, 255)
    assert e.value.values == [3, 7]
    assert "[3, 7]" in str(e.value) and "num_classes >= 8" in str(e.value)
    with pytest.raises(MaskValueError):  # without ignore_index, 255 is invalid too
        decode_mask(np.array([[0, 255]], np.uint8), "multi-class", 3, None)


def test_label_space_must_fit_uint8():
    with pytest.raises(ValueError, match="ignore_index=300"):
        decode_mask(np.zeros((2, 2), np.uint16), "multi-class", 3, 300)
    with pytest.raises(ValueError, match="num_classes=256"):
        decode_mask(np.zeros((2, 2), np.uint8), "multi-class", 256, None)
    np.testing.assert_array_equal(decode_mask(np.array([[0, 9]], np.uint16), "binary", 2, 300), [[0, 1]])


def test_multiclass_rgb_gray_ok_colour_rejected():
    gray3 = np.repeat(np.array([[0, 1], [2, 1]], np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(gray3, "multi-class", 3), [[0, 1], [2, 1]])
    colour = gray3.copy()
    colour[0, 0] = (5, 0, 0)
    with pytest.raises(ValueError, match="palette"):
        decode_mask(colour, "multi-class", 3)


def test_load_mask_error_names_file(tmp_path):
    Image.fromarray(np.array([[0, 9]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(MaskValueError, match="bad.png") as e:
        load_mask(tmp_path / "bad.png", "multi-class", 5, 255, None)
    assert e.value.values == [9]


# ---------------------------------------------------------------- one-hot, null, drop


def test_one_hot_values_shape_and_ignore():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    oh = one_hot(labels, 3, 255)
    assert oh.shape == (1, 3, 2, 2) and oh.dtype == torch.float32
    expected = torch.tensor([[[1, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [1, 0]]], dtype=torch.float32)
    torch.testing.assert_close(oh[0], expected)
    assert oh[0, :, 1, 1].sum() == 0  # ignored pixel: all-zero vector
    assert one_hot(torch.tensor([[0, 1]]), 2).shape == (2, 1, 2)  # [H, W] -> [C, H, W]
    with pytest.raises(ValueError, match=r"\[3\]"):
        one_hot(torch.tensor([[[0, 3]]]), 3, 255)


def test_null_label_is_all_zeros_not_background():
    seg = one_hot(torch.zeros(2, 4, 4, dtype=torch.long), 3)
    null = null_label(seg)
    assert null.shape == seg.shape and null.dtype == seg.dtype and null.abs().sum() == 0
    assert seg[:, 0].sum() == 32  # "all background" is a different, real layout


def test_drop_labels_rate_zero_is_identity_and_draws_nothing():
    seg = one_hot(torch.randint(0, 3, (5, 4, 4), generator=torch.Generator().manual_seed(1)), 3)
    g = torch.Generator().manual_seed(7)
    state = g.get_state().clone()
    assert drop_labels(seg, 0.0, g) is seg
    assert torch.equal(g.get_state(), state)


def test_drop_labels_seeded_and_exact_rows():
    seg = torch.ones(64, 3, 2, 2)
    a = drop_labels(seg, 0.5, torch.Generator().manual_seed(3))
    b = drop_labels(seg, 0.5, torch.Generator().manual_seed(3))
    c = drop_labels(seg, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    per_sample = a.flatten(1).sum(1)
    assert set(per_sample.tolist()) <= {0.0, 12.0}  # whole samples dropped or kept, never partly
    expected = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(per_sample == 0, expected)


def test_drop_labels_fraction():
    seg = torch.ones(4000, 2, 1, 1)
    dropped = drop_labels(seg, 0.3, torch.Generator().manual_seed(0)).flatten(1).sum(1) == 0
    assert abs(dropped.float().mean().item() - 0.3) < 0.03  # 4 sigma of Binomial(4000, 0.3)


# ---------------------------------------------------------------- palette


def test_palette_original_colours_unique_and_colorize():
    assert masks.PALETTE.shape == (256, 3) and masks.PALETTE.dtype == np.uint8
    assert [tuple(c) for c in masks.PALETTE[:4]] == [(0, 0, 0), (255, 255, 255), (1, 0, 103), (255, 0, 86)]
    assert tuple(masks.PALETTE[11]) == (164, 36, 0)
    assert len({tuple(c) for c in masks.PALETTE}) == 256
    ids = np.array([[0, 1, 4], [11, 12, 255]], np.uint8)
    img = masks.colorize(torch.from_numpy(ids))
    assert img.mode == "P" and img.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(img), ids)
    np.testing.assert_array_equal(np.asarray(img.convert("RGB")), masks.PALETTE[ids])


# ---------------------------------------------------------------- transforms and dataset


def _stripes(tmp_path):
    """40x20 image: red 6 px borders left/right, green elsewhere; mask 1 on the left border.

    The centre square (columns 10..29) plus the bicubic support (5 source px at scale 2.5)
    never reaches the red columns."""
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :6, 0] = rgb[:, 34:, 0] = 255
    rgb[:, 6:34, 1] = 255
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :6] = 1
    Image.fromarray(rgb).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    return tmp_path / "s.png", tmp_path / "m.png"


def test_resize_crop_resizes_short_side_and_center_crops(tmp_path):
    img_path, mask_path = _stripes(tmp_path)
    squeezed = np.asarray(load_image(img_path, 8, "stretch"))
    cropped = np.asarray(load_image(img_path, 8, "crop"))
    assert squeezed.shape == cropped.shape == (8, 8, 3)
    assert cropped[..., 0].max() == 0 and cropped[..., 1].min() == 255  # only the green centre
    assert squeezed[:, 0, 0].min() > 200 and squeezed[:, -1, 0].min() > 200  # squeezed keeps red
    m_crop = load_mask(mask_path, "binary", 2, None, 8, "crop")
    m_sq = load_mask(mask_path, "binary", 2, None, 8, "stretch")
    assert m_crop.shape == (8, 8) and m_crop.max() == 0
    np.testing.assert_array_equal(m_sq[0], [1, 0, 0, 0, 0, 0, 0, 0])  # source cols 2, 7, ...


def _tiny_dataset(root, keys, size=(6, 4)):
    for i, key in enumerate(keys):
        w, h = size
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:, : w // 2] = 255  # left half white, mask 1 on the left half: a flip moves both
        mask = np.zeros((h, w), np.uint8)
        mask[:, : w // 2] = 1 + i % 2
        for sub, arr, ext in (("images", rgb, ".png"), ("masks", mask, ".png")):
            p = root / "train" / sub / f"{key}{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)


def test_dataset_items_range_types_and_joint_flip(tmp_path):
    _tiny_dataset(tmp_path, ["a", "b", "sub/c"], size=(8, 8))
    cfg = DataConfig(dataset_mode="multi-class", num_classes=3, image_size=8)
    ds = SegmentationFolder(tmp_path, "train", cfg, augment=True, generator=torch.Generator().manual_seed(0))
    assert ds.keys == ["a", "b", "sub/c"]
    flips = []
    for _ in range(4):
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
            assert item["label"].shape == (8, 8) and item["label"].dtype == torch.int64
            assert set(item["image"].unique().tolist()) == {-1.0, 1.0}
            white = item["image"][0] > 0
            assert torch.equal(white, item["label"] > 0)  # image and label flipped together
            flips.append(bool(white[0, -1]))
    assert 0 < sum(flips) < len(flips)
    a = [SegmentationFolder(tmp_path, "train", cfg, augment=True,
                            generator=torch.Generator().manual_seed(5))[1]["label"] for _ in range(2)]
    assert torch.equal(a[0], a[1])


def test_dataset_keys_subset_and_unknown_key(tmp_path):
    _tiny_dataset(tmp_path, ["a", "b"])
    cfg = DataConfig(dataset_mode="binary", num_classes=2, image_size=8)
    ds = SegmentationFolder(tmp_path, "train", cfg, keys=["b"])
    assert len(ds) == 1 and ds[0]["key"] == "b"
    with pytest.raises(ValueError, match="'zz'"):
        SegmentationFolder(tmp_path, "train", cfg, keys=["zz"])


def test_split_keys_deterministic_disjoint_and_order_free():
    keys = [f"k{i:02d}" for i in range(20)]
    tr, va = split_keys(keys, 0.25, seed=3)
    assert len(va) == 5 and len(tr) == 15 and sorted(tr + va) == keys and not set(tr) & set(va)
    assert (tr, va) == split_keys(list(reversed(keys)), 0.25, seed=3)
    assert split_keys(keys, 0.25, seed=4) != (tr, va)
    assert tr == sorted(tr) and va == sorted(va)
    assert split_keys(keys, 0.0, seed=0) == (keys, [])
    assert len(split_keys(["a", "b", "c"], 0.01, seed=0)[1]) == 1  # at least one when asked for
