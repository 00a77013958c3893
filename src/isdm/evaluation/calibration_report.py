"""What an evaluation says about its budget: the ``calibration`` part of ``report.json`` and
``report.md``, ``calibration.json``, ``calibration.png`` and the MLflow metrics.

With ``evaluate.steps: auto`` it states the rule, the calibrated steps of every architecture
and the evidence (the rise over the last quarter at N against its threshold, or "cap
reached"); with a fixed number it applies the same rule (:mod:`.plateau_rule`) at that number to
the real-only cells' validation curves, so a report also says whether a fixed budget left the
baseline still rising. Either way the curves are those of the table's real-only cells (with
``auto`` they are the calibration's own cells).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from isdm.evaluation.plateau_rule import PlateauRule, check

__all__ = ["summarize", "markdown_section", "mlflow_metrics", "plot_calibration",
           "write_calibration", "curves_of"]

_VOID = ("the real-only baseline still predicts (almost) no defect pixel at the cap, so its "
         "comparison is void: every row compares segmenters that found no defect")


def curves_of(records: Sequence[Any]) -> dict[str, Any]:
    """``{"step", "val_miou" [S][n], "val_miou_nobg" [S][n]}`` of the validations shared by
    the cell records (the real-only cells of one architecture, one per seed)."""
    rows = [r.fit["history"] for r in records]
    steps = sorted(set.intersection(*[{int(h["step"]) for h in r} for r in rows])) if rows else []

    def values(key: str) -> list[list[float]]:
        return [[float("nan") if h.get(key) is None else float(h[key])
                 for h in r if int(h["step"]) in steps] for r in rows]

    return {"step": steps, "val_miou": values("val_miou"), "val_miou_nobg": values("val_miou_nobg")}


def _rule(cfg: Any, records: Sequence[Any]) -> PlateauRule:
    val_every = int(records[0].fit["val_every"]) if records else int(cfg.evaluate.val_every)
    return PlateauRule.from_config(cfg.evaluate.calibration, max(1, val_every))


def summarize(cfg: Any, steps: Mapping[str, int], calibrations: Mapping[str, Any],
              baseline: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The ``calibration`` tree of ``report.json``: ``auto``, ``rule`` (a sentence) and
    ``parameters``, per architecture ``steps``, ``reason`` (``plateau``, ``cap`` or ``fixed``),
    the last check (``rise``, ``threshold``, ``noise``, ``defect_iou``, ``background_only``),
    ``void`` and ``evidence``, the curves; ``void``: every architecture's comparison is.

    Args:
        steps: the steps of every architecture; calibrations: their :class:`Calibration` (empty
            for a fixed number); baseline: the real-only cell records per architecture.
    """
    out: dict[str, Any] = {"auto": bool(calibrations), "setting": cfg.evaluate.steps,
                           "architectures": {}}
    for arch, n in steps.items():
        records = list(baseline.get(arch, []))
        rule = _rule(cfg, records)
        out.setdefault("rule", rule.describe())
        out.setdefault("parameters", {k: v for k, v in vars(rule).items()})
        curve = curves_of(records)
        if arch in calibrations:
            c = calibrations[arch]
            last, reason, void, extra = c.last, c.reason, c.void, {"checks": len(c.checks),
                                                                   "seconds": c.seconds}
        else:  # a fixed number: what the rule says at it
            last = check(rule, curve["step"] or [n], np.array(curve["val_miou"] or [[np.nan]]),
                         np.array(curve["val_miou_nobg"] or [[np.nan]]), at=n)
            reason, void, extra = "fixed", False, {"rule_at_steps": last.decision}
        out["architectures"][arch] = {
            "steps": n, "reason": reason, "void": void, "evidence": last.evidence(),
            **{k: getattr(last, k) for k in ("rise", "threshold", "noise", "defect_iou",
                                              "background_only")}, **extra, "curve": curve}
    archs = out["architectures"].values()
    out["void"] = bool(archs) and all(a["void"] for a in archs)
    return out


