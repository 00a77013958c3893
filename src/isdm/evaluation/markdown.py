"""``report.md`` of an evaluation, from its summary tree (:func:`isdm.evaluation.report.build_summary`):
setup, budget per row, the mean over architectures, the per-architecture table, synthetic sets
compared, label fidelity, and the definitions of every number."""

from __future__ import annotations

import math
from typing import Any, Mapping

from isdm.evaluation.mixes import mix_label

__all__ = ["markdown_report", "markdown_table", "overall_table", "budget_table",
           "comparison_table", "fidelity_table", "verdict"]


def _pm(stats: Mapping[str, Any], key: str) -> str:
    mean, std = stats.get(f"{key}_mean", float("nan")), stats.get(f"{key}_std", float("nan"))
    return "n/a" if not math.isfinite(mean) else f"{mean:.4f} ± {std:.4f}"


def _mean(stats: Mapping[str, Any], key: str) -> str:
    value = stats.get(f"{key}_mean", float("nan"))
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"


def _gain(stats: Mapping[str, Any], suffix: str = "") -> str:
    if f"gain{suffix}" not in stats:
        return "baseline"
    g, lo, hi = (stats[f"gain{suffix}{k}"] for k in ("", "_lo", "_hi"))
    return "n/a" if not math.isfinite(g) else f"{g:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """Architecture x row: mean ± std over seeds of mIoU (with and without background), pooled
    micro IoU, Dice, the gain over RALLF000 with its paired-bootstrap 95 % CI, and the verdict."""
    lines = ["| architecture | mix | seeds | mIoU | mIoU (no bg) | micro IoU | Dice | "
             "gain mIoU [95% CI] | verdict | gain mIoU no bg [95% CI] | verdict (no bg) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, rows in summary["architectures"].items():
        for label, s in rows.items():
            lines.append(
                f"| {arch} | {label} | {int(s.get('n_seeds', 0))} | {_pm(s, 'miou')} | "
                f"{_pm(s, 'miou_nobg')} | {_pm(s, 'micro_iou')} | {_pm(s, 'dice')} | {_gain(s)} | "
                f"{s.get('verdict', '-')} | {_gain(s, '_nobg')} | {s.get('verdict_nobg', '-')} |")
    return "\n".join(lines)


def overall_table(summary: Mapping[str, Any]) -> str:
    """Per row, the mean over architectures and its gain over RALLF000 (CI: same draws for
    every architecture)."""
    lines = ["| mix | mIoU | mIoU (no bg) | gain mIoU [95% CI] | verdict | "
             "gain mIoU no bg [95% CI] | verdict (no bg) |", "|---|---|---|---|---|---|---|"]
    for label, s in summary["overall"].items():
        lines.append(f"| {label} | {_mean(s, 'miou')} | {_mean(s, 'miou_nobg')} | {_gain(s)} | "
                     f"{s.get('verdict', '-')} | {_gain(s, '_nobg')} | {s.get('verdict_nobg', '-')} |")
    return "\n".join(lines)


def _each(value: Any, spec: str = "") -> str:
    """A budget value, or ``FPN 400, UnetPlusPlus 600`` when architectures differ."""
    if isinstance(value, Mapping):
        return ", ".join(f"{arch} {format(v, spec)}" for arch, v in value.items())
    return format(value, spec)


def budget_table(budget: Mapping[str, Any]) -> str:
    lines = ["| mix | real images | synthetic images | steps | images seen | epochs (derived) |",
             "|---|---|---|---|---|---|"]
    for label, b in budget["rows"].items():
        lines.append(f"| {label} | {b['n_real']} | {b['n_synthetic']} | {_each(b['steps'])} | "
                     f"{_each(b['images_seen'])} | {_each(b['epochs'], '.1f')} |")
    return "\n".join(lines)


def comparison_table(comparisons: list[Mapping[str, Any]]) -> str:
    lines = ["| architecture | mix | set vs reference | gain mIoU [95% CI] | verdict | "
             "gain mIoU no bg [95% CI] | verdict (no bg) |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        mine, theirs = c.get("protocol", "mix"), c.get("reference_protocol", "mix")
        mix, name, ref = c["mix"], c["set"], c["reference"]
        if mine == theirs:  # one protocol: it belongs to the mix column
            mix = mix_label(mix, "", mine)
        else:  # each set trained its own way (tune's final check): say how
            name, ref = mix_label(name, "", mine), mix_label(ref, "", theirs)
        lines.append(f"| {c['arch']} | {mix} | {name} vs {ref} | {_gain(c)} | "
                     f"{c['verdict']} | {_gain(c, '_nobg')} | {c['verdict_nobg']} |")
    return "\n".join(lines)


def fidelity_table(fidelity: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Label fidelity per synthetic set and architecture."""
    lines = ["| set | architecture | synthetic images | mIoU | mIoU (no bg) | micro IoU |",
             "|---|---|---|---|---|---|"]
    for name, by_arch in fidelity.items():
        for arch, m in by_arch.items():
            lines.append(f"| {name} | {arch} | {int(m.get('n_images', 0))} | "
                         f"{m.get('miou', float('nan')):.4f} | {m.get('miou_nobg', float('nan')):.4f} | "
                         f"{m.get('micro_iou', float('nan')):.4f} |")
    return "\n".join(lines)


