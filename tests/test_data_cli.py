"""`isdm data check` / `isdm data synth` end to end, CrackForest, and the synthetic renderer."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from isdm.cli import cli
from isdm.errors import OutputExistsError
from isdm.config import SynthConfig
from isdm.data.synth import CLASS_NAMES, write_synthetic_dataset


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI from an empty folder (no ./params.yaml is picked up)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)

    def invoke(*args: str):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def _digest(root: Path) -> dict[str, str]:
    """Every file's digest but the ownership record and lock (:mod:`isdm.utils.ownership`)."""
    from isdm.utils.ownership import is_neutral

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not is_neutral(p.name)}


# ---------------------------------------------------------------- CrackForest


@pytest.mark.crackforest
def test_check_crackforest_counts(run, crackforest_dir):
    result = run("data", "check", crackforest_dir, "--mode", "binary", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["num_classes"] == 2
    assert report["splits"]["train"]["pairs"] == 79 and report["splits"]["test"]["pairs"] == 39
    for split in ("train", "test"):
        s = report["splits"][split]
        assert s["min_size"] == s["max_size"] == [480, 320]
        assert s["raw_mask_values"] == [0, 255]
        assert 0.0 < s["class_share"][1] < 0.05  # thin cracks: a few percent of the pixels
        assert s["class_pixels"][0] + s["class_pixels"][1] == s["pairs"] * 480 * 320
    text = run("data", "check", crackforest_dir, "--mode", "binary")
    assert text.exit_code == 0 and "79" in text.output and "39" in text.output and "defect" in text.output
    assert "warning" not in text.output
    wrong_mode = run("data", "check", crackforest_dir, "--mode", "multi-class", "--num-classes", "2")
    assert wrong_mode.exit_code == 0 and "use --mode binary" in wrong_mode.output


@pytest.mark.crackforest
def test_check_broken_crackforest_copy_lists_all_three_files(run, crackforest_dir, tmp_path):
    """The issue's scenario: one mask deleted, one resized, one image truncated -> one exit 1."""
    copy = tmp_path / "cf"
    keys = {"train": ["001", "002", "004", "005"], "test": ["003", "006"]}
    for split, names in keys.items():
        for sub, ext in (("images", ".jpg"), ("masks", ".png")):
            (copy / split / sub).mkdir(parents=True)
            for key in names:
                os.symlink(crackforest_dir / split / sub / f"{key}{ext}", copy / split / sub / f"{key}{ext}")
    (copy / "train" / "masks" / "002.png").unlink()
    resized = copy / "train" / "masks" / "004.png"
    small = Image.open(resized).resize((240, 160), Image.Resampling.NEAREST)
    resized.unlink()
    small.save(resized)
    truncated = copy / "test" / "images" / "006.jpg"
    data = truncated.read_bytes()
    truncated.unlink()
    truncated.write_bytes(data[: len(data) // 2])

    result = run("data", "check", copy, "--mode", "binary")
    assert result.exit_code == 1
    out = result.output
    assert "3 problem(s)" in out, out
    assert "image without mask" in out and "train/images/002.jpg" in out
    assert "size mismatch" in out and "train/masks/004.png is 240x160" in out
    assert "unreadable image" in out and "test/images/006.jpg" in out


# ---------------------------------------------------------------- multi-class values


def test_check_multiclass_value_out_of_range_names_file_and_value(run, tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for key, top in (("good", 2), ("bad", 6)):
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            image, mask = np.zeros((4, 4, 3), np.uint8), np.array([[0, 1, top, 0]] * 4, np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{key}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{key}.png")
    result = run("data", "check", root, "--mode", "multi-class", "--num-classes", "3")
    assert result.exit_code == 1
    assert "mask values [6]" in result.output and "train/masks/bad.png" in result.output
    assert "test/masks/bad.png" in result.output and "good.png" not in result.output
    assert "--num-classes 7" in result.output
    assert run("data", "check", root, "--mode", "multi-class", "--num-classes", "7").exit_code == 0


# ---------------------------------------------------------------- synth


def test_synth_is_byte_identical_per_seed(run, tmp_path):
    args = ["--set", "synth.image_size=32", "--set", "synth.num_train=4", "--set", "synth.num_test=2"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        result = run("data", "synth", tmp_path / name, *args, "--set", f"synth.seed={seed}")
        assert result.exit_code == 0, result.output
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert len(a) == 4 * 2 + 2 * 2 + 4  # pairs + classes.json, synth.json, README.md, preview.png
    assert a == b
    images_a = {v for k, v in a.items() if "/images/" in k}
    images_c = {v for k, v in c.items() if "/images/" in k}
    assert len(images_a) == 6 and not images_a & images_c  # another seed: all images differ


def test_synth_then_check_passes_and_counts(run, synth_dir):
    assert json.loads((synth_dir / "classes.json").read_text()) == list(CLASS_NAMES)
    result = run("data", "check", synth_dir, "--mode", "multi-class", "--num-classes", "5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["class_names"] == list(CLASS_NAMES)
    train = report["splits"]["train"]
    assert train["pairs"] == 8 and report["splits"]["test"]["pairs"] == 4
    assert train["min_size"] == [32, 32] and set(train["raw_mask_values"]) <= {0, 1, 2, 3, 4}
    assert train["class_images"][0] == 8 and sum(train["class_images"][1:]) >= 8  # >= 1 defect each


def test_synth_binary_masks_are_0_255(run, tmp_path):
    out = tmp_path / "bin"
    result = run("data", "synth", out, "--binary", "--set", "synth.image_size=32",
                 "--set", "synth.num_train=3", "--set", "synth.num_test=1")
    assert result.exit_code == 0, result.output
    values = set()
    for p in out.rglob("masks/*.png"):
        values |= set(np.unique(np.asarray(Image.open(p))).tolist())
    assert values == {0, 255}
    assert json.loads((out / "classes.json").read_text()) == ["background", "defect"]
    assert run("data", "check", out, "--mode", "binary").exit_code == 0


def test_synth_refuses_foreign_dataset_and_rewrites_its_own(tmp_path):
    cfg = SynthConfig(seed=0, num_train=3, num_test=1, image_size=32)
    (tmp_path / "foreign" / "train" / "images").mkdir(parents=True)
    (tmp_path / "foreign" / "train" / "images" / "a.png").write_bytes(b"a user's image")
    with pytest.raises(OutputExistsError, match="train/images/a.png"):
        write_synthetic_dataset(tmp_path / "foreign", cfg)
    out = tmp_path / "own"
    write_synthetic_dataset(out, cfg)
    write_synthetic_dataset(out, SynthConfig(seed=0, num_train=2, num_test=1, image_size=32))
    assert len(list((out / "train" / "images").iterdir())) == 2  # no stale files left


@pytest.mark.parametrize("class_id", [1, 2, 3, 4])
def test_defect_mask_is_exactly_the_changed_pixels(class_id):
    from isdm.data.synth_render import SURFACES, draw_defect, render_surface

    for seed in range(3):
        rng = np.random.default_rng(seed)
        surface = render_surface(rng, 64, SURFACES[seed % len(SURFACES)])
        img = surface.copy()
        mask = draw_defect(rng, img, class_id, np.array([0.6, 0.8]))
        changed = np.abs(img - surface).max(axis=2) > 1e-3
        assert mask.any()
        np.testing.assert_array_equal(changed, mask)


def test_synth_sample_independent_of_count_and_sized():
    from isdm.data.synth import render_sample

    rgb, ids, surface = render_sample(3, "train", 5, 32)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 and ids.shape == (32, 32)
    assert ids.max() >= 1 and set(np.unique(ids).tolist()) <= {0, 1, 2, 3, 4}
    again = render_sample(3, "train", 5, 32)
    assert np.array_equal(rgb, again[0]) and np.array_equal(ids, again[1]) and surface == again[2]
    assert not np.array_equal(rgb, render_sample(3, "test", 5, 32)[0])


def test_synth_config_rejects_unusable_sizes(run, tmp_path):
    from isdm.config import ConfigError

    with pytest.raises(ConfigError, match="synth.image_size=8"):
        SynthConfig(image_size=8)
    with pytest.raises(ConfigError, match="num_test=0"):
        SynthConfig(num_test=0)
    result = run("data", "synth", tmp_path / "x", "--set", "synth.num_train=0")
    assert result.exit_code != 0 and "synth.num_train=0" in result.output
