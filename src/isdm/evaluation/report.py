"""Evaluation outputs, all written atomically:

- ``metrics.json`` (the DVC metric): ONLY the headline metrics, flat, stable names across
  architectures, mixes and datasets (:func:`headline`; means over architectures):

  ``miou_real_only``       mean over architectures of the baseline's mIoU (mean over seeds)
  ``miou_with_synthetic``  the same for the main row: the first mix of ``evaluate.mixes`` that
                           uses synthetic images, with the first synthetic set
  ``miou_gain``            ``miou_with_synthetic - miou_real_only``
  ``miou_gain_lo``/``_hi`` its paired-bootstrap 95 % CI (:mod:`.stats`: the same seed and image
                           draws for every architecture in each replicate)
  ``miou_gain_<set>``      (+ ``_lo``, ``_hi``) the main mix with each further synthetic set
  ``miou_gain_<protocol>`` (+ ``_lo``, ``_hi``) the main mix with the first set trained with
                           each extra protocol of ``evaluate.protocols`` (``pretrain 0.5`` ->
                           ``miou_gain_pretrain_0.5``)
  ``label_fidelity``       mean over architectures of the first set's label fidelity (mIoU)
  ``calibrated_steps``     with ``evaluate.steps: auto``: the mean over architectures of their
                           calibrated steps (each architecture's in ``report.json``)
  ``real_only_defect_ratio`` mean over architectures of the defect pixels the real-only
                           segmenters predicted / those of the test masks (:func:`degeneracy`)
  ``comparison_void``      1 when every real-only segmenter predicts (almost) only background
                           (ratio < :data:`DEGENERATE_RATIO`): the gains are meaningless; else 0

  mIoU here includes the background, as in the tables; a key whose value is undefined (e.g. no
  synthetic mix) is left out.
- ``report.json`` (not a DVC metric): the summary tree: ``headline``, ``per_architecture``
  (the headline keys per architecture), ``budget`` (steps, batch, validation, per row: real and
  synthetic images, steps, images seen, derived epochs; a value that differs between
  architectures, as calibrated steps do, is ``{arch: value}``), ``architectures`` / ``overall``
  / ``comparisons`` (:mod:`.summary`), ``fidelity[set][arch]``, ``main_mix``, ``sets``,
  ``rows`` (``[mix, set, protocol]`` in report order), ``setup``, ``calibration``
  (:mod:`.calibration_report`: the rule, the steps per architecture and the evidence),
  ``degenerate`` (:func:`degeneracy`); undefined numbers are ``null``.
- ``cells.csv`` (dvc plots): one row per (architecture, row, seed).
- ``report.md`` (:mod:`.markdown`) and ``miou.png`` (:func:`plot_miou`).
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from isdm.evaluation.markdown import markdown_report, markdown_table
from isdm.evaluation.mixes import BASELINE, mix_label, parse_mix
from isdm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["HEADLINE_KEYS", "OUTPUTS", "claim_out", "build_summary", "headline",
           "per_architecture", "set_protocols", "write_reports",
           "mlflow_metrics", "write_cells_csv", "markdown_table", "plot_miou", "VERDICT_CODE",
           "degeneracy", "DEGENERATE_RATIO"]

HEADLINE_KEYS = ("miou_real_only", "miou_with_synthetic", "miou_gain", "miou_gain_lo",
                 "miou_gain_hi", "label_fidelity", "calibrated_steps")
# every file an evaluation writes into its --out (the ownership record lists them)
OUTPUTS = ("metrics.json", "report.json", "cells.csv", "report.md", "miou.png", "counts.npz",
           "calibration.json", "calibration.png")
# real-only segmenters predicting fewer defect pixels than this share of the test masks' are
# degenerate (:func:`degeneracy`)
DEGENERATE_RATIO = 0.05
# numeric encoding of verdicts for MLflow metrics
VERDICT_CODE = {"gain": 1, "no significant difference": 0, "loss": -1}


def claim_out(out: str | Path, write: bool = True) -> None:
    """Make ``out`` an evaluation's folder before any work (:mod:`isdm.utils.ownership`): an
    earlier evaluation's files there are replaced, any other file is refused (OutputExistsError
    naming them), and so is a folder inside a dataset split. ``write=False`` only checks."""
    import json

    from isdm.utils import ownership

    def legacy(root: Path) -> list[str]:  # an evaluation of an isdm without the record
        try:
            ours = {"headline", "setup"} <= set(json.loads((root / "report.json").read_text()))
        except (OSError, ValueError, TypeError):
            ours = False
        return [n for n in OUTPUTS if (root / n).is_file()] if ours else []

    output = ownership.claim(out, "evaluate", legacy=legacy)
    if write:
        ownership.make_folder(Path(out))
        output.record(OUTPUTS)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def main_mix(mixes: Sequence[str]) -> Optional[str]:
    """The headline's mix: the first of ``mixes`` that uses synthetic images (None if none)."""
    return next((m for m in mixes if parse_mix(m).uses_synthetic), None)


