"""Segmenters trained on crops (``data.crop: true``): sliding-window prediction of whole images
(one window = the whole-image prediction, bit for bit; every pixel covered; overlaps averaged),
seeded crops per step, metrics on whole test images at native size, the curation scorer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from isdm.cli import cli
from isdm.config import Config, DataConfig, load_config
from isdm.errors import EvaluationError
from isdm.evaluation.loading import eval_data_config, load_real, load_split
from isdm.evaluation.segmenter import TensorSet, build_segmenter, predict_counts
from isdm.evaluation.wholes import CropMix, load_whole
from isdm.evaluation.windows import sliding_logits, window_stride

from rects import RECT_HW, write_rect_pairs

H, W = RECT_HW  # the tiny dataset's native size (rectangular)


def _cfg(*overrides: str) -> Config:
    return load_config(None, ["data.num_classes=3", "data.crop=true", "data.image_size=32",
                              "evaluate.image_size=32", *overrides])


# ---------------------------------------------------------------------- sliding windows


def test_sliding_window_prediction_equals_the_whole_image_prediction_in_one_window(tmp_path):
    """An image that fits one window: the same logits and counts as the whole-image path."""
    write_rect_pairs(tmp_path, "test", 2, 3, size=(32, 64))
    model = build_segmenter("FPN", "resnet18", None, 3, 0).eval()
    cfg = _cfg("data.image_size=[32, 64]", "evaluate.image_size=[32, 64]")
    whole = load_split(cfg, tmp_path, "test")
    resized = load_real(tmp_path, "test", eval_data_config(cfg.data, (32, 64)))
    assert torch.equal(whole.canvas(0), resized.images[0])
    with torch.no_grad():
        direct = model(resized.images[:1])[0]
        windowed = sliding_logits(model, whole.canvas(0), (32, 64), (16, 32), 4)
    assert torch.equal(windowed, direct)
    dev = torch.device("cpu")
    assert np.array_equal(predict_counts(model, whole, 3, 255, dev, 4),
                          predict_counts(model, resized, 3, 255, dev, 4))


@pytest.mark.parametrize("size,window,overlap", [((48, 72), (32, 32), 0.25),
                                                 ((32, 32), (32, 32), 0.5),
                                                 ((37, 101), (8, 16), 0.0),
                                                 ((40, 40), (16, 24), 0.9)])
def test_windows_cover_every_pixel(size, window, overlap):
    ones = sliding_logits(lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:]),
                          torch.zeros(3, *size), window, window_stride(window, overlap), 3)
    assert ones.shape == (2, *size) and torch.equal(ones, torch.ones(2, *size))  # no 0/0


def test_overlapping_windows_average_their_logits():
    """Each window predicts its mean pixel value everywhere; columns 0..7, windows 4 wide at
    left 0, 2, 4 (stride 2): means 1.5, 3.5, 5.5, averaged where windows overlap."""
    image = torch.arange(8.0).expand(3, 4, 8)
    logits = sliding_logits(lambda x: x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 1, 4, 4),
                            image, (4, 4), (4, 2), 2)
    expected = torch.tensor([1.5, 1.5, 2.5, 2.5, 4.5, 4.5, 5.5, 5.5]).expand(1, 4, 8)
    assert torch.equal(logits, expected)
    assert window_stride((4, 4), 0.5) == (2, 2) and window_stride((64, 96), 0.25) == (48, 72)


def _intensity_classes(x: torch.Tensor) -> torch.Tensor:
    """One-hot logits of the tiny dataset's classes from its pixel values (0-59, 90-149,
    180-239 for classes 0, 1, 2)."""
    v = (x[:, 0] + 1) * 127.5
    ids = (v >= 75).long() + (v >= 165).long()
    return torch.nn.functional.one_hot(ids, 3).permute(0, 3, 1, 2).float()


def test_whole_image_metrics_are_on_native_pixels_at_any_scale(rect_dir):
    """Scaled by 0.5 (24x36, padded to 32x36 for the windows) or at native scale: the counts
    cover every native pixel; a perfect predictor at scale 1 scores tp only."""
    for scale in (0.5, 1.0):
        cfg = DataConfig(num_classes=3, image_size=32, crop=True, scale=scale)
        data = load_whole(rect_dir, "test", cfg, (32, 32), 0.25)
        assert data.arrays[0].image.shape == ((32, 36, 3) if scale == 0.5 else (H, W, 3))
        counts = data.counts(_intensity_classes, 3, 255, 4)
        assert counts.shape == (3, 3, 3)
        assert (counts[..., 0] + counts[..., 2]).sum(axis=1).tolist() == [H * W] * 3  # tp + fn
        if scale == 1.0:
            assert counts[..., 1].sum() == 0 and counts[..., 2].sum() == 0


# ---------------------------------------------------------------------- crops for training


def test_crop_batches_are_seeded_per_step_and_slot(rect_dir):
    real = load_whole(rect_dir, "train", DataConfig(num_classes=3, image_size=32, crop=True,
                                                   crop_defect_prob=1.0), (32, 32), 0.25)
    syn = TensorSet(torch.full((2, 3, 32, 32), 0.5), torch.ones(2, 32, 32, dtype=torch.long),
                    ["s0", "s1"])
    mix = CropMix(real, syn, seed=3)
    assert len(mix) == 10
    idx = torch.tensor([0, 0, 8, 5])
    x, y = mix.batch(idx, step=1)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32) and y.dtype == torch.long
    assert torch.equal(x[2], syn.images[0]) and torch.equal(y[2], syn.labels[0])  # whole
    assert not torch.equal(x[0], x[1])  # the same image, two slots, two crops
    again = CropMix(real, syn, seed=3).batch(idx, step=1)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(mix.batch(idx, step=2)[0], x)
    assert not torch.equal(CropMix(real, syn, seed=4).batch(idx, step=1)[0], x)
    assert all(int((y[k] > 0).sum()) > 0 for k in (0, 1, 3))  # defect-centred at p = 1
    with pytest.raises(EvaluationError, match="load them at evaluate.image_size"):
        CropMix(real, TensorSet(torch.zeros(1, 3, 16, 16), torch.zeros(1, 16, 16).long(), ["a"]), 0)


def test_crop_size_must_be_the_synthetic_size(rect_dir):
    with pytest.raises(EvaluationError, match="set evaluate.image_size to data.image_size"):
        load_split(_cfg("evaluate.image_size=64"), rect_dir, "train")


# ---------------------------------------------------------------------- end to end


def _synthetic_crops(dataset: Path, out: Path, n: int) -> Path:
    """A sampling-shaped folder of 32x32 crops of the train pairs (what the SDM would make)."""
    (out / "samples").mkdir(parents=True)
    (out / "labels").mkdir()
    for i, img in enumerate(sorted((dataset / "train" / "images").iterdir())[:n]):
        box = (4 * i, 8, 4 * i + 32, 40)
        Image.open(img).crop(box).save(out / "samples" / f"syn{i}.png")
        mask = Image.open(dataset / "train" / "masks" / img.name)
        mask.crop(box).save(out / "labels" / f"syn{i}.png")
    return out


@pytest.mark.slow
def test_tiny_crop_evaluation_scores_whole_test_images(rect_dir, mlflow_uri, tmp_path):
    syn = _synthetic_crops(rect_dir, tmp_path / "syn", 4)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"num_classes": 3, "image_size": 32, "crop": True, "crop_defect_prob": 0.5},
        "evaluate": {"architectures": ["FPN"], "mixes": ["RALLF000", "RALLFALL"], "seeds": [0],
                     "workers": 1,
                     "steps": 3, "val_every": 2, "image_size": 32, "batch_size": 4,
                     "bootstrap": 20, "window_overlap": 0.5}}))
    out = tmp_path / "out"
    args = ["evaluate", "-c", str(params), "--data", str(rect_dir), "--synthetic", str(syn),
            "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"miou_real_only", "miou_with_synthetic", "label_fidelity"}
    assert all(np.isfinite(v) for v in metrics.values())
    counts = np.load(out / "counts.npz")
    for row in ("FPN__RALLF000", "FPN__RALLFALL[synthetic]"):
        assert counts[row].shape == (1, 3, 3, 3)  # seeds, test images, classes, (tp, fp, fn)
        assert (counts[row][..., 0] + counts[row][..., 2]).sum(axis=-1).tolist() == [[H * W] * 3]
    report = json.loads((out / "report.json").read_text())
    assert "crops of the images at scale 1.0" in report["setup"]["recipe"]
    assert report["fidelity"]["synthetic"]["FPN"]["n_images"] == 4.0

    out2 = tmp_path / "again"
    result = CliRunner().invoke(cli, args[:-4] + ["--out", str(out2), "--device", "cpu"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out2 / "metrics.json").read_text() == (out / "metrics.json").read_text()


def test_the_curation_scorer_trains_on_crops_and_scores_crop_size_samples(rect_dir, tmp_path):
    from isdm.curation.scorer import load_scorer, pixel_scores
    from isdm.evaluation.spec import cell_spec

    cfg = _cfg("evaluate.architectures=[FPN]", "evaluate.steps=2", "evaluate.val_every=2",
               "evaluate.batch_size=4", "curate.architecture=FPN")
    scorer = load_scorer(cfg, rect_dir, cell_cache=tmp_path / "cells", device="cpu")
    assert scorer.identity["data"]["crop"] is True
    assert "window_overlap" in scorer.identity["recipe"]
    assert scorer.real.images.shape[-2:] == (32, 32)  # memorisation: whole images, resized
    syn = load_real(rect_dir, "test", eval_data_config(cfg.data, 32))
    labels = [ids.numpy().astype(np.uint8) for ids in syn.labels]
    scores = list(pixel_scores(scorer, syn.images, labels, 255, 4))
    assert len(scores) == 3 and all(loss.shape == pred.shape == (32, 32) for loss, pred in scores)
    assert all(np.isfinite(loss).all() for loss, _ in scores)
    plain = load_config(None, ["data.num_classes=3"])  # whole images: no crop keys
    ident = cell_spec(plain, "FPN", "RALLF000", 0, real="r", steps=1).identity()
    assert "window_overlap" not in ident["recipe"] and "crop" not in ident["data"]


# ---------------------------------------------------------------------- CrackForest recipe


def test_the_crackforest_overlay_is_a_crop_config_from_the_cli_and_from_dvc(tmp_path,
                                                                           monkeypatch):
    """configs/crackforest.yaml layered on params.yaml (`-c params.yaml -c overlay`) is a valid
    crop config, and `isdm config apply` writes params.yaml into the same config (what
    `dvc exp run` then runs)."""
    import shutil

    from click.testing import CliRunner

    from isdm.cli import cli
    from isdm.config import to_dict

    repo = Path(__file__).resolve().parents[1]
    overlay = repo / "configs" / "crackforest.yaml"
    cfg = load_config([repo / "params.yaml", overlay])
    assert cfg.data.crop and cfg.data.scale == 0.5 and cfg.data.size == (64, 64)
    assert cfg.evaluate.image_size == 64 and cfg.data.dataset_mode == "binary"
    assert cfg.data.root == "../shared/data/crackforest" and cfg.curate.pixel_threshold == 0
    assert (cfg.train.max_steps, cfg.finetune.max_steps) == (2500, 300)
    monkeypatch.chdir(tmp_path)
    shutil.copy(repo / "params.yaml", "params.yaml")
    result = CliRunner().invoke(cli, ["config", "apply", str(overlay)])
    assert result.exit_code == 0, result.output
    assert "params.yaml: data.crop: false -> true" in result.output
    assert to_dict(load_config("params.yaml")) == to_dict(cfg)
