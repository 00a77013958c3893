"""Pairing by relative path and dataset validation: every problem kind, all listed at once."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from isdm.config import DataConfig
from isdm.data.dataset import SegmentationFolder
from isdm.data.layout import DatasetError, find_pairs
from isdm.data.validate import scan_dataset, validate_dataset

MULTI = DataConfig(dataset_mode="multi-class", num_classes=3, ignore_index=255, image_size=8)


def _img(path, size=(6, 4), ext_format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(path, format=ext_format)


def _mask(path, values, size=(6, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr.flat[: len(values)] = values
    Image.fromarray(arr).save(path)


def _pair(root, split, key, values=(0, 1), img_ext=".png", size=(6, 4), mask_size=None):
    _img(root / split / "images" / f"{key}{img_ext}", size, "JPEG" if img_ext == ".jpg" else None)
    _mask(root / split / "masks" / f"{key}.png", values, mask_size or size)


def _valid(root):
    for split in ("train", "test"):
        _pair(root, split, "ok", (0, 1, 2, 255))


def test_pairs_by_relative_path_in_subfolders_not_sorted_order(tmp_path):
    split = tmp_path / "train"
    # sorted by file name the images are [a/x, b/x, z] but masks [a/x, b/x, z]; make the mask of
    # b/x distinctive so that a wrong pairing would show
    _pair(tmp_path, "train", "b/x", (2, 2), img_ext=".jpg")
    _pair(tmp_path, "train", "a/x", (1,))
    _pair(tmp_path, "train", "z", (0,), img_ext=".jpg")
    pairs = find_pairs(split)
    assert [p.key for p in pairs] == ["a/x", "b/x", "z"]
    assert pairs[1].image == split / "images" / "b" / "x.jpg"
    assert pairs[1].mask == split / "masks" / "b" / "x.png"
    ds = SegmentationFolder(tmp_path, "train", DataConfig(num_classes=3, image_size=8))
    assert int(ds[1]["label"].max()) == 2 and ds[1]["key"] == "b/x"


def test_valid_dataset_statistics(tmp_path):
    _valid(tmp_path)
    _pair(tmp_path, "train", "big", (1, 1, 1), size=(10, 8))
    report = validate_dataset(tmp_path, MULTI)
    train = report.splits["train"]
    assert train.num_pairs == 2 and report.splits["test"].num_pairs == 1
    assert train.min_size == (6, 4) and train.max_size == (10, 8)
    # ok: 24 px = 21x0 + 1x1 + 1x2 + 1x255;  big: 80 px = 77x0 + 3x1
    assert train.class_pixels == [21 + 77, 1 + 3, 1] and train.ignore_pixels == 1
    assert train.class_images == [2, 2, 1]
    assert train.raw_values == [0, 1, 2, 255]


@pytest.mark.parametrize("kind", ["missing_mask", "missing_image", "duplicate", "corrupt",
                                  "truncated", "size", "value", "empty", "no_folder", "jpg_mask"])
def test_each_problem_kind_is_reported(tmp_path, kind):
    _valid(tmp_path)
    train = tmp_path / "train"
    expect = {
        "missing_mask": ("image without mask", "lone"),
        "missing_image": ("mask without image", "lone"),
        "duplicate": ("duplicate stem", "ok.jpg"),
        "corrupt": ("unreadable image", "ok.png"),
        "truncated": ("unreadable image", "ok.png"),
        "size": ("size mismatch", "ok.png"),
        "value": ("mask values [7]", "ok.png"),
        "empty": ("empty split", "test"),
        "no_folder": ("missing folder", "masks"),
        "jpg_mask": ("is not a PNG", "masks/ok.jpg"),
    }[kind]
    if kind == "missing_mask":
        _img(train / "images" / "lone.png")
    elif kind == "missing_image":
        _mask(train / "masks" / "lone.png", (1,))
    elif kind == "duplicate":
        _img(train / "images" / "ok.jpg", ext_format="JPEG")
    elif kind == "corrupt":
        (train / "images" / "ok.png").write_bytes(b"this is not a png")
    elif kind == "truncated":
        _img(train / "images" / "ok.png", size=(64, 64))
        data = (train / "images" / "ok.png").read_bytes()
        (train / "images" / "ok.png").write_bytes(data[: len(data) // 2])
    elif kind == "size":
        _mask(train / "masks" / "ok.png", (1,), size=(5, 4))
    elif kind == "value":
        _mask(train / "masks" / "ok.png", (1, 7, 255))
    elif kind == "empty":
        for p in (tmp_path / "test").rglob("*.png"):
            p.unlink()
    elif kind == "jpg_mask":
        Image.open(train / "masks" / "ok.png").convert("RGB").save(train / "masks" / "ok.jpg")
    elif kind == "no_folder":
        for p in (train / "masks").iterdir():
            p.unlink()
        (train / "masks").rmdir()
    with pytest.raises(DatasetError) as e:
        validate_dataset(tmp_path, MULTI)
    message = str(e.value)
    assert isinstance(e.value, ValueError) and len(e.value.problems) == 1, message
    assert expect[0] in message and expect[1] in message, message


def test_all_problems_listed_in_one_error(tmp_path):
    _valid(tmp_path)
    train = tmp_path / "train"
    _img(train / "images" / "no_mask.png")
    _mask(train / "masks" / "no_image.png", (1,))
    _pair(tmp_path, "train", "dup", img_ext=".png")
    _img(train / "images" / "dup.jpeg", ext_format="JPEG")
    _pair(tmp_path, "train", "broken")
    (train / "masks" / "broken.png").write_bytes(b"\x89PNG garbage")
    _pair(tmp_path, "train", "sub/resized", mask_size=(3, 2))
    _pair(tmp_path, "train", "bad_a", (0, 5))
    _pair(tmp_path, "train", "bad_b", (9, 1))
    for p in (tmp_path / "test").rglob("*.png"):
        p.unlink()
    with pytest.raises(DatasetError) as e:
        validate_dataset(tmp_path, MULTI)
    msg = str(e.value)
    assert len(e.value.problems) == 8, msg
    for needle in ["no_mask.png", "no_image.png", "dup.png", "dup.jpeg", "broken.png",
                   "sub/resized.png", "6x4", "3x2", "[5]", "bad_a.png", "[9]", "bad_b.png",
                   "empty split", "num_classes >= 10"]:
        assert needle in msg, needle


def test_binary_mode_accepts_any_value_and_scan_never_raises(tmp_path):
    _valid(tmp_path)
    _mask(tmp_path / "train" / "masks" / "ok.png", (0, 1, 7, 200, 255))
    binary = DataConfig(dataset_mode="binary", num_classes=2, image_size=8)
    report = validate_dataset(tmp_path, binary)
    assert report.splits["train"].class_pixels == [20, 4]
    bad = scan_dataset(tmp_path, MULTI)
    assert not bad.ok and "[7, 200]" in bad.problems[0] and bad.splits["test"].num_pairs == 1


def test_validation_checks_every_pair_quickly_on_crackforest(crackforest_dir):
    import time

    start = time.perf_counter()
    report = validate_dataset(crackforest_dir, DataConfig(dataset_mode="binary", num_classes=2))
    assert time.perf_counter() - start < 10
    assert report.splits["train"].num_pairs == 79 and report.splits["test"].num_pairs == 39


def test_segmentation_folder_validates_the_split_before_any_item(tmp_path):
    _valid(tmp_path)
    _pair(tmp_path, "train", "bad", (0, 4))
    _pair(tmp_path, "train", "cut", size=(64, 64))
    data = (tmp_path / "train" / "images" / "cut.png").read_bytes()
    (tmp_path / "train" / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as e:
        SegmentationFolder(tmp_path, "train", MULTI, keys=["ok"])
    assert len(e.value.problems) == 2 and "bad.png" in str(e.value) and "cut.png" in str(e.value)
    assert len(SegmentationFolder(tmp_path, "test", MULTI)) == 1  # the other split is fine
    assert len(SegmentationFolder(tmp_path, "train", MULTI, keys=["ok"], validate=False)) == 1


def test_validation_runs_once_per_unchanged_split(tmp_path, monkeypatch):
    import isdm.data.validate as validate_module

    _valid(tmp_path)
    calls = []
    real = validate_module.validate_dataset
    monkeypatch.setattr(validate_module, "validate_dataset",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    SegmentationFolder(tmp_path, "train", MULTI)
    SegmentationFolder(tmp_path, "train", MULTI, augment=True)
    assert len(calls) == 1
    changed = tmp_path / "train" / "masks" / "ok.png"
    _mask(changed, (2, 2, 2))  # a changed file (new mtime): checked again
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    SegmentationFolder(tmp_path, "train", MULTI)
    assert len(calls) == 2


def test_value_hints_one_per_kind_of_value(tmp_path):
    """Class-id-like values, 255 and 16-bit values each get the fix that is true for them."""
    _valid(tmp_path)
    _mask(tmp_path / "train" / "masks" / "ok.png", (0, 7))
    wide = np.zeros((4, 6), np.uint16)
    wide.flat[:3] = (0, 514, 1028)
    Image.fromarray(wide).save(tmp_path / "test" / "masks" / "ok.png")
    no_ignore = DataConfig(dataset_mode="multi-class", num_classes=3, ignore_index=None, image_size=8)
    _mask(tmp_path / "test" / "masks" / "extra.png", (255,))
    _img(tmp_path / "test" / "images" / "extra.png")
    report = scan_dataset(tmp_path, no_ignore)
    assert report.hints == [
        "1 mask(s) hold values [7] >= data.num_classes=3: if these are class ids, set "
        "data.num_classes >= 8 (--num-classes 8); otherwise remap the masks to 0..C-1",
        "1 mask(s) hold 255, the usual unlabeled value: if it marks unlabeled pixels, set "
        "data.ignore_index=255 (--set data.ignore_index=255)",
        "1 mask(s) hold values above 255 ([514, 1028]): 16-bit masks; class ids must fit 8 bits "
        "(data.num_classes <= 255), so re-save them as 8-bit gray or palette PNGs of class ids; "
        "these values are 257 x [2, 4], i.e. 8-bit values stretched to 16 bits: divide them by 257",
        "use --mode binary if every value > 0 means defect",
    ]
