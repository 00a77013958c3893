"""End-to-end `isdm evaluate` on tiny data: outputs, MLflow parent/children, determinism, equal
optimiser steps for every mix, several synthetic sets, ignore pixels, errors."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from isdm.cli import cli


def _fake_synthetic(dataset: Path, out: Path, n: int) -> Path:
    """A sampling-output-shaped folder: the first n train pairs copied into samples/ + labels/."""
    (out / "samples").mkdir(parents=True)
    (out / "labels").mkdir()
    images = sorted((dataset / "train" / "images").iterdir())[:n]
    for img in images:
        mask = next((dataset / "train" / "masks").glob(img.stem + ".*"))
        shutil.copy(img, out / "samples" / f"syn_{img.stem}{img.suffix}")
        shutil.copy(mask, out / "labels" / f"syn_{img.stem}{mask.suffix}")
    (out / "manifest.jsonl").write_text("")  # ignored by evaluate
    return out


def _config(tmp_path: Path, **evaluate) -> Path:
    import yaml

    section = dict(architectures=["FPN", "DeepLabV3Plus"], encoder="resnet18", mixes=["RALLF000", "RALLF4"],
                   seeds=[0, 1], steps=2, val_every=1, image_size=32, batch_size=4, bootstrap=50,
                   workers=1,
                   lr=1e-3)
    section.update(evaluate)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"evaluate": section}))
    return path


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_evaluate_cli_writes_outputs_and_mlflow_runs(synth_dir, mlflow_uri, tmp_path):
    syn = _fake_synthetic(synth_dir, tmp_path / "syn", 4)
    out = tmp_path / "out"
    output = _invoke(["evaluate", "-c", str(_config(tmp_path)), "--data", str(synth_dir),
                      "--synthetic", str(syn), "--out", str(out)])
    assert "| FPN | RALLF4[synthetic] | 2 |" in output and "| DeepLabV3Plus | RALLF000 | 2 |" in output

    # metrics.json: the headline only, flat; the details in report.json
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["miou_real_only", "miou_with_synthetic", "miou_gain", "miou_gain_lo",
                             "miou_gain_hi", "label_fidelity", "comparison_void",
                             "real_only_defect_ratio"]
    assert all(isinstance(v, float) for v in metrics.values())
    summary = json.loads((out / "report.json").read_text())
    assert summary["headline"] == metrics and summary["main_mix"] == "RALLF4"
    assert summary["sets"] == ["synthetic"] and summary["comparisons"] == []
    for arch in ("FPN", "DeepLabV3Plus"):
        base, mix = (summary["architectures"][arch][k] for k in ("RALLF000", "RALLF4[synthetic]"))
        assert 0.0 <= base["miou_mean"] <= 1.0 and base["n_seeds"] == 2 and "gain" not in base
        assert mix["gain_lo"] <= mix["gain"] <= mix["gain_hi"]
        assert mix["verdict"] in ("gain", "loss", "no significant difference")
        assert summary["fidelity"]["synthetic"][arch]["n_images"] == 4.0
        own = summary["per_architecture"][arch]
        assert own["miou_gain"] == mix["gain"] and own["miou_real_only"] == base["miou_mean"]
        assert own["label_fidelity"] == summary["fidelity"]["synthetic"][arch]["miou"]
    per = summary["per_architecture"].values()
    assert metrics["miou_gain"] == pytest.approx(sum(a["miou_gain"] for a in per) / 2, abs=1e-12)
    assert metrics["label_fidelity"] == pytest.approx(sum(a["label_fidelity"] for a in per) / 2)
    assert summary["budget"]["rows"] == {  # 8 real train images, 2 held out for validation
        "RALLF000": {"mix": "RALLF000", "set": "", "protocol": "mix", "n_real": 6,
                     "n_synthetic": 0, "steps": 2, "images_seen": 8, "epochs": 8 / 6},
        "RALLF4[synthetic]": {"mix": "RALLF4", "set": "synthetic", "protocol": "mix",
                              "n_real": 6, "n_synthetic": 4, "steps": 2, "images_seen": 8,
                              "epochs": 0.8}}

    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert len(rows) == 8
    assert {(r["arch"], r["mix"], r["seed"]) for r in rows} == {
        (a, m, s) for a in ("FPN", "DeepLabV3Plus") for m in ("RALLF000", "RALLF4[synthetic]")
        for s in ("0", "1")}
    assert {r["n_fake"] for r in rows} == {"0", "4"} and all(r["n_test"] == "4" for r in rows)
    assert {(r["steps"], r["images_seen"]) for r in rows} == {("2", "8")}
    report = (out / "report.md").read_text()
    assert "| architecture | mix |" in report and "Label fidelity" in report
    assert "| RALLF4[synthetic] | 6 | 4 | 2 | 8 | 0.8 |" in report  # the budget per mix
    assert (out / "miou.png").read_bytes()[:4] == b"\x89PNG"

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get("isdm.action") == "evaluate"]
    children = [r for r in runs if r.data.tags.get("isdm.action") == "evaluate-cell"]
    assert len(parents) == 1 and len(children) == 8
    pid = parents[0].info.run_id
    assert all(c.data.tags["mlflow.parentRunId"] == pid for c in children)
    assert all("test_miou" in c.data.metrics and "best_val_miou" in c.data.metrics for c in children)
    assert all(c.data.metrics["steps"] == 2 for c in children)
    assert parents[0].data.params["evaluate.steps"] == "2"
    logged = parents[0].data.metrics
    assert {k: logged[k] for k in metrics} == metrics and "FPN.miou_gain" in logged
    assert "mean.RALLF4_synthetic.gain_hi" in logged
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(pid)}
    assert {"metrics.json", "report.json", "report.md", "miou.png", "cells.csv"} <= artifacts


def _random_set(n: int, size: int = 32, classes: int = 3, seed: int = 0):
    import torch

    from isdm.evaluation.segmenter import TensorSet

    g = torch.Generator().manual_seed(seed)
    return TensorSet(torch.rand(n, 3, size, size, generator=g) * 2 - 1,
                     torch.randint(0, classes, (n, size, size), generator=g), [f"k{i}" for i in range(n)])


def test_same_seed_same_weights_and_selection_keeps_the_best_validation():
    import torch

    from isdm.config import EvaluateConfig
    from isdm.evaluation.loop import train_segmenter
    from isdm.evaluation.segmenter import build_segmenter

    recipe = EvaluateConfig(steps=5, val_every=2, lr=1e-3, batch_size=2, loss="dice_ce", augment=True)
    data = _random_set(6)
    train, val = data.subset(["k0", "k1", "k2", "k3", "k4"]), data.subset(["k5"])
    runs = []
    for _ in range(2):
        model = build_segmenter("FPN", "resnet18", None, 3, seed=3)
        res = train_segmenter(model, train, val, recipe, num_classes=3, ignore_index=255, seed=3,
                              device=torch.device("cpu"))
        runs.append((model.state_dict(), res))
    (w0, r0), (w1, r1) = runs
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert [h["train_loss"] for h in r0.history] == [h["train_loss"] for h in r1.history]
    assert [h["step"] for h in r0.history] == [2.0, 4.0, 5.0]  # every val_every and the last
    assert [h["epoch"] for h in r0.history] == [0.8, 1.6, 2.0]  # images shown / 5 images
    best = max(r0.history, key=lambda h: h["val_miou"])
    assert r0.best_val_miou == best["val_miou"] and r0.best_step == int(best["step"])
    assert all(torch.equal(w0[k], r0.state_dict[k]) for k in w0)  # the model holds the best weights


def test_a_mix_with_twice_the_images_gets_the_same_optimiser_steps(monkeypatch):
    """Equal budget: 4 and 8 training images both train for `steps` optimiser steps of
    `batch_size` images (counted at the optimiser and at the model's training forwards)."""
    import torch

    from isdm.config import EvaluateConfig
    from isdm.evaluation.loop import train_segmenter
    from isdm.evaluation.segmenter import build_segmenter

    calls = {"steps": 0}
    real_step = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        calls["steps"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    recipe = EvaluateConfig(steps=5, val_every=10, batch_size=3, augment=False)
    data = _random_set(9)
    seen = {}
    for n in (4, 8):
        calls["steps"] = 0
        model = build_segmenter("FPN", "resnet18", None, 3, seed=0)
        shown = []
        model.register_forward_hook(lambda m, inp, out: shown.append(len(inp[0])) if m.training else None)
        fit = train_segmenter(model, data.subset([f"k{i}" for i in range(n)]), data.subset(["k8"]),
                              recipe, num_classes=3, ignore_index=255, seed=0,
                              device=torch.device("cpu"))
        seen[n] = (calls["steps"], sum(shown), fit.steps, fit.images_seen, fit.epochs)
    assert seen == {4: (5, 15, 5, 15, 15 / 4), 8: (5, 15, 5, 15, 15 / 8)}


def test_the_batch_stream_cycles_through_seeded_permutations():
    import torch

    from isdm.evaluation.segmenter import batch_stream, validation_steps

    for n, bs in ((2, 4), (5, 2), (7, 3), (8, 4)):
        stream = batch_stream(n, bs, torch.Generator().manual_seed(n))
        flat = torch.cat([next(stream) for _ in range(3 * n)])  # 3n batches = 3 bs passes
        assert len(flat) == 3 * n * bs
        passes = flat.view(3 * bs, n)
        assert all(sorted(p.tolist()) == list(range(n)) for p in passes)  # each pass a permutation
        again = batch_stream(n, bs, torch.Generator().manual_seed(n))
        assert torch.equal(torch.cat([next(again) for _ in range(3 * n)]), flat)
    assert validation_steps(10, 4) == [4, 8, 10] and validation_steps(3, 5) == [3]
    assert validation_steps(6, 2) == [2, 4, 6]


def test_augment_flips_image_and_label_jointly():
    import torch

    from isdm.evaluation.segmenter import augment_batch

    img = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).repeat(8, 3, 1, 1)
    lab = torch.arange(16).view(1, 4, 4).repeat(8, 1, 1)
    out_img, out_lab = augment_batch(img, lab, torch.Generator().manual_seed(0))
    assert out_img.min() >= -1 and out_img.max() <= 1
    for i in range(8):  # labels are a pure flip of the original; the image follows the same flip
        flips = [d for d in ([], [-1], [-2], [-2, -1]) if torch.equal(lab[i].flip(d) if d else lab[i], out_lab[i])]
        assert len(flips) == 1
        ref = img[i].flip(flips[0]) if flips[0] else img[i]
        assert torch.corrcoef(torch.stack([ref.flatten(), out_img[i].flatten()]))[0, 1] > 0.99


@pytest.mark.parametrize("kind", ["dice", "dice_ce"])
def test_ignored_pixels_do_not_move_the_loss(kind):
    """A label map with ignore_index pixels (a curated synthetic set): changing the logits at the
    ignored pixels changes neither the loss nor any gradient outside them."""
    import torch

    from isdm.evaluation.segmenter import loss_function as _loss_fn

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[:, :4] = 255
    loss = _loss_fn(kind, 255)
    other = logits.clone()
    other[:, :, :4] += 10 * torch.randn(2, 3, 4, 8, generator=g)
    a, b = logits.requires_grad_(), other.requires_grad_()
    la, lb = loss(a, labels), loss(b, labels)
    la.backward()
    lb.backward()
    assert torch.isfinite(la) and torch.allclose(la, lb, atol=1e-6)
    assert torch.count_nonzero(a.grad[:, :, :4]) == 0
    assert torch.allclose(a.grad[:, :, 4:], b.grad[:, :, 4:], atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("evaluate.mixes=[R10F]", "R<a>F<b>"),
    ("evaluate.mixes=[R99F000]", "asked for 99 real training images"),
    ("evaluate.image_size=48", "multiple of 32"),
    ("evaluate.architectures=[Unet3]", "unknown smp architecture"),
])
def test_bad_requests_fail_before_training_with_a_clear_message(synth_dir, tmp_path, override, message):
    result = CliRunner().invoke(cli, ["evaluate", "-c", str(_config(tmp_path)), "--data", str(synth_dir),
                                      "--out", str(tmp_path / "o"), "--set", "tracking.enabled=false",
                                      "--set", "evaluate.mixes=[RALLF000]", "--set", override])
    assert result.exit_code != 0 and message in result.output, result.output