def markdown_section(calibration: Mapping[str, Any]) -> str:
    """The ``## Budget`` section of report.md: the rule, a table per architecture, the void
    verdict."""
    auto = calibration["auto"]
    head = ("`evaluate.steps: auto`: each architecture trains the steps at which its real-only "
            "baseline stopped rising (the table's real-only cells are the calibration's own)."
            if auto else f"`evaluate.steps: {calibration['setting']}` (fixed); the calibration "
            "rule applied at that number to the real-only cells' validation curves:")
    lines = [head, "", f"Rule: {calibration.get('rule', '')}.", "",
             "| architecture | steps | how | rise over the last quarter | threshold | "
             "defect IoU (val) | evidence |", "|---|---|---|---|---|---|---|"]
    for arch, a in calibration["architectures"].items():
        how = {"plateau": "plateau", "cap": "cap reached"}.get(a["reason"], "fixed")
        if a["reason"] == "fixed":
            how = "fixed: still rising" if a.get("rule_at_steps") == "continue" else "fixed"
        lines.append(f"| {arch} | {a['steps']} | {how} | {_num(a['rise'], '+.4f')} | "
                     f"{_num(a['threshold'], '.4f')} | {_num(a['defect_iou'], '.4f')} | "
                     f"{a['evidence']} |")
    void = [arch for arch, a in calibration["architectures"].items() if a["void"]]
    if void:
        who = "every architecture" if calibration["void"] else ", ".join(void)
        lines += ["", f"**The comparison is void for {who}**: {_VOID}. Raise "
                      "`evaluate.calibration.max_steps`, check the masks (`isdm data check`) or "
                      "crop around defects (`data.crop`)."]
    lines += ["", "Curves: `calibration.png` (seed mean ± std of the real-only validation mIoU, "
                  "the dashed line at the steps used)."]
    return "\n".join(lines)


def _num(value: Any, spec: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def mlflow_metrics(calibration: Mapping[str, Any]) -> dict[str, float]:
    """``calibration.<arch>.steps`` / ``.rise`` / ``.threshold`` / ``.void`` and
    ``calibration.void``."""
    out = {"calibration.void": float(calibration["void"])}
    for arch, a in calibration["architectures"].items():
        out[f"calibration.{arch}.steps"] = float(a["steps"])
        out[f"calibration.{arch}.void"] = float(a["void"])
        for key in ("rise", "threshold"):
            if a[key] is not None and math.isfinite(a[key]):
                out[f"calibration.{arch}.{key}"] = float(a[key])
    return out


def plot_calibration(calibration: Mapping[str, Any], path: str | Path) -> Any:
    """One panel per architecture: the seed-mean validation mIoU (± std) and without background
    against steps, the steps used dashed; written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    from isdm.utils.io import atomic_path

    archs = calibration["architectures"]
    fig = Figure(figsize=(4.2 * max(1, len(archs)), 3.6))
    axes = fig.subplots(1, max(1, len(archs)), squeeze=False)[0]
    for ax, (arch, a) in zip(axes, archs.items()):
        steps = np.array(a["curve"]["step"], float)
        for key, label, style in (("val_miou", "val mIoU", "-"),
                                  ("val_miou_nobg", "val mIoU without background", ":")):
            values = np.array(a["curve"][key], float).reshape(-1, steps.size)
            if steps.size:
                mean = np.nanmean(values, axis=0)
                std = np.nanstd(values, axis=0) if values.shape[0] > 1 else 0 * mean
                ax.plot(steps, mean, style, color="C0", label=label)
                ax.fill_between(steps, mean - std, mean + std, color="C0", alpha=0.15)
        ax.axvline(a["steps"], color="k", linestyle="--", linewidth=1)
        ax.set_title(f"{arch}: {a['steps']} steps ({a['reason']})", fontsize=10)
        ax.set_xlabel("optimiser steps")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return fig


def write_calibration(out: Path, calibration: Mapping[str, Any]) -> list[Path]:
    """``calibration.json`` (the tree of :func:`summarize`, strict JSON) and ``calibration.png``
    into ``out``; returns their paths."""
    from isdm.evaluation.store import _finite
    from isdm.utils.io import atomic_write_json

    paths = [out / "calibration.json", out / "calibration.png"]
    atomic_write_json(paths[0], _finite(dict(calibration)))
    plot_calibration(calibration, paths[1])
    return paths