_DEFINITIONS = [
    "- Budget: every cell of an architecture trains for the same number of optimiser steps of "
    "the same batch size, whatever the size of its mix (with `evaluate.steps: auto` the steps "
    "its real-only baseline's validation curve calibrated); an epoch (one pass over the mix's "
    "images) is derived: images seen / training images. The weights of the best validation (real "
    "validation split) are tested.",
    "- IoU_c = TP_c / (TP_c + FP_c + FN_c) with counts summed over ALL test images; "
    "`ignore_index` pixels excluded (in training losses too).",
    "- mIoU = mean of IoU_c over classes present in prediction or ground truth (a class "
    "absent from both over the whole test set is undefined and excluded); "
    "'no bg' drops class 0 (binary data: the defect-class IoU).",
    "- micro IoU = sum_c TP_c / sum_c (TP_c + FP_c + FN_c), background included "
    "(the original ISDM tool's pooled `dataset_iou`).",
    "- gain = mean over seeds of mIoU(mix) - mIoU(RALLF000); 95% CI from a paired "
    "bootstrap over seeds and test images (same draws for both mixes). "
    "Verdict 'gain' / 'loss' only when the CI excludes 0, else 'no significant difference'.",
    "- Mean over architectures: the mean of the architectures' gains; each bootstrap replicate "
    "applies ONE draw of seeds and test images to every architecture (they share the seeds' "
    "validation splits and mix draws, and the test images), and the CI is the percentile "
    "interval of the replicates' means.",
    "- set vs reference: the same mix trained with another synthetic set against the first "
    "set (same seeds, real images and validation split), same bootstrap.",
    "- std is the sample standard deviation over seeds (ddof = 1).",
]


_PROTOCOLS = (
    "- Training protocol (a row label's suffix; none = `mix`): `mix` draws batches from the "
    "real and synthetic images concatenated; `share q` fills q of every batch with synthetic "
    "images from their own seeded stream and the rest with real ones; `pretrain p` trains the "
    "first p of the steps on synthetic images only, then real only. Every row trains the same "
    "steps and is paired with the same real-only baseline.")


def verdict(summary: Mapping[str, Any]) -> str:
    """A warning when real-only segmenters predict (almost) only background ('' otherwise):
    the comparison is void when all of them do (:func:`isdm.evaluation.report.degeneracy`)."""
    d = summary.get("degenerate") or {}
    if not d.get("architectures"):
        return ""
    ratios = ", ".join(f"{a} {d['defect_ratio'][a]:.1%}" for a in d["architectures"])
    who = "every real-only segmenter" if d["void"] else "the real-only " + \
        ", ".join(d["architectures"])
    head = ("**The comparison is void**: " if d["void"] else "**Warning**: ")
    return (f"{head}{who} predicts (almost) only background: defect pixels predicted / in the "
            f"test masks = {ratios} (below {d['threshold']:.0%}). A gain over such a baseline "
            "compares segmenters that found no defect, whatever the synthetic data did. Train "
            "them longer (evaluate.steps), check the masks (`isdm data check`), or crop "
            "around defects (data.crop).")


def markdown_report(summary: Mapping[str, Any]) -> str:
    """The full ``report.md``."""
    setup = "\n".join(f"- {k}: {v}" for k, v in summary["setup"].items())
    parts = ["# isdm evaluate: does synthetic data raise the segmenter's mIoU?", ""]
    if verdict(summary):
        parts += ["## Verdict", "", verdict(summary), ""]
    parts += ["## Setup", setup, "", "## Budget per mix", "", budget_table(summary["budget"])]
    if summary.get("calibration"):
        from isdm.evaluation.calibration_report import markdown_section

        parts += ["", "## Steps: is the real-only baseline trained?", "",
                  markdown_section(summary["calibration"])]
    if summary["architectures"]:
        parts += ["", "## Mean over architectures (real test set)", "", overall_table(summary),
                  "", "## Real test set per architecture (mean ± std over seeds)", "",
                  markdown_table(summary)]
    if summary["comparisons"]:
        parts += ["", "## Synthetic sets compared (same mix, further set vs the first)", "",
                  comparison_table(summary["comparisons"])]
    if any(summary["fidelity"].values()):
        parts += ["", "## Label fidelity (real-only model, first seed, on the synthetic samples "
                  "vs their conditioning masks)", "", fidelity_table(summary["fidelity"])]
    protocols = any(row[2] != "mix" for row in summary.get("rows", []))
    parts += ["", "## Definitions", "", *_DEFINITIONS, *([_PROTOCOLS] if protocols else []), ""]
    return "\n".join(parts)
