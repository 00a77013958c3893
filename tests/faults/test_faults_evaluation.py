"""Faults of `isdm evaluate`, one test per failure mode (issue 22): real-only segmenters that
predict only background, a user's files in --out, a non-finite segmenter loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from faultkit import TINY, isdm, no_traceback

from isdm.errors import NumericalError

C, N = 5, 4  # classes, test images


def _counts(predicted_defect: bool) -> np.ndarray:
    """[N, C, 3] (tp, fp, fn) of 100-pixel images holding 10 defect pixels of class 1 each,
    predicted right, or predicted all background."""
    c = np.zeros((N, C, 3), np.int64)
    if predicted_defect:
        c[:, 0, 0], c[:, 1, 0] = 90, 10
    else:
        c[:, 0, 0], c[:, 0, 1], c[:, 1, 2] = 90, 10, 10
    return c


def _summary(predicted_defect: bool) -> dict:
    from isdm.config import load_config
    from isdm.evaluation.metrics import summarize
    from isdm.evaluation.report import build_summary

    cfg = load_config(TINY, ["evaluate.architectures=[FPN,UnetPlusPlus]", "evaluate.seeds=[0,1]"])
    rows = [("RALLF000", "", "mix"), ("RALLFALL", "synthetic", "mix")]
    cells, counts = [], {}
    for arch in ("FPN", "UnetPlusPlus"):
        for mix, label in (("RALLF000", "RALLF000"), ("RALLFALL", "RALLFALL[synthetic]")):
            good = predicted_defect and arch == "FPN"
            for seed in (0, 1):
                c = _counts(good)
                counts.setdefault((arch, label), []).append(c)
                cells.append({"arch": arch, "mix": label, "set": "synthetic" if "[" in label
                              else "", "seed": seed, "n_real": 8, "n_fake": 8 if "[" in label
                              else 0, "steps": 2, "images_seen": 8, "train_seconds": 1.0,
                              **summarize(c)})
    return build_summary(cfg, cells, counts, rows, ["synthetic"], [0, 1], {}, {"data": "d"})


def test_segmenters_that_predict_only_background_void_the_comparison():
    """Issue 22: a table where every segmenter predicts only background reported gains of
    exactly 0.0000 ± 0.0000 and no word of why."""
    from isdm.evaluation.markdown import markdown_report
    from isdm.evaluation.report import mlflow_metrics

    void = _summary(predicted_defect=False)
    assert void["degenerate"]["void"] and void["degenerate"]["architectures"] == [
        "FPN", "UnetPlusPlus"]
    assert void["headline"]["comparison_void"] == 1.0
    assert void["headline"]["real_only_defect_ratio"] == 0.0
    assert void["overall"]["RALLFALL[synthetic]"]["gain"] == 0.0  # what used to pass silently
    md = markdown_report(void)
    assert md.index("## Verdict") < md.index("## Setup")
    assert "**The comparison is void**: every real-only segmenter predicts (almost) only " \
           "background" in md
    assert mlflow_metrics(void)["comparison_void"] == 1.0
    half = _summary(predicted_defect=True)  # FPN finds the defects, UnetPlusPlus does not
    assert not half["degenerate"]["void"] and half["degenerate"]["architectures"] == [
        "UnetPlusPlus"]
    assert half["headline"]["comparison_void"] == 0.0
    assert "**Warning**: the real-only UnetPlusPlus predicts" in markdown_report(half)
    assert json.loads(json.dumps(half["degenerate"]))["defect_ratio"]["FPN"] == 1.0


def test_evaluate_into_a_folder_with_a_users_files_of_its_names_is_refused(synth_dir, tmp_path):
    """Issue 22: `evaluate --out` overwrote a user's report.md / metrics.json."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("the user's")
    r = isdm("evaluate", "-c", TINY, "--data", synth_dir, "--out", out,
             "--set", "tracking.enabled=false", "--set", "evaluate.mixes=[RALLF000]")
    assert no_traceback(r) and "holds 1 file(s) (report.md)" in r.output, r.output
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert (out / "report.md").read_text() == "the user's"


def test_a_non_finite_segmenter_loss_stops_the_cell(monkeypatch):
    """Issue 22: a NaN segmenter loss trained on and scored a meaningless cell; it now stops at
    the next validation (no host sync per step), naming the first NaN step."""
    from isdm.config import EvaluateConfig
    from isdm.evaluation import loop, segmenter

    real = segmenter.loss_function("dice_ce", 255)
    calls = []

    def nan_from_step_2(logits, y):
        calls.append(1)
        loss = real(logits, y)
        return loss * float("nan") if len(calls) >= 2 else loss

    monkeypatch.setattr(loop, "loss_function", lambda kind, ignore: nan_from_step_2)
    g = torch.Generator().manual_seed(0)
    data = segmenter.TensorSet(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1,
                               torch.randint(0, 3, (4, 32, 32), generator=g),
                               ["a", "b", "c", "d"])
    model = segmenter.build_segmenter("FPN", "resnet18", None, 3, seed=0)
    recipe = EvaluateConfig(steps=4, val_every=4, batch_size=2)
    with pytest.raises(NumericalError, match=r"segmenter FPN \(seed 0\) stopped at step 2: its "
                                             r"loss is nan.*evaluate.lr"):
        loop.train_segmenter(model, data.subset(["a", "b", "c"]), data.subset(["d"]), recipe,
                             num_classes=3, ignore_index=255, seed=0, device=torch.device("cpu"))
