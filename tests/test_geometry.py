"""Own datasets of any shape: resize modes (stretch / crop / pad), padding that never holds a
defect and is never scored, seeded defect-centred crops at the set rate, sliding windows, the
config keys (``image_size: [H, W]``, ``resize``, ``crop``; old ``keep_aspect`` configs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from isdm.config import (
    Config,
    ConfigError,
    DataConfig,
    config_from_json,
    load_config,
    to_dict,
)
from isdm.data import crops, transforms
from isdm.data.dataset import SegmentationFolder

IGNORE = 255


def _pair(root, key, rgb, ids, split="train"):
    for sub, arr in (("images", rgb), ("masks", ids)):
        p = root / split / sub / f"{key}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)


def _edge_defects(h=16, w=48):
    """A wide image whose defects touch the left (class 1) and right (class 2) edges."""
    ids = np.zeros((h, w), np.uint8)
    ids[4:12, :3] = 1
    ids[4:12, -3:] = 2
    rgb = np.full((h, w, 3), 60, np.uint8)
    rgb[ids > 0] = 220
    return rgb, ids


# ------------------------------------------------------------------------------ placement
def test_placements_of_a_wide_source_in_a_rectangle():
    # 40x20 (WxH) source into image_size [16, 24] (HxW)
    assert transforms.placement(40, 20, (16, 24), "stretch") == transforms.Placement(
        (0.0, 0.0, 40.0, 20.0), (24, 16), (0, 0), (24, 16))
    crop = transforms.placement(40, 20, (16, 24), "crop")
    assert crop.box == (5.0, 0.0, 35.0, 20.0) and crop.content == (24, 16)  # 30x20 centre
    pad = transforms.placement(40, 20, (16, 24), "pad")
    assert pad.content == (24, 12) and pad.offset == (0, 2) and pad.padded
    tall = transforms.placement(20, 40, (16, 24), "pad")  # long side = height -> 8 px wide
    assert tall.content == (8, 16) and tall.offset == (8, 0)
    # a square output keeps the old keep_aspect box exactly (min side, centred)
    assert transforms.placement(40, 20, 8, "crop").box == (10.0, 0.0, 30.0, 20.0)


def test_pad_keeps_every_defect_pixel_that_crop_cuts(tmp_path):
    """Done-when: `pad` never puts a defect pixel outside the mask: edge defects survive, the
    letterbox is ignore_index only, the image there is exactly 0 and marked invalid."""
    rgb, ids = _edge_defects()
    _pair(tmp_path, "a", rgb, ids)
    pad = SegmentationFolder(tmp_path, "train", DataConfig(num_classes=3, image_size=16,
                                                           resize="pad"))[0]
    crop = SegmentationFolder(tmp_path, "train", DataConfig(num_classes=3, image_size=16,
                                                            resize="crop"))[0]
    assert set(crop["label"].unique().tolist()) == {0}  # the centre cut loses both defects
    label, valid, image = pad["label"], pad["valid"][0], pad["image"]
    assert pad["valid"].shape == (1, 16, 16) and pad["valid"].dtype == torch.bool
    rows = valid.any(1)
    assert rows.tolist() == [False] * 5 + [True] * 5 + [False] * 6  # 48x16 -> 16x5 content
    assert set(label[~valid].unique().tolist()) == {IGNORE}  # padding: ignore only
    assert set(label[valid].unique().tolist()) == {0, 1, 2}  # every class kept, none on padding
    assert label[valid].ne(IGNORE).all()
    assert image[:, ~valid].eq(0).all() and image[:, valid].abs().gt(0).all()
    # the one-hot condition is all-zero on padding
    from isdm.data.masks import one_hot

    assert one_hot(label[None], 3, IGNORE)[0][:, ~valid].eq(0).all()


def test_pad_never_scores_padding():
    """Neither the segmentation metrics nor the SDM loss see what is predicted on padding."""
    from isdm.diffusion import GaussianDiffusion, get_betas
    from isdm.evaluation.metrics import image_counts

    target = np.full((1, 8, 8), IGNORE, np.int64)
    target[0, 2:6] = 1
    target[0, 2:6, :4] = 0
    pred = np.zeros_like(target)
    pred[0, 2:6, 4:] = 1
    wrong_on_padding = pred.copy()
    wrong_on_padding[target == IGNORE] = 1
    assert np.array_equal(image_counts(pred, target, 2, IGNORE),
                          image_counts(wrong_on_padding, target, 2, IGNORE))

    chain = GaussianDiffusion(get_betas("linear", 50))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.randn(2, 3, 8, 8, generator=g)
    out = torch.randn(2, 6, 8, 8, generator=g)
    valid = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    valid[:, :, 2:6] = True
    t = torch.tensor([0, 17])
    base = chain.training_losses(lambda x, tt: out, x0, t, noise, valid=valid)
    changed = out.clone()
    changed[:, :, :2] += 5.0  # only padding rows
    again = chain.training_losses(lambda x, tt: changed, x0, t, noise, valid=valid)
    for k in ("mse", "vb", "loss"):
        assert torch.equal(base[k], again[k]), k
    # and it is the plain loss of the valid region alone
    window = (slice(None), slice(None), slice(2, 6))
    part = chain.training_losses(lambda x, tt: out[window], x0[window], t, noise[window])
    for k in ("mse", "vb"):
        torch.testing.assert_close(base[k], part[k], rtol=1e-6, atol=0)
    moved = out.clone()
    moved[:, :3, 3] += 1.0  # a valid row: the loss must change
    assert not torch.equal(chain.training_losses(lambda x, tt: moved, x0, t, noise,
                                                 valid=valid)["mse"], base["mse"])


# ------------------------------------------------------------------------------ crops
def _rare_and_common(size=64):
    ids = np.zeros((size, size), np.uint8)
    ids[40:, 40:] = 1  # common class, bottom right
    ids[3, 3] = 2  # one pixel, top left
    return ids


def _rate_with_class_2(defect_prob, n=4000):
    ids = _rare_and_common()
    pixels = crops.defect_pixels(ids, IGNORE)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(n):
        top, left = crops.crop_origin(ids.shape, 8, rng, defect_prob, pixels)
        hits += bool((ids[top:top + 8, left:left + 8] == 2).any())
    return hits / n


def test_crops_centred_on_rare_classes_appear_at_the_set_rate():
    """Done-when: the class is chosen uniformly among those present, so the one-pixel class is
    in p/2 of the crops (+ the uniform crops' 16/3249 chance): 0.302 at p=0.6, 0.005 at 0."""
    assert _rate_with_class_2(0.6) == pytest.approx(0.6 / 2 + 0.4 * 16 / 3249, abs=0.03)
    assert _rate_with_class_2(1.0) == pytest.approx(0.5, abs=0.03)
    assert _rate_with_class_2(0.0) < 0.015


def test_dataset_crops_follow_the_config_rate_and_seed(tmp_path):
    ids = _rare_and_common()
    rgb = np.stack([ids * 100] * 3, -1).astype(np.uint8)
    _pair(tmp_path, "a", rgb, ids)
    cfg = DataConfig(num_classes=3, image_size=[8, 16], crop=True, crop_defect_prob=0.6)
    ds = SegmentationFolder(tmp_path, "train", cfg, seed=4)
    seen = []
    for epoch in range(1500):
        ds.set_epoch(epoch)
        item = ds[0]
        assert item["image"].shape == (3, 8, 16) and item["valid"].all()
        seen.append(bool((item["label"] == 2).any()))
    # uniform 8x16 crops hold (3,3) at 4*4 of 57*49 positions
    assert np.mean(seen) == pytest.approx(0.3 + 0.4 * 16 / (57 * 49), abs=0.04)
    # a crop is a pure function of (seed, epoch, item): order, reloading, other epochs
    ds.set_epoch(7)
    first = ds[0]["label"]
    other = SegmentationFolder(tmp_path, "train", cfg, seed=4, validate=False)
    other.set_epoch(7)
    assert torch.equal(first, other[0]["label"])
    labels = []
    for epoch in (7, 8):
        ds.set_epoch(epoch)
        labels.append(ds[0]["label"])
    assert torch.equal(labels[0], first)
    assert not torch.equal(labels[0], labels[1])
    seed5 = SegmentationFolder(tmp_path, "train", cfg, seed=5, validate=False)
    assert ds.seed != seed5.seed and any(
        _origin(ds, e) != _origin(seed5, e) for e in range(5))


def _origin(ds, epoch):
    ds.set_epoch(epoch)
    return ds[0]["image"].sum().item()


def test_crops_of_a_scaled_image_and_padding_of_a_small_one(tmp_path):
    rgb, ids = _edge_defects(h=16, w=48)
    _pair(tmp_path, "a", rgb, ids)
    cfg = DataConfig(num_classes=3, image_size=[16, 16], crop=True, scale=0.5)
    arrays = SegmentationFolder(tmp_path, "train", cfg).load_arrays(0)
    # 48x16 scaled by 0.5 is 24x8 (WxH): padded to 16 rows, columns kept
    assert arrays.ids.shape == (16, 24) and arrays.valid.sum() == 8 * 24
    assert set(arrays.pixels) == {1, 2}
    item = SegmentationFolder(tmp_path, "train", cfg, validate=False)[0]
    assert item["label"][~item["valid"][0]].eq(IGNORE).all()
    assert item["image"][:, ~item["valid"][0]].eq(0).all()


def test_random_crop_and_sliding_windows():
    ids = _rare_and_common(16)
    image = np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3)
    img, lab, (top, left) = crops.random_crop(image, ids, (4, 6), np.random.default_rng(1), 1.0)
    assert img.shape == (4, 6, 3) and np.array_equal(img, image[top:top + 4, left:left + 6])
    assert (lab > 0).any()  # defect-centred
    with pytest.raises(ValueError, match="pad it first"):
        crops.crop_origin((4, 4), 8, np.random.default_rng(0), 0.5, {})
    windows = crops.sliding_windows(20, 30, 8, 6)
    assert windows[:5] == [(0, 0), (0, 6), (0, 12), (0, 18), (0, 22)]
    assert sorted({t for t, _ in windows}) == [0, 6, 12]
    covered = np.zeros((20, 30), int)
    for t, l in windows:
        assert 0 <= t <= 12 and 0 <= l <= 22
        covered[t:t + 8, l:l + 8] += 1
    assert covered.min() >= 1
    assert crops.sliding_windows(8, 16, (8, 16)) == [(0, 0)]
    with pytest.raises(ValueError, match="pad it first"):
        crops.sliding_windows(4, 30, 8)


