"""Statistics of an evaluation's cells: per (architecture, row) over seeds, the gains with their
paired-bootstrap CIs, and their means over architectures.

A row is a mix with its synthetic set and training protocol: ``RALLF000`` (no synthetic
images), ``RALLFALL[curated]`` or ``RALLFALL[curated] pretrain 0.5``
(:func:`isdm.evaluation.mixes.mix_label`); ``sets`` lists the synthetic sets in the order given,
the first being the reference. Inputs: ``cells`` (one dict per
(architecture, row, seed) with the keys of :data:`SUMMARY_KEYS`, ``arch`` and ``mix`` = the row
label) and ``counts[(arch, label)]`` = the seeds' test counts ``[S, N, C, 3]`` (seeds in
``evaluate.seeds`` order).

The result, a plain dict (it is ``report.json`` without the setup):

- ``architectures[arch][label]``: ``<metric>_mean`` / ``<metric>_std`` over seeds, ``n_seeds``;
  for every row but the baseline ``gain`` / ``gain_lo`` / ``gain_hi`` / ``verdict`` (mIoU,
  background included) and the same with ``_nobg`` (defect classes), against ``RALLF000``;
- ``overall[label]``: the mean over architectures of ``miou_mean`` and ``miou_nobg_mean``, and
  the gain over the baseline of the mean over architectures with its CI
  (:func:`isdm.evaluation.stats.paired_bootstrap` on ``[A, S, N, C, 3]``);
- ``comparisons``: every row of a further set against the same mix of the first set
  (``RALLFALL[curated]`` vs ``RALLFALL[synthetic]``: the effect of the set itself), per
  architecture and for the mean over architectures (``arch`` = ``"mean"``), same bootstrap; a
  set's main row against the first set's main row, an extra protocol's row against the first
  set's row of that protocol (:func:`reference_row`); ``protocol`` / ``reference_protocol``
  name both rows' protocols.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from isdm.evaluation.mixes import BASELINE, mix_label
from isdm.evaluation.stats import mean_std, paired_bootstrap

__all__ = ["SUMMARY_KEYS", "MEAN", "summarize_cells", "gain_stats", "reference_row"]

# metrics summarised as mean/std over seeds in the tables and report.json
SUMMARY_KEYS = ("miou", "miou_nobg", "micro_iou", "dice", "dice_nobg", "pixel_acc")
MEAN = "mean"  # the ``arch`` of a comparison of the mean over architectures


def gain_stats(base: np.ndarray, other: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """``gain``, ``gain_lo``, ``gain_hi``, ``verdict`` and their ``_nobg`` twins of ``other``
    over ``base`` (counts ``[S, N, C, 3]`` or ``[A, S, N, C, 3]``)."""
    out: dict[str, Any] = {}
    for suffix, background in (("", True), ("_nobg", False)):
        b = paired_bootstrap(base, other, n_boot=n_boot, seed=seed, background=background)
        out.update({f"gain{suffix}": b.gain, f"gain{suffix}_lo": b.lo,
                    f"gain{suffix}_hi": b.hi, f"verdict{suffix}": b.verdict})
    return out


def reference_row(rows: Sequence[tuple[str, str, str]], row: tuple[str, str, str],
                  first: str) -> Optional[tuple[str, str, str]]:
    """The row of the set ``first`` that ``row`` (a further set's) is compared with: the same
    mix, and the first set's main row for a set's main (first) row, else the first set's row
    of the same protocol (None when there is none)."""
    mix, name, protocol = row
    mine = [r for r in rows if r[0] == mix and r[1] == name]
    theirs = [r for r in rows if r[0] == mix and r[1] == first]
    if not theirs:
        return None
    if row == mine[0]:
        return theirs[0]
    return next((r for r in theirs if r[2] == protocol), None)


def summarize_cells(cells: Sequence[Mapping[str, Any]],
                    counts: Mapping[tuple[str, str], Sequence[np.ndarray]],
                    archs: Sequence[str], rows: Sequence[tuple[str, str, str]],
                    sets: Sequence[str], n_boot: int, boot_seed: int) -> dict[str, Any]:
    """``{"architectures", "overall", "comparisons"}`` (see the module docstring).

    Args:
        rows: ``(mix, set, protocol)`` in report order, the baseline ``(RALLF000, "", "mix")``
            first (:func:`isdm.evaluation.run.report_rows`).
        sets: the synthetic set names in the order given (the first is the reference).
    """
    labels = [mix_label(*row) for row in rows]
    stacked = {label: np.stack([np.stack(counts[(a, label)]) for a in archs]) for label in labels}
    per_arch: dict[str, dict[str, dict[str, Any]]] = {}
    for i, arch in enumerate(archs):
        per_arch[arch] = {}
        for label in labels:
            arch_cells = [c for c in cells if c["arch"] == arch and c["mix"] == label]
            stats: dict[str, Any] = {"n_seeds": len(arch_cells)}
            for key in SUMMARY_KEYS:
                stats[f"{key}_mean"], stats[f"{key}_std"] = mean_std([c[key] for c in arch_cells])
            if label != BASELINE:
                stats.update(gain_stats(stacked[BASELINE][i], stacked[label][i], n_boot, boot_seed))
            per_arch[arch][label] = stats
    overall: dict[str, dict[str, Any]] = {}
    for label in labels:
        stats = {"n_architectures": len(archs)}
        for key in ("miou", "miou_nobg"):
            stats[f"{key}_mean"] = float(np.mean([per_arch[a][label][f"{key}_mean"] for a in archs]))
        if label != BASELINE:
            stats.update(gain_stats(stacked[BASELINE], stacked[label], n_boot, boot_seed))
        overall[label] = stats
    comparisons = []
    for row in rows:
        ref_row = reference_row(rows, row, sets[0]) if row[1] and row[1] != sets[0] else None
        if ref_row is None:
            continue
        label, ref = mix_label(*row), mix_label(*ref_row)
        for i, arch in [*enumerate(archs), (None, MEAN)]:
            base = stacked[ref] if i is None else stacked[ref][i]
            other = stacked[label] if i is None else stacked[label][i]
            comparisons.append({"arch": arch, "mix": row[0], "set": row[1],
                                "reference": sets[0], "protocol": row[2],
                                "reference_protocol": ref_row[2],
                                **gain_stats(base, other, n_boot, boot_seed)})
    return {"architectures": per_arch, "overall": overall, "comparisons": comparisons}
