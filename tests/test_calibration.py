"""`evaluate.steps: auto` end to end on a tiny set: the calibration trains the real-only cells
in chunks, stops by its rule, and leaves cells bit-identical to cells trained straight to N
under the same keys; evaluate, curate and tune read the cached calibration and train no
real-only cell again; the report and MLflow carry the curve and the chosen steps."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from isdm.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _cfg(*overrides: str):
    """FPN, 2 seeds, validation every step, the rule checked every 2 steps, cap 12."""
    return load_config(TINY, ["tracking.enabled=false", "evaluate.batch_size=4",
                              "evaluate.val_every=1", "evaluate.steps=auto",
                              "evaluate.seeds=[0,1]", "evaluate.workers=1", "evaluate.threads=1",
                              "evaluate.calibration.check_every=2",
                              "evaluate.calibration.max_steps=12", *overrides])


# a rule that never sees a plateau (defects never reach IoU 1): chunks to the cap
NEVER = "evaluate.calibration.min_defect_iou=1.0"
# a rule that stops at its first check (any rise is below a floor of 1)
FIRST = ("evaluate.calibration.min_defect_iou=0.0", "evaluate.calibration.rise_floor=1.0")


def _calibrate(cfg, data, store):
    from isdm.evaluation.calibration import calibrate

    return calibrate(cfg, data, ["FPN"], store=store, device=torch.device("cpu"))["FPN"]


def _strip(fit: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in fit["history"]]


@pytest.mark.slow
def test_chunked_calibration_cells_equal_cells_trained_straight_to_n(synth_dir, tmp_path,
                                                                     monkeypatch):
    from isdm.evaluation import calibration_jobs
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.store import CellStore
    from isdm.evaluation.worker import Digests, load_real, make_job, run_job

    torch.set_num_threads(1)
    cfg = _cfg(NEVER)
    store = CellStore(tmp_path / "cells")
    cal = _calibrate(cfg, synth_dir, store)
    # checks at 8 (the rule's first: 8 validations), 10 and the cap 12; the defect classes
    # never reach IoU 1, so the baseline counts as background-only: cap, void
    assert [c["step"] for c in cal.checks] == [8, 10, 12]
    assert [c["decision"] for c in cal.checks] == ["continue", "continue", "cap"]
    assert (cal.steps, cal.reason, cal.void) == (12, "cap", True)
    assert len(cal.curve["step"]) == 12 and np.array(cal.curve["val_miou"]).shape == (2, 12)
    assert not list((tmp_path / "cells" / ".progress").glob("*.pt"))  # no state left behind

    straight = CellStore(tmp_path / "straight")
    digests = Digests(synth_dir)
    real = load_real(cfg, synth_dir, "train", digests.split("train"))
    for seed, key in zip((0, 1), cal.cells):
        cell = plan_cell(cfg, "FPN", "RALLF000", seed, real.keys, [])
        job = make_job(cfg, synth_dir, cell, digests=digests, synthetic=None, test=True,
                       device_type="cpu", store=straight, steps=12)
        assert job.spec.key == key  # the table's cell at N is the calibration's
        chunked = store.get(key)
        assert chunked.run["resumed_at_step"] == 12  # finished from the handed-over state
        record, trained = run_job(job, torch.device("cpu"))
        assert trained and record.run["resumed_at_step"] == 0
        assert _strip(record.fit) == _strip(chunked.fit)
        assert (record.fit["best_step"], record.best_val_miou) == (
            chunked.fit["best_step"], chunked.best_val_miou)
        assert record.run["files"]["weights.pt"]["sha256"] == \
            chunked.run["files"]["weights.pt"]["sha256"]
        assert np.array_equal(record.counts, chunked.counts)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached calibration trains nothing")

    monkeypatch.setattr(calibration_jobs, "advance_chunk", no_training)
    again = _calibrate(cfg, synth_dir, store)
    assert (again.key, again.steps, again.checks) == (cal.key, cal.steps, cal.checks)


def test_a_fixed_number_is_not_calibrated_and_auto_without_a_rule_never_makes_a_cell(tmp_path):
    from isdm.errors import EvaluationError
    from isdm.evaluation.calibration import resolve_steps
    from isdm.evaluation.spec import cell_spec

    cfg = _cfg("evaluate.steps=7")
    steps, calibrations = resolve_steps(cfg, tmp_path, ["FPN", "UnetPlusPlus"], store=None,
                                        device=torch.device("cpu"))
    assert (steps, calibrations) == ({"FPN": 7, "UnetPlusPlus": 7}, {})
    with pytest.raises(EvaluationError, match="resolve it first"):
        cell_spec(_cfg(), "FPN", "RALLF000", 0, real="r")


@pytest.mark.slow
def test_evaluate_auto_reuses_the_calibration_cells_and_reports_the_steps(synth_dir, tmp_path,
                                                                        mlflow_uri,
                                                                        monkeypatch):
    """evaluate with steps auto: the rule stops at its first check (8 steps); the real-only rows
    of the table are the calibration's cells (not trained again), the synthetic rows train 8
    steps; report.md / report.json / metrics.json / calibration.* / MLflow say so."""
    import mlflow

    from isdm.evaluation import run_evaluation

    monkeypatch.setenv("ISDM_CELL_CACHE", str(tmp_path / "cells"))
    syn = tmp_path / "syn"
    (syn / "samples").mkdir(parents=True)
    (syn / "labels").mkdir()
    for img in sorted((synth_dir / "train" / "images").iterdir())[:4]:
        mask = next((synth_dir / "train" / "masks").glob(img.stem + ".*"))
        shutil.copy(img, syn / "samples" / f"syn_{img.stem}{img.suffix}")
        shutil.copy(mask, syn / "labels" / f"syn_{img.stem}{mask.suffix}")
    cfg = _cfg(*FIRST, "tracking.enabled=true", "evaluate.mixes=[RALLF000,RALLF4]",
               "evaluate.bootstrap=20")
    out = tmp_path / "out"
    res = run_evaluation(cfg, synth_dir, str(syn), out, progress=False)
    assert (res["trained"], res["from_store"]) == (2, 2)  # the RALLF4 cells only
    assert {(c["mix"], c["steps"]) for c in res["cells"]} == {("RALLF000", 8),
                                                              ("RALLF4[synthetic]", 8)}
    summary = json.loads((out / "report.json").read_text())
    cal = summary["calibration"]
    assert cal["auto"] and cal["architectures"]["FPN"]["steps"] == 8
    assert cal["architectures"]["FPN"]["reason"] == "plateau" and not cal["void"]
    assert summary["budget"]["steps"] == "auto"
    assert summary["budget"]["steps_per_architecture"] == {"FPN": 8}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibrated_steps"] == 8.0
    report = (out / "report.md").read_text()
    assert "## Steps: is the real-only baseline trained?" in report
    assert "| FPN | 8 | plateau |" in report and "Rule: validation every 1 steps" in report
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "calibration.json").read_text())["architectures"]["FPN"]["steps"] == 8

    (parent,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                 if r.data.tags.get("isdm.action") == "evaluate"]
    assert parent.data.metrics["calibration.FPN.steps"] == 8.0
    assert parent.data.metrics["calibrated_steps"] == 8.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"calibration.png", "calibration.json", "report.md"} <= artifacts

    # curate's scorer (curate.architecture FPN, seed 0) is the calibration's cell: nothing trains
    from isdm.curation import load_scorer
    from isdm.evaluation import calibration_jobs, worker

    def no_training(*args, **kwargs):
        raise AssertionError("nothing may train again")

    monkeypatch.setattr(calibration_jobs, "advance_chunk", no_training)
    monkeypatch.setattr(worker, "_train", no_training)
    scorer = load_scorer(cfg, synth_dir)
    assert scorer.reused and scorer.identity["steps"] == 8

    # tune at eval_steps auto: 8 steps, and its real-only cells of seeds 0, 1 are the
    # calibration's (tested twins: read, not trained; the search reads only their fit)
    from isdm.evaluation.loading import empty_set, load_split
    from isdm.tuning import paired
    from isdm.tuning.cells import StudyCells

    tcfg = cfg.replace(tune=dataclasses.replace(cfg.tune, eval_steps="auto", architecture="FPN"))
    with StudyCells(tcfg, synth_dir) as cells:
        tcfg, calibration = paired.resolve_budget(tcfg, synth_dir, cells)
        assert tcfg.tune.eval_steps == 8 and calibration.steps == 8
        bcfg = paired.budget_config(tcfg)
        real = load_split(bcfg, synth_dir, "train")
        values = list(paired.repeat_values(bcfg, "RALLF000", real, empty_set(bcfg), None, cells,
                                           [0, 1]))
    stored = {c["seed"]: c["best_val_miou"] for c in res["cells"] if c["mix"] == "RALLF000"}
    assert values == [(stored[0], 8), (stored[1], 8)]