def test_pretrained_weights_offline_fail_fast(monkeypatch):
    from isdm.errors import EvaluationError
    from isdm.evaluation.segmenter import build_segmenter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(EvaluationError, match="encoder_weights=null"):
        build_segmenter("FPN", "resnet18", "imagenet", 2, seed=0)
    assert time.perf_counter() - t0 < 10


def test_missing_synthetic_folder_is_an_error(synth_dir, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "-c", str(_config(tmp_path)), "--data", str(synth_dir),
                                      "--out", str(tmp_path / "o"), "--set", "tracking.enabled=false"])
    assert result.exit_code != 0 and "need a synthetic folder" in result.output


def _curated(synthetic: Path, out: Path, drop: int = 1) -> Path:
    """A curated copy of a synthetic folder (the `isdm curate` layout): one sample dropped and
    the top 8 rows of every label set to ignore_index 255."""
    import numpy as np
    from PIL import Image

    for sub in ("samples", "labels"):
        (out / sub).mkdir(parents=True)
    for img in sorted((synthetic / "samples").iterdir())[drop:]:
        shutil.copy(img, out / "samples" / img.name)
        label = np.array(Image.open(next((synthetic / "labels").glob(img.stem + ".*"))))
        label[:8] = 255
        Image.fromarray(label).save(out / "labels" / f"{img.stem}.png")
    (out / "manifest.jsonl").write_text("")
    return out