# ------------------------------------------------------------------------------ config
def test_image_size_resize_and_crop_rules():
    assert DataConfig(image_size=[16, 24]).size == (16, 24)
    assert DataConfig().size == (64, 64) and DataConfig().image_size == 64
    assert load_config(None, ["data.image_size=[32, 32]"]).data.image_size == 32  # one spelling
    for bad in ([16, 20], [16], [16, 24, 32], 12):
        with pytest.raises(ConfigError, match="multiple of 8"):
            load_config(None, [f"data.image_size={bad}"])
    with pytest.raises(ConfigError, match="resize='pad' marks padding"):
        load_config(None, ["data.resize=pad", "data.ignore_index=null"])
    with pytest.raises(ConfigError, match="data.crop=true"):
        load_config(None, ["data.crop=true", "data.ignore_index=null"])
    with pytest.raises(ConfigError, match="data.resize"):
        load_config(None, ["data.resize=letterbox"])
    with pytest.raises(ConfigError, match="data.scale"):
        load_config(None, ["data.scale=0"])
    with pytest.raises(ConfigError, match="data.crop_defect_prob"):
        load_config(None, ["data.crop_defect_prob=1.5"])
    # the UNet's rule on both sides; attention at the short side
    five_levels = ["model.preset=''", "model.channel_mult=[1, 1, 2, 2, 4]",
                   "model.attention_resolutions=[]"]
    with pytest.raises(ConfigError, match=r"data\.image_size=\[64, 88\]: .*multiple of 16 "
                                          r"\(e\.g\. \[64, 96\]\)"):
        load_config(None, ["data.image_size=[64, 88]", *five_levels])
    assert load_config(None, ["data.image_size=[64, 96]"]).data.size == (64, 96)
    with pytest.raises(ConfigError, match=r"short side 48"):
        load_config(None, ["data.image_size=[96, 48]"])  # 16 is not 48 / 2**k


def test_old_keep_aspect_configs_still_load(tmp_path):
    tree = to_dict(Config())
    del tree["data"]["resize"]
    for keep, resize in ((True, "crop"), (False, "stretch")):
        tree["data"]["keep_aspect"] = keep
        assert config_from_json(json.dumps(tree)).data.resize == resize
    (tmp_path / "old.yaml").write_text("data:\n  keep_aspect: true\n")
    assert load_config(tmp_path / "old.yaml").data.resize == "crop"
    (tmp_path / "both.yaml").write_text("data:\n  keep_aspect: true\n  resize: pad\n")
    with pytest.raises(ConfigError, match="keep only data.resize"):
        load_config(tmp_path / "both.yaml")
    # a later layer (an overlay, --set) overrides the resize an old file's keep_aspect meant
    assert load_config(tmp_path / "old.yaml", ["data.resize=pad"]).data.resize == "pad"
