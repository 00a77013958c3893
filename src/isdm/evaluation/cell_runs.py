"""A finished cell as evaluate reports it: its row of ``cells.csv`` (:func:`cell_row`), its
MLflow child run (:func:`log_cell`: the validation history as step metrics, the test metrics,
the budget, and the tag ``isdm.cell_from_store``) and the label fidelity of a real-only cell's
model on the synthetic sets (:func:`fidelity_of`: the stored weights, no retraining)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch

from isdm.config import Config

__all__ = ["cell_row", "log_cell", "fidelity_of", "stored_model"]

_HISTORY_KEYS = ("train_loss", "val_miou", "val_miou_nobg")
_BUDGET_KEYS = ("steps", "images_seen", "epochs", "best_step", "best_val_miou", "train_seconds")


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}


def _params(outcome: Any, n_test: int) -> dict[str, Any]:
    cell, plan = outcome.job.cell, outcome.job.cell.plan
    return {"arch": cell.arch, "mix": cell.label, "set": cell.synthetic_set,
            "protocol": cell.protocol.code, "seed": cell.seed,
            "n_real": len(plan.real_keys), "n_fake": len(plan.synthetic_keys),
            "n_val": len(plan.val_keys), "n_test": n_test,
            "encoder": outcome.job.cfg.evaluate.encoder}


def _budget(record: Any) -> dict[str, Any]:
    fit = record.fit
    out = {k: fit[k] for k in _BUDGET_KEYS}
    out["best_val_miou"] = record.best_val_miou
    return out


def cell_row(outcome: Any, n_test: int) -> dict[str, Any]:
    """The cell's row of ``cells.csv``: plan, budget and test metrics (from its record)."""
    from isdm.evaluation.metrics import summarize

    return {**_params(outcome, n_test), **_budget(outcome.record),
            **summarize(outcome.record.counts)}


def stored_model(cfg: Config, record: Any, device: torch.device) -> torch.nn.Module:
    """The selected model of a stored real-only cell, in eval mode on ``device``."""
    from isdm.evaluation.segmenter import build_segmenter

    spec = record.spec
    model = build_segmenter(spec["arch"], cfg.evaluate.encoder, None, cfg.data.num_classes,
                            spec["seed"])
    model.load_state_dict(record.load_weights())
    return model.to(device).eval()


def fidelity_of(cfg: Config, record: Any, sets: Mapping[str, Any],
                device: torch.device) -> dict[str, dict[str, float]]:
    """Label fidelity (:func:`isdm.evaluation.fidelity.label_fidelity`) of the stored
    real-only model of ``record`` on each synthetic set of ``sets``."""
    from isdm.evaluation.fidelity import label_fidelity

    if not sets:
        return {}
    model, e = stored_model(cfg, record, device), cfg.evaluate
    return {name: label_fidelity(model, images, num_classes=cfg.data.num_classes,
                                 ignore_index=cfg.data.ignore_index, device=device,
                                 batch_size=e.batch_size, encoder_weights=e.encoder_weights)[0]
            for name, images in sets.items()}


def log_cell(cfg: Config, outcome: Any, n_test: int, dataset: str,
             parent_run_id: Optional[str], fid_sets: Mapping[str, Any],
             device: torch.device) -> dict[str, dict[str, float]]:
    """One child run of the evaluate run for a finished cell; returns the label fidelity on
    ``fid_sets`` (empty unless it is a first-seed real-only cell)."""
    from isdm import tracking
    from isdm.evaluation.metrics import summarize

    record = outcome.record
    with tracking.start_run(cfg.tracking, name=outcome.job.cell.name, action="evaluate-cell",
                            dataset=dataset, params=_params(outcome, n_test),
                            parent_run_id=parent_run_id,
                            tags={"isdm.cell_key": record.key,
                                  "isdm.cell_from_store": str(not outcome.trained).lower()}) as child:
        for row in record.fit["history"]:
            child.log_metrics(_finite({k: row[k] for k in _HISTORY_KEYS
                                       if row.get(k) is not None}), step=int(row["step"]))
        child.log_metrics(_finite({f"test_{k}": v for k, v in summarize(record.counts).items()}))
        child.log_metrics(_finite(_budget(record)))
        fid = fidelity_of(cfg, record, fid_sets, device)
        for name, metrics in fid.items():
            child.log_metrics(_finite({f"fidelity_{name}_{k}": v for k, v in metrics.items()}))
    return fid