@pytest.mark.slow
def test_several_synthetic_sets_give_a_row_each_and_are_compared_with_the_first(synth_dir, tmp_path):
    from isdm.config import load_config
    from isdm.evaluation.loading import eval_data_config, load_synthetic

    syn = _fake_synthetic(synth_dir, tmp_path / "syn", 4)
    cur = _curated(syn, tmp_path / "cur")
    cfg = load_config(_config(tmp_path, architectures=["FPN"], mixes=["RALLF000", "RALLFALL"],
                              seeds=[0]))
    assert 255 in load_synthetic(cur, eval_data_config(cfg.data, 32)).labels  # ignore pixels
    out = tmp_path / "out"
    _invoke(["evaluate", "-c", str(tmp_path / "params.yaml"), "--data", str(synth_dir),
             "--synthetic", str(syn), "--synthetic", f"curated={cur}", "--out", str(out),
             "--set", "tracking.enabled=false"])
    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert [(r["mix"], r["set"], r["n_fake"]) for r in rows] == [
        ("RALLF000", "", "0"), ("RALLFALL[synthetic]", "synthetic", "4"),
        ("RALLFALL[curated]", "curated", "3")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["miou_real_only", "miou_with_synthetic", "miou_gain", "miou_gain_lo",
                             "miou_gain_hi", "miou_gain_curated", "miou_gain_curated_lo",
                             "miou_gain_curated_hi", "label_fidelity", "comparison_void",
                             "real_only_defect_ratio"]
    summary = json.loads((out / "report.json").read_text())
    fpn = summary["architectures"]["FPN"]
    assert metrics["miou_gain_curated"] == fpn["RALLFALL[curated]"]["gain"]
    assert [(c["arch"], c["mix"], c["set"], c["reference"]) for c in summary["comparisons"]] == [
        ("FPN", "RALLFALL", "curated", "synthetic"), ("mean", "RALLFALL", "curated", "synthetic")]
    own, mean = summary["comparisons"]
    expected = fpn["RALLFALL[curated]"]["miou_mean"] - fpn["RALLFALL[synthetic]"]["miou_mean"]
    assert own["gain"] == pytest.approx(expected, abs=1e-12) and mean["gain"] == own["gain"]
    assert own["gain_lo"] <= own["gain"] <= own["gain_hi"]
    assert {n: f["FPN"]["n_images"] for n, f in summary["fidelity"].items()} == {
        "synthetic": 4.0, "curated": 3.0}
    assert 0.0 <= summary["fidelity"]["curated"]["FPN"]["miou"] <= 1.0
    assert "## Synthetic sets compared" in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.crackforest
def test_crackforest_three_architectures_two_mixes_two_seeds(crackforest_dir, tmp_path):
    from isdm.config import load_config
    from isdm.evaluation import run_evaluation

    syn = _fake_synthetic(crackforest_dir, tmp_path / "syn", 8)
    cfg = load_config(_config(tmp_path, architectures=["UnetPlusPlus", "FPN", "DeepLabV3Plus"],
                              mixes=["RALLF000", "RALLF8"], steps=2, batch_size=8, bootstrap=100),
                      ["tracking.enabled=false", "data.dataset_mode=binary", "data.num_classes=2",
                       "data.ignore_index=null"])
    res = run_evaluation(cfg, crackforest_dir, syn, tmp_path / "out", progress=False)
    assert len(res["cells"]) == 12
    assert {c["n_real"] for c in res["cells"]} == {63} and {c["n_test"] for c in res["cells"]} == {39}
    for arch in ("UnetPlusPlus", "FPN", "DeepLabV3Plus"):
        assert set(res["summary"]["architectures"][arch]) == {"RALLF000", "RALLF8[synthetic]"}
        assert res["summary"]["architectures"][arch]["RALLF8[synthetic]"]["verdict"] in (
            "gain", "loss", "no significant difference")
    for name in ("metrics.json", "report.json", "report.md", "miou.png", "cells.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_eval_bench_takes_crackforest_explicitly_and_skips_with_a_note(tmp_path, monkeypatch):
    import json

    from isdm.bench.__main__ import main

    monkeypatch.delenv("ISDM_CRACKFOREST", raising=False)
    out = tmp_path / "results.json"
    assert main(["--only", "eval", "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["eval"]
    assert result["table"] == [] and "--crackforest" in result["notes"][0]
    monkeypatch.setenv("ISDM_CRACKFOREST", str(tmp_path / "nowhere"))
    assert main(["--only", "eval", "--quick", "--out", str(out)]) == 0
    assert f"not found at {tmp_path / 'nowhere'}" in json.loads(out.read_text())["eval"]["notes"][0]
