"""End-to-end `isdm evaluate` on tiny data: outputs, MLflow parent/children, determinism, errors."""

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
                   seeds=[0, 1], epochs=1, image_size=32, batch_size=4, bootstrap=50, lr=1e-3)
    section.update(evaluate)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"evaluate": section}))
    return path


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_cli_writes_outputs_and_mlflow_runs(synth_dir, mlflow_uri, tmp_path):
    syn = _fake_synthetic(synth_dir, tmp_path / "syn", 4)
    out = tmp_path / "out"
    output = _invoke(["evaluate", "-c", str(_config(tmp_path)), "--data", str(synth_dir),
                      "--synthetic", str(syn), "--out", str(out)])
    assert "| FPN | RALLF4 | 2 |" in output and "| DeepLabV3Plus | RALLF000 | 2 |" in output

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"FPN", "DeepLabV3Plus", "fidelity", "summary"}
    for arch in ("FPN", "DeepLabV3Plus"):
        base, mix = metrics[arch]["RALLF000"], metrics[arch]["RALLF4"]
        assert 0.0 <= base["miou_mean"] <= 1.0 and base["n_seeds"] == 2.0 and "gain" not in base
        assert mix["gain_lo"] <= mix["gain"] <= mix["gain_hi"] and mix["significant"] in (-1, 0, 1)
        assert 0.0 <= metrics["fidelity"][arch]["miou"] <= 1.0
        assert metrics["fidelity"][arch]["n_images"] == 4.0

    def leaves(tree):
        for v in tree.values():
            yield from leaves(v) if isinstance(v, dict) else [v]

    assert all(isinstance(v, (int, float)) for v in leaves(metrics))

    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert len(rows) == 8
    assert {(r["arch"], r["mix"], r["seed"]) for r in rows} == {
        (a, m, s) for a in ("FPN", "DeepLabV3Plus") for m in ("RALLF000", "RALLF4") for s in ("0", "1")}
    assert {r["n_fake"] for r in rows} == {"0", "4"} and all(r["n_test"] == "4" for r in rows)
    report = (out / "report.md").read_text()
    assert "| architecture | mix |" in report and "Label fidelity" in report
    assert (out / "miou.png").read_bytes()[:4] == b"\x89PNG"

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get("isdm.action") == "evaluate"]
    children = [r for r in runs if r.data.tags.get("isdm.action") == "evaluate-cell"]
    assert len(parents) == 1 and len(children) == 8
    pid = parents[0].info.run_id
    assert all(c.data.tags["mlflow.parentRunId"] == pid for c in children)
    assert all("test_miou" in c.data.metrics and "best_val_miou" in c.data.metrics for c in children)
    assert parents[0].data.params["evaluate.epochs"] == "1"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(pid)}
    assert {"metrics.json", "report.md", "miou.png", "cells.csv"} <= artifacts


def test_same_seed_same_weights_and_selection_keeps_the_best_epoch():
    import torch

    from isdm.config import EvaluateConfig
    from isdm.evaluation.segmenter import TensorSet, build_segmenter, train_segmenter

    recipe = EvaluateConfig(epochs=2, lr=1e-3, batch_size=2, loss="dice_ce", augment=True)
    g = torch.Generator().manual_seed(0)
    data = TensorSet(torch.rand(6, 3, 32, 32, generator=g) * 2 - 1,
                     torch.randint(0, 3, (6, 32, 32), generator=g), [f"k{i}" for i in range(6)])
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
    best = max(r0.history, key=lambda h: h["val_miou"])
    assert r0.best_val_miou == best["val_miou"] and r0.best_epoch == int(best["epoch"])
    assert all(torch.equal(w0[k], r0.state_dict[k]) for k in w0)  # the model holds the best weights


def test_batches_never_end_with_a_single_sample_and_augment_flips_jointly():
    import torch

    from isdm.evaluation.segmenter import augment_batch, batch_indices

    for n in range(2, 12):
        chunks = batch_indices(n, 4, torch.Generator().manual_seed(n))
        assert sorted(torch.cat(chunks).tolist()) == list(range(n)) and min(map(len, chunks)) >= 2
    img = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).repeat(8, 3, 1, 1)
    lab = torch.arange(16).view(1, 4, 4).repeat(8, 1, 1)
    out_img, out_lab = augment_batch(img, lab, torch.Generator().manual_seed(0))
    assert out_img.min() >= -1 and out_img.max() <= 1
    for i in range(8):  # labels are a pure flip of the original; the image follows the same flip
        flips = [d for d in ([], [-1], [-2], [-2, -1]) if torch.equal(lab[i].flip(d) if d else lab[i], out_lab[i])]
        assert len(flips) == 1
        ref = img[i].flip(flips[0]) if flips[0] else img[i]
        assert torch.corrcoef(torch.stack([ref.flatten(), out_img[i].flatten()]))[0, 1] > 0.99


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


@pytest.mark.slow
@pytest.mark.crackforest
def test_crackforest_three_architectures_two_mixes_two_seeds(crackforest_dir, tmp_path):
    from isdm.config import load_config
    from isdm.evaluation import run_evaluation

    syn = _fake_synthetic(crackforest_dir, tmp_path / "syn", 8)
    cfg = load_config(_config(tmp_path, architectures=["UnetPlusPlus", "FPN", "DeepLabV3Plus"],
                              mixes=["RALLF000", "RALLF8"], epochs=1, batch_size=8, bootstrap=100),
                      ["tracking.enabled=false", "data.dataset_mode=binary", "data.num_classes=2",
                       "data.ignore_index=null"])
    res = run_evaluation(cfg, crackforest_dir, syn, tmp_path / "out", progress=False)
    assert len(res["cells"]) == 12
    assert {c["n_real"] for c in res["cells"]} == {63} and {c["n_test"] for c in res["cells"]} == {39}
    for arch in ("UnetPlusPlus", "FPN", "DeepLabV3Plus"):
        assert set(res["summary"][arch]) == {"RALLF000", "RALLF8"}
        assert res["summary"][arch]["RALLF8"]["verdict"] in ("gain", "loss", "no significant difference")
    for name in ("metrics.json", "report.md", "miou.png", "cells.csv"):
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
