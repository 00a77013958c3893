"""Evaluation outputs: ``metrics.json`` (dvc metrics), ``cells.csv`` (dvc plots), ``report.md``
and ``miou.png``, all written atomically.

``summary`` (built by :mod:`isdm.evaluation.run`) maps ``arch -> mix -> stats`` with keys
``<metric>_mean`` / ``<metric>_std`` over seeds, ``n_seeds``, and for every mix but the baseline
``gain``, ``gain_lo``, ``gain_hi`` (mIoU, background included), ``gain_nobg*`` (defect classes
only) and ``verdict`` / ``verdict_nobg`` strings.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from isdm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["metrics_json", "write_cells_csv", "markdown_report", "plot_miou", "VERDICT_CODE"]

# numeric encoding of verdicts for metrics.json (whose leaves must stay numeric)
VERDICT_CODE = {"gain": 1, "no significant difference": 0, "loss": -1}


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_json(summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
                 fidelity: Mapping[str, Mapping[str, float]], extra: Mapping[str, float]) -> dict:
    """A flat, numeric-leaved tree: ``{arch: {mix: {...}}, "fidelity": {arch: {...}},
    "summary": {...}}``. NaN values (undefined metrics) are left out; verdicts become
    ``significant`` = +1 (gain) / 0 (no significant difference) / -1 (loss)."""
    out: dict[str, Any] = {}
    for arch, mixes in summary.items():
        out[arch] = {}
        for mix, stats in mixes.items():
            leaf = {k: float(v) for k, v in stats.items() if _numeric(v)}
            if "verdict" in stats:
                leaf["significant"] = VERDICT_CODE[stats["verdict"]]
            if "verdict_nobg" in stats:
                leaf["significant_nobg"] = VERDICT_CODE[stats["verdict_nobg"]]
            out[arch][mix] = leaf
    if fidelity:
        out["fidelity"] = {a: {k: float(v) for k, v in m.items() if _numeric(v)} for a, m in fidelity.items()}
    out["summary"] = {k: float(v) for k, v in extra.items() if _numeric(v)}
    return out


def write_metrics_json(path: str | Path, tree: Mapping[str, Any]) -> None:
    atomic_write_json(path, tree)


def write_cells_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per (architecture, mix, seed); columns are the union of the rows' keys."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _pm(stats: Mapping[str, Any], key: str) -> str:
    mean, std = stats.get(f"{key}_mean", float("nan")), stats.get(f"{key}_std", float("nan"))
    return "n/a" if not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def _gain(stats: Mapping[str, Any], suffix: str = "") -> str:
    if f"gain{suffix}" not in stats:
        return "baseline"
    g, lo, hi = (stats[f"gain{suffix}{k}"] for k in ("", "_lo", "_hi"))
    return "n/a" if not math.isfinite(g) else f"{g:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def markdown_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Architecture x mix: mean ± std over seeds of mIoU (with and without background), pooled
    micro IoU, the gain over RALLF000 with its paired-bootstrap 95 % CI, and the verdict."""
    lines = ["| architecture | mix | seeds | mIoU | mIoU (no bg) | micro IoU | Dice | "
             "gain mIoU [95% CI] | verdict | gain mIoU no bg [95% CI] | verdict (no bg) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, mixes in summary.items():
        for mix, s in mixes.items():
            lines.append(
                f"| {arch} | {mix} | {int(s.get('n_seeds', 0))} | {_pm(s, 'miou')} | "
                f"{_pm(s, 'miou_nobg')} | {_pm(s, 'micro_iou')} | {_pm(s, 'dice')} | {_gain(s)} | "
                f"{s.get('verdict', '-')} | {_gain(s, '_nobg')} | {s.get('verdict_nobg', '-')} |")
    return "\n".join(lines)


def fidelity_table(fidelity: Mapping[str, Mapping[str, float]]) -> str:
    lines = ["| architecture | synthetic images | mIoU | mIoU (no bg) | micro IoU |", "|---|---|---|---|---|"]
    for arch, m in fidelity.items():
        lines.append(f"| {arch} | {int(m.get('n_images', 0))} | {m.get('miou', float('nan')):.4f} | "
                     f"{m.get('miou_nobg', float('nan')):.4f} | {m.get('micro_iou', float('nan')):.4f} |")
    return "\n".join(lines)


def markdown_report(summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    fidelity: Mapping[str, Mapping[str, float]], meta: Mapping[str, Any]) -> str:
    """The full ``report.md``: setup, the results table, label fidelity and metric definitions."""
    setup = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    parts = ["# isdm evaluate: does synthetic data raise the segmenter's mIoU?", "", "## Setup", setup]
    if summary:
        parts += ["", "## Real test set (mean ± std over seeds)", "", markdown_table(summary)]
    if fidelity:
        parts += ["", "## Label fidelity (real-only model, first seed, on the synthetic samples "
                  "vs their conditioning masks)", "", fidelity_table(fidelity)]
    parts += ["", "## Definitions", "",
              "- IoU_c = TP_c / (TP_c + FP_c + FN_c) with counts summed over ALL test images; "
              "`ignore_index` pixels excluded.",
              "- mIoU = mean of IoU_c over classes present in prediction or ground truth (a class "
              "absent from both over the whole test set is undefined and excluded); "
              "'no bg' drops class 0 (binary data: the defect-class IoU).",
              "- micro IoU = sum_c TP_c / sum_c (TP_c + FP_c + FN_c), background included "
              "(the original ISDM tool's pooled `dataset_iou`).",
              "- gain = mean over seeds of mIoU(mix) - mIoU(RALLF000); 95% CI from a paired "
              "bootstrap over seeds and test images (same draws for both mixes). "
              "Verdict 'gain' / 'loss' only when the CI excludes 0, else 'no significant difference'.",
              "- std is the sample standard deviation over seeds (ddof = 1).", ""]
    return "\n".join(parts)


def plot_miou(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path,
              keys: Sequence[str] = ("miou", "miou_nobg")) -> Any:
    """Grouped bar charts, one panel per metric in ``keys`` (one group per architecture, one bar
    per mix) of ``<key>_mean`` with ``<key>_std`` error bars; written to ``path`` (PNG) and
    returned as a matplotlib Figure (object style: no pyplot state to close)."""
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
