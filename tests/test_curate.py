"""`isdm curate`: the gate's arithmetic on hand-made maps, and the command end to end on a tiny
sampling-shaped folder (determinism, the folder and card, the round trip through evaluate)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from isdm.cli import cli
from isdm.curation import filters
from isdm.curation.memorisation import check_memorisation, features

N = np.nan


# ---- the arithmetic -----------------------------------------------------------------------------


def test_pixel_filter_ignores_exactly_the_pixels_above_the_threshold():
    labels = [np.array([[0, 0, 1], [1, 255, 1]], np.uint8), np.array([[0, 0, 0], [1, 1, 255]], np.uint8)]
    losses = [np.array([[1.0, 2.0, 1.0], [4.0, 9.0, 1.0]], np.float32),
              np.array([[3.0, 4.0, 5.0], [2.0, 2.0, N]], np.float32)]
    means = filters.class_mean_loss(losses, labels, num_classes=3)
    # class 0: (1 + 2 + 3 + 4 + 5) / 5 = 3; class 1: (1 + 4 + 1 + 2 + 2) / 5 = 2; class 2: none
    np.testing.assert_array_equal(means[:2], [3.0, 2.0])
    assert np.isnan(means[2])
    # tau = 1.5: class 0 above 4.5, class 1 above 3.0 (4.5 itself would stay: strictly above)
    high = [filters.high_loss_pixels(loss, lab, means, 1.5) for loss, lab in zip(losses, labels)]
    np.testing.assert_array_equal(high[0], [[False, False, False], [True, False, False]])
    np.testing.assert_array_equal(high[1], [[False, False, True], [False, False, False]])
    curated, ignored = filters.ignore_pixels(labels[0], high[0], 255, 3)
    np.testing.assert_array_equal(curated, [[0, 0, 1], [255, 255, 1]])
    np.testing.assert_array_equal(ignored, [0, 1, 0])
    assert labels[0][1, 0] == 1  # the input is not modified
    assert not filters.high_loss_pixels(losses[0], labels[0], means, 0.0).any()  # 0 = off
    at = filters.high_loss_pixels(np.array([[4.5]], np.float32), np.array([[0]], np.uint8), means, 1.5)
    assert not at.any()


def test_fidelity_is_the_mean_iou_over_the_classes_the_mask_holds():
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 2, 1, 0], [0, 0, 1, 2]], np.uint8)
    iou = filters.pair_iou(pred, label, 3)
    # class 0: tp 3, fp 1 (pred 0 on a 1), fn 1 (pred 2) -> 3/5; class 1: tp 2, fn 1 -> 2/3;
    # class 2 only predicted (the ignored pixel does not count) -> 0
    assert iou == {0: 3 / 5, 1: 2 / 3, 2: 0.0}
    assert filters.fidelity(iou, label, 3) == pytest.approx((3 / 5 + 2 / 3) / 2, abs=0)
    assert filters.fidelity({}, np.full((2, 2), 255, np.uint8), 3) is None


def test_hardness_weights_are_normalised_to_mean_one():
    w = filters.hardness_weights({"b": [1.0, 3.0], "a": [4.0], "c": [N]}, power=1.0)
    assert list(w) == ["a", "b", "c"]
    assert w == {"a": 4.0 / 3.0, "b": 2.0 / 3.0, "c": 1.0}  # mean of (4, 2) = 3; no loss -> 1
    assert filters.hardness_weights({"a": [4.0], "b": [2.0]}, power=0.0) == {"a": 1.0, "b": 1.0}


def test_memorisation_finds_copies_up_to_brightness_and_contrast():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1  # real images come in similar pairs
    real = base.repeat_interleave(2, dim=0) + 0.2 * torch.rand(6, 3, 32, 32, generator=g)
    synthetic = torch.stack([0.5 * real[2] + 0.1, torch.rand(3, 32, 32, generator=g) * 2 - 1])
    memo = check_memorisation(synthetic, real, quantile=0.5)
    fr = features(real)
    loo = [min(np.linalg.norm(fr[i] - fr[j]) for j in range(6) if j != i) for i in range(6)]
    np.testing.assert_allclose(memo.real_distance, loo, rtol=1e-12)
    assert memo.threshold == pytest.approx(float(np.quantile(loo, 0.5)), rel=1e-12)
    assert memo.nearest[0] == 2 and memo.distance[0] < 1e-6
    assert list(memo.near_copy) == [True, False]


# ---- end to end ---------------------------------------------------------------------------------


def _sampling_folder(dataset: Path, out: Path) -> Path:
    """A sampling-shaped folder of the 8 train pairs; odd pairs get another image's mask."""
    for sub in ("samples", "labels", "images", "colored_labels"):
        (out / sub).mkdir(parents=True)
    images = sorted((dataset / "train" / "images").iterdir())
    masks = sorted((dataset / "train" / "masks").iterdir())
    lines = []
    for i, img in enumerate(images):
        name = f"{i:06d}_{img.stem}.png"
        mask = masks[(i + 3) % len(masks)] if i % 2 else masks[i]
        for sub, src in (("samples", img), ("images", img), ("labels", mask),
                         ("colored_labels", mask)):
            shutil.copy(src, out / sub / name)
        lines.append({"index": i, "file": name, "source_mask": img.stem, "sampler": "ddim",
                      "steps": 2, "s": 1.0, "seed": 0, "checkpoint_sha256": "c0ffee",
                      "files": {}})
    (out / "manifest.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    (out / "run.json").write_text(json.dumps({"checkpoint": "models/sdm_ft/best.pt"}))
    return out


@pytest.fixture(scope="module")
def env(synth_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"image_size": 32},
        "evaluate": {"architectures": ["FPN"], "mixes": ["RALLF000", "RALLFALL"], "seeds": [0],
                     "workers": 1,
                     "steps": 2, "val_every": 2, "image_size": 32, "batch_size": 4,
                     "bootstrap": 20},
        "curate": {"min_fidelity": 0.0, "pixel_threshold": 1.5},
        "tracking": {"enabled": False}}))
    return {"data": synth_dir, "params": params, "syn": _sampling_folder(synth_dir, root / "syn"),
            "root": root}