def set_protocols(summary: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{set: protocol codes of the main mix's rows of that set, the main protocol first}``
    (``["mix"]`` per set for a summary written before protocols existed)."""
    rows = summary.get("rows")
    if rows is None:
        return {name: ["mix"] for name in summary["sets"]}
    out: dict[str, list[str]] = {}
    for mix, name, protocol in rows:
        if mix == summary["main_mix"] and name:
            out.setdefault(name, []).append(protocol)
    return out


def _gain_keys(prefix: str, s: Mapping[str, Any]) -> dict[str, Any]:
    return {prefix: s["gain"], f"{prefix}_lo": s["gain_lo"], f"{prefix}_hi": s["gain_hi"]}


def _headline(stats: Mapping[str, Mapping[str, Any]], fidelity: Mapping[str, float],
              main: Optional[str], sets: Sequence[str],
              protocols: Mapping[str, Sequence[str]]) -> dict[str, float]:
    out = {"miou_real_only": stats[BASELINE]["miou_mean"]}
    if main and sets:
        first_protocols = protocols.get(sets[0], ["mix"])
        first = stats[mix_label(main, sets[0], first_protocols[0])]
        out.update(miou_with_synthetic=first["miou_mean"], miou_gain=first["gain"],
                   miou_gain_lo=first["gain_lo"], miou_gain_hi=first["gain_hi"])
        for name in sets[1:]:
            s = stats[mix_label(main, name, protocols.get(name, ["mix"])[0])]
            out.update(_gain_keys(f"miou_gain_{name}", s))
        for protocol in first_protocols[1:]:
            s = stats[mix_label(main, sets[0], protocol)]
            out.update(_gain_keys(f"miou_gain_{_key(protocol)}", s))
    if sets and sets[0] in fidelity:
        out["label_fidelity"] = fidelity[sets[0]]
    return {k: float(v) for k, v in out.items() if _numeric(v)}


def headline(summary: Mapping[str, Any]) -> dict[str, float]:
    """The headline metrics (``metrics.json``) of a summary (``report.json``'s tree): means over
    architectures, keys in the module docstring."""
    fid = {name: float(np.mean([m["miou"] for m in by_arch.values()]))
           for name, by_arch in summary["fidelity"].items()
           if by_arch and len(by_arch) == len(summary["architectures"])}
    out = _headline(summary["overall"], fid, summary["main_mix"], summary["sets"],
                    set_protocols(summary))
    calibration = summary.get("calibration") or {}
    if calibration.get("auto"):
        out["calibrated_steps"] = float(np.mean([a["steps"] for a in
                                                 calibration["architectures"].values()]))
    return out


def per_architecture(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The headline keys of each architecture (its own mIoUs, gain CI and fidelity)."""
    return {arch: _headline(stats, {n: f[arch]["miou"] for n, f in summary["fidelity"].items()
                                    if arch in f}, summary["main_mix"], summary["sets"],
                            set_protocols(summary))
            for arch, stats in summary["architectures"].items()}


def build_summary(cfg: Any, cells: Sequence[Mapping[str, Any]],
                  counts: Mapping[tuple[str, str], Sequence[np.ndarray]],
                  rows: Sequence[tuple[str, str, str]], sets: Sequence[str],
                  seeds: Sequence[int],
                  fidelity: Mapping[str, Mapping[str, Mapping[str, float]]],
                  setup: Mapping[str, str],
                  calibration: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The ``report.json`` tree of an evaluation (see the module docstring); ``calibration``:
    :func:`isdm.evaluation.calibration_report.summarize`'s tree (None: left out)."""
    from isdm.evaluation.summary import summarize_cells

    e = cfg.evaluate
    stats = summarize_cells(cells, counts, e.architectures, rows, sets, e.bootstrap, seeds[0])
    summary: dict[str, Any] = {
        "main_mix": main_mix([row[0] for row in rows]), "sets": list(sets),
        "rows": [list(row) for row in rows],
        "budget": _budget(e, cells, rows, seeds), **stats,
        "fidelity": {n: dict(f) for n, f in fidelity.items()}, "setup": dict(setup)}
    if calibration is not None:
        summary["calibration"] = dict(calibration)
    summary["headline"] = headline(summary)
    summary["per_architecture"] = per_architecture(summary)
    summary["degenerate"] = degeneracy({a: counts[(a, BASELINE)] for a in e.architectures
                                        if (a, BASELINE) in counts})
    summary["headline"].update(_void_keys(summary["degenerate"]))
    return summary


def degeneracy(baseline: Mapping[str, Sequence[np.ndarray]]) -> dict[str, Any]:
    """Do the real-only segmenters predict (almost) only background?

    For each architecture, ``ratio`` = defect pixels predicted / defect pixels in the test masks
    (classes 1..C-1, summed over seeds and images; counts ``[N, C, 3]`` = tp, fp, fn per seed).
    An architecture is degenerate when ``ratio`` < :data:`DEGENERATE_RATIO`; the comparison is
    ``void`` when every architecture is: each gain then compares segmenters that found
    nothing, whatever the synthetic data did.
    """
    ratios = {}
    for arch, seeds in baseline.items():
        c = np.stack([np.asarray(x) for x in seeds]).astype(np.float64)  # [S, N, C, 3]
        tp, fp, fn = (c[..., 1:, k].sum() for k in range(3))
        ratios[arch] = float((tp + fp) / (tp + fn)) if tp + fn > 0 else float("nan")
    archs = [a for a, r in ratios.items() if r < DEGENERATE_RATIO]
    return {"threshold": DEGENERATE_RATIO, "defect_ratio": ratios, "architectures": archs,
            "void": bool(ratios) and len(archs) == len(ratios)}


def _void_keys(degenerate: Mapping[str, Any]) -> dict[str, float]:
    """``real_only_defect_ratio`` (mean over architectures) and ``comparison_void`` (1 / 0)
    for metrics.json and MLflow."""
    ratios = [r for r in degenerate["defect_ratio"].values() if math.isfinite(r)]
    out = {"comparison_void": float(degenerate["void"])}
    if ratios:
        out["real_only_defect_ratio"] = float(np.mean(ratios))
    return out


def _per_arch(cells: Sequence[Mapping[str, Any]], value: Any) -> Any:
    """``value(cell)`` of the cells (one per architecture), or ``{arch: value}`` when the
    architectures differ (calibrated steps)."""
    by_arch = {c["arch"]: value(c) for c in cells}
    return next(iter(by_arch.values())) if len(set(by_arch.values())) == 1 else by_arch


def _budget(e: Any, cells: Sequence[Mapping[str, Any]], rows: Sequence[tuple[str, str, str]],
            seeds: Sequence[int]) -> dict[str, Any]:
    per_row = {}
    for mix, name, protocol in rows:
        label = mix_label(mix, name, protocol)
        mine = [c for c in cells if c["mix"] == label]
        cell = mine[0]
        n = cell["n_real"] + cell["n_fake"]
        per_row[label] = {
            "mix": mix, "set": name, "protocol": protocol, "n_real": cell["n_real"],
            "n_synthetic": cell["n_fake"],
            "steps": _per_arch(mine, lambda c: c["steps"]),
            "images_seen": _per_arch(mine, lambda c: c["images_seen"]),
            "epochs": _per_arch(mine, lambda c: c["images_seen"] / n)}
    steps = {c["arch"]: c["steps"] for c in cells}
    return {"steps": e.steps, "steps_per_architecture": steps, "batch_size": e.batch_size,
            "val_every": e.val_every,
            "images_per_cell": _per_arch(cells, lambda c: c["steps"] * e.batch_size),
            "precision": e.precision,
            "architectures": list(e.architectures), "seeds": list(seeds), "cells": len(cells),
            "train_seconds_total": float(sum(c["train_seconds"] for c in cells)),
            "rows": per_row}


def _json_safe(tree: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python numbers."""
    if isinstance(tree, Mapping):
        return {str(k): _json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_json_safe(v) for v in tree]
    if isinstance(tree, (float, np.floating)):
        return float(tree) if math.isfinite(tree) else None
    if isinstance(tree, np.integer):
        return int(tree)
    return tree


def write_reports(out: Path, summary: Mapping[str, Any],
                  cells: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``metrics.json``, ``report.json``, ``cells.csv``, ``report.md``, ``miou.png`` into
    ``out``; returns their paths."""
    paths = [out / n for n in ("metrics.json", "report.json", "cells.csv", "report.md", "miou.png")]
    atomic_write_json(paths[0], summary["headline"])
    atomic_write_json(paths[1], _json_safe(summary))
    write_cells_csv(paths[2], cells)
    atomic_write_text(paths[3], markdown_report(summary))
    plot_miou(summary["architectures"], paths[4])
    return paths


def _key(label: str) -> str:
    """A row label as an MLflow metric name part: ``RALLFALL[curated]`` -> ``RALLFALL_curated``."""
    return re.sub(r"[^\w.\-]", "_", label).rstrip("_")


def mlflow_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Everything numeric of a summary, flat: the headline keys, ``<arch>.<headline key>``,
    ``<arch|mean>.<row>.<stat>``, ``<arch|mean>.<mix>.<set>_vs_<reference>.<stat>``; verdicts
    as ``significant`` = +1 / 0 / -1."""
    from isdm.evaluation.calibration_report import mlflow_metrics as calibration_metrics

    out = dict(summary["headline"])
    if summary.get("calibration"):
        out.update(calibration_metrics(summary["calibration"]))
    for arch, keys in summary["per_architecture"].items():
        out.update({f"{arch}.{k}": v for k, v in keys.items()})
    tables = {**summary["architectures"], "mean": summary["overall"]}
    leaves = [(f"{arch}.{_key(label)}", s) for arch, by_label in tables.items()
              for label, s in by_label.items()]
    leaves += [(f"{c['arch']}.{_key(mix_label(c['mix'], '', c.get('protocol', 'mix')))}."
                f"{c['set']}_vs_{c['reference']}", c) for c in summary["comparisons"]]
    for prefix, stats in leaves:
        out.update({f"{prefix}.{k}": float(v) for k, v in stats.items() if _numeric(v)})
        for suffix in ("", "_nobg"):
            if f"verdict{suffix}" in stats:
                out[f"{prefix}.significant{suffix}"] = float(VERDICT_CODE[stats[f"verdict{suffix}"]])
    return out


def write_cells_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per (architecture, row, seed); columns are the union of the rows' keys."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def plot_miou(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path,
              keys: Sequence[str] = ("miou", "miou_nobg")) -> Any:
    """Grouped bar charts, one panel per metric in ``keys`` (one group per architecture, one bar
    per row) of ``<key>_mean`` with ``<key>_std`` error bars, from ``arch -> row -> stats``;
    written to ``path`` (PNG) and returned as a matplotlib Figure (object style: no pyplot
    state to close)."""
    from matplotlib.figure import Figure

    archs = list(summary)
    mixes: list[str] = []
    for a in archs:
        mixes += [m for m in summary[a] if m not in mixes]
    width = 0.8 / max(len(mixes), 1)
    panel_w = max(4.0, 0.5 * len(archs) * max(1, len(mixes)))
    fig = Figure(figsize=(panel_w * len(keys), 4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    titles = {"miou": "mIoU (background included)", "miou_nobg": "mIoU without background"}
    for ax, key in zip(axes[0], keys):
        for j, mix in enumerate(mixes):
            xs = [i + (j - (len(mixes) - 1) / 2) * width for i in range(len(archs))]
            means = [summary[a].get(mix, {}).get(f"{key}_mean", float("nan")) for a in archs]
            stds = [summary[a].get(mix, {}).get(f"{key}_std", 0.0) for a in archs]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=mix)
        ax.set_xticks(range(len(archs)), archs)
        ax.set_title(f"real test {titles.get(key, key)}", fontsize=10)
        ax.set_ylabel("mean ± std over seeds")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(title="mix", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return fig