def _curate(env, out: Path, *extra: str, cache: str = "cache") -> str:
    r = CliRunner().invoke(cli, ["curate", "-c", str(env["params"]), "--data", str(env["data"]),
                                 "--synthetic", str(env["syn"]), "--out", str(out),
                                 "--cell-cache", str(env["root"] / cache), "--device", "cpu",
                                 *extra])
    assert r.exit_code == 0, r.output
    return r.output


def _tree(folder: Path) -> dict[str, str]:
    """Every file's digest, the output lock aside (it names the process that last held it)."""
    from isdm.utils.ownership import is_neutral

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not (is_neutral(p.name) and p.name.endswith(".lock"))}


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_curation_is_deterministic_for_a_seed(env):
    before = _tree(env["syn"])
    a, b = env["root"] / "a", env["root"] / "b"
    assert "scorer trained" in _curate(env, a, cache="cache_a")
    assert "scorer trained" in _curate(env, b, cache="cache_b")  # trained again from scratch
    assert _tree(a) == _tree(b) and len(_tree(a)) > 20
    assert "scorer from the cell store" in _curate(env, b, cache="cache_a")  # replaces b
    assert _tree(a) == _tree(b)
    assert _tree(env["syn"]) == before  # the synthetic folder is only read


@pytest.mark.slow
def test_curated_folder_holds_the_kept_pairs_and_the_card(env):
    first = env["root"] / "all"
    _curate(env, first, "--set", "curate.min_fidelity=0")
    fids = sorted(r["curate"]["fidelity"] for r in _manifest(first))
    threshold = fids[len(fids) // 2]  # the median drops the lower half
    out = env["root"] / "gate"
    _curate(env, out, "--set", f"curate.min_fidelity={threshold}")

    records = _manifest(out)
    assert [r["index"] for r in records] == list(range(8))  # one record per synthetic pair
    kept = [r for r in records if r["curate"]["kept"]]
    assert all(r["curate"]["fidelity"] >= threshold for r in kept)
    assert all(r["curate"]["fidelity"] < threshold and "files" not in r
               for r in records if not r["curate"]["kept"])
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(r["file"] for r in kept)
    card = json.loads((out / "card.json").read_text())
    assert card["counts"] == {"pairs": 8, "kept": len(kept), "dropped": 8 - len(kept),
                              "pixels_ignored": sum(sum(r["curate"]["ignored_pixels"].values())
                                                    for r in kept)}
    assert 0 < len(kept) < 8 and card["generator"]["checkpoint"] == "models/sdm_ft/best.pt"
    for name in ("card.md", "best_worst.png", "closest_pairs.png", "fidelity_hist.png"):
        assert (out / name).stat().st_size > 0
    weights = json.loads((out / "weights.json").read_text())["weights"]
    assert len(weights) == 8 and np.mean(list(weights.values())) == pytest.approx(1.0)

    # the ignored pixels are exactly those above 1.5 x the class mean loss (over all 8 pairs)
    from isdm.data.masks import read_mask_array

    labels = {r["file"]: read_mask_array(env["syn"] / "labels" / r["file"]) for r in records}
    losses = {r["file"]: np.load(out / r["curate"]["loss_map"]) for r in records}
    means = filters.class_mean_loss(list(losses.values()), list(labels.values()), 5)
    for r in kept:
        curated = read_mask_array(out / "labels" / r["file"])
        high = losses[r["file"]] > 1.5 * means[labels[r["file"]]]
        np.testing.assert_array_equal(curated == 255, high)
        np.testing.assert_array_equal(curated[~high], labels[r["file"]][~high])
        same = (out / "samples" / r["file"]).stat().st_ino == (env["syn"] / "samples" / r["file"]).stat().st_ino
        assert same  # a hard link, not a copy
    assert card["counts"]["pixels_ignored"] > 0


@pytest.mark.slow
def test_curated_folder_round_trips_through_evaluate(env, mlflow_uri):
    out = env["root"] / "for_eval"
    _curate(env, out, "--set", "tracking.enabled=true")
    kept = sum(r["curate"]["kept"] for r in _manifest(out))
    import mlflow

    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.tags["isdm.action"] == "curate" and run.data.metrics["kept"] == kept
    assert run.data.params["curate.pixel_threshold"] == "1.5"
    assert not any(k.startswith(("tracking.", "evaluate.seeds", "evaluate.mixes", "train."))
                   for k in run.data.params)  # only what curate reads (run_params)
    inputs = {i.tags[0].value: i.dataset.name for i in run.inputs.dataset_inputs}
    assert inputs == {"real": Path(env["data"]).name, "synthetic": "syn"}
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"card.md", "card.json", "best_worst.png", "closest_pairs.png",
            "fidelity_hist.png", "weights.json", "manifest.jsonl"} <= logged
    report = env["root"] / "report"
    r = CliRunner().invoke(cli, ["evaluate", "-c", str(env["params"]), "--data", str(env["data"]),
                                 "--synthetic", f"curated={out}", "--out", str(report),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((report / "cells.csv").open()))
    assert {(r["mix"], r["n_fake"]) for r in rows} == {("RALLF000", "0"),
                                                       ("RALLFALL[curated]", str(kept))}

    from isdm.config import load_config
    from isdm.evaluation.loading import eval_data_config, load_synthetic

    cfg = load_config(env["params"])
    synth = load_synthetic(out, eval_data_config(cfg.data, 32))
    card = json.loads((out / "card.json").read_text())
    assert int((synth.labels == 255).sum()) == card["counts"]["pixels_ignored"] > 0


def test_curate_refuses_what_it_must_not_write(env, tmp_path):
    def fails(*args: str) -> str:
        r = CliRunner().invoke(cli, ["curate", "-c", str(env["params"]), "--data", str(env["data"]),
                                     "--synthetic", str(env["syn"]), "--device", "cpu",
                                     "--cell-cache", str(env["root"] / "cache"), *args])
        assert r.exit_code == 1, r.output
        return r.output

    assert "overlaps --synthetic" in fails("--out", str(env["syn"]))
    foreign = tmp_path / "busy"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "notes.txt" in fails("--out", str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine"
    out = fails("--out", str(tmp_path / "bin"), "--set", "data.dataset_mode=binary",
                "--set", "data.num_classes=2")
    assert "curate.pixel_threshold=1.5: binary labels have no ignore value" in out


def test_the_curate_run_logs_only_the_params_curate_reads():
    import dataclasses

    from isdm.config import Config
    from isdm.curation.run import run_params

    cfg = Config()
    cfg = cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, steps=40))
    keys = set(run_params(cfg, None))
    assert {k.split(".")[0] for k in keys} == {"curate", "data", "evaluate"}
    assert {"curate.min_fidelity", "data.num_classes", "evaluate.lr", "evaluate.steps"} <= keys
    assert not keys & {"evaluate.architectures", "evaluate.seeds", "evaluate.workers",
                       "evaluate.bootstrap", "data.root", "evaluate.calibration.max_steps"}
    auto = set(run_params(cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, steps="auto")),
                          {"sample": {"s": 2.5}, "runs": {}}))
    assert "evaluate.calibration.max_steps" in auto and "sample.s" in auto
