"""``isdm labels``: the label-efficiency curve from its points' reports, and its outputs.

:func:`run_labels` reads ``<points>/<fraction>`` for every ``labels.fractions`` and ``1.0``
(:func:`isdm.evaluation.labels.load_point`), computes each point's real-only and mixed mIoU,
the real images the synthetic data is worth and their bootstrap intervals
(:mod:`isdm.evaluation.labels`), and writes into ``--out``:

- ``metrics.json``: flat, finite numbers only. The headline is the SMALLEST point (the
  label-scarce case the question is about): ``worth_real_images`` with ``_lo`` / ``_hi``,
  ``worth_status`` (0 interpolated, +1 above the real-only curve: the value is a lower bound,
  -1 below it: an upper bound), ``n_labelled``, ``miou_real_only``, ``miou_with_synthetic``;
  per point ``<key>_p<percent>`` (``worth_p25``, ``miou_real_only_p100``, ...). An open
  interval end (replicates above / below the curve) is written as its bound.
- ``summary.json``: the same per point with the statuses, open ends and the reading;
- ``curve.csv`` (one row per point), ``curve.png`` (both curves with their intervals, the
  worth of each point as an arrow), ``report.md`` (the table and the reading in words).

One MLflow run (action ``labels``) gets the metrics and the files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from isdm.config import Config
from isdm.evaluation import labels as lab
from isdm.utils.io import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["run_labels", "curve_summary", "flat_metrics", "reading", "curve_markdown",
           "plot_curve", "STATUS_CODE"]

STATUS_CODE = {"interpolated": 0, "above": 1, "below": -1}


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}"


def _bounded(value: float, ns: Sequence[int], n: int) -> float:
    """``+inf`` -> ``ns[-1] - n`` (at least), ``-inf`` -> ``ns[0] - n`` (at most)."""
    if value == math.inf:
        return float(ns[-1] - n)
    if value == -math.inf:
        return float(ns[0] - n)
    return value


def curve_summary(points: Sequence[lab.Point], n_boot: int, seed: int) -> dict[str, Any]:
    """The curve's numbers per point (see the module docstring), the first point the headline."""
    points = lab.check_points(points)
    ns = [p.n for p in points]
    mious = [lab.point_mious(p) for p in points]
    real = [r for r, _ in mious]
    reps = lab.curve_bootstrap(points, n_boot, seed)
    rows = []
    for j, (p, (r, m)) in enumerate(zip(points, mious)):
        w = lab.worth(ns, real, m, j)
        lo, hi = lab.interval(reps["worth"][:, j]) if n_boot else (math.nan, math.nan)
        r_lo, r_hi = lab.interval(reps["real"][:, j]) if n_boot else (math.nan, math.nan)
        m_lo, m_hi = lab.interval(reps["mixed"][:, j]) if n_boot else (math.nan, math.nan)
        rows.append({"fraction": p.fraction, "percent": _pct(p.fraction), "n": p.n,
                     "miou_real_only": r, "miou_real_only_lo": r_lo, "miou_real_only_hi": r_hi,
                     "miou_with_synthetic": m, "miou_with_synthetic_lo": m_lo,
                     "miou_with_synthetic_hi": m_hi, "status": lab.status(w),
                     "worth": _bounded(w, ns, p.n), "worth_lo": _bounded(lo, ns, p.n),
                     "worth_hi": _bounded(hi, ns, p.n), "worth_lo_status": lab.status(lo),
                     "worth_hi_status": lab.status(hi)})
    out = {"label": points[0].label, "architectures": list(points[0].archs),
           "seeds": list(points[0].seeds), "bootstrap": n_boot, "points": rows}
    out["reading"] = [reading(row, ns) for row in rows]
    return out


def _fmt(value: float, status: str) -> str:
    """A worth: ``+6.5``, or a bound: ``> +0.0`` (above the curve), ``< -10.0`` (below it)."""
    return {"above": "> ", "below": "< "}.get(status, "") + f"{value:+.1f}"


def _ci(row: dict[str, Any]) -> str:
    if row["worth_lo_status"] == "undefined":
        return "no interval"
    return (f"95 % CI [{_fmt(row['worth_lo'], row['worth_lo_status'])}, "
            f"{_fmt(row['worth_hi'], row['worth_hi_status'])}]")


def reading(row: dict[str, Any], ns: Sequence[int]) -> str:
    """One point's reading in words (the ``reading`` of summary.json and report.md)."""
    at = (f"At {row['n']} labelled images ({row['percent']} %), real + synthetic mIoU "
          f"{row['miou_with_synthetic']:.4f} vs real-only {row['miou_real_only']:.4f}: ")
    w, s = row["worth"], row["status"]
    if s == "above":
        return (at + f"the mixed mIoU is above the whole real-only curve, so the synthetic "
                f"data is worth MORE than {w:.0f} real images (a lower bound: only a curve "
                f"extended past {ns[-1]} real images could say how many more; {_ci(row)}).")
    if s == "below":
        return (at + f"the synthetic data does not help: the mixed mIoU is below the real-only "
                f"mIoU of the smallest point ({ns[0]} images), so it is worth fewer than "
                f"{w:+.0f} real images (zero or negative; {_ci(row)}).")
    if s == "undefined":
        return at + "the worth is undefined (an mIoU is undefined)."
    if w <= 0:
        return (at + f"the synthetic data does not help: it is worth {w:+.1f} real images "
                f"(zero or negative: the real-only curve reaches the mixed mIoU at "
                f"{row['n'] + w:.1f} images; {_ci(row)}).")
    sure = row["worth_lo_status"] == "above" or (row["worth_lo_status"] == "interpolated"
                                                  and row["worth_lo"] > 0)
    return (at + f"the synthetic data is worth {w:.1f} real images ({_ci(row)}"
            f"{'' if sure else '; the interval includes 0 or less, so not significant'}).")


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """``metrics.json`` (see the module docstring): finite numbers only."""
    out: dict[str, float] = {}
    for i, row in enumerate(summary["points"]):
        values = {"n_labelled": row["n"], "miou_real_only": row["miou_real_only"],
                  "miou_with_synthetic": row["miou_with_synthetic"],
                  "worth": row["worth"], "worth_lo": row["worth_lo"], "worth_hi": row["worth_hi"],
                  "worth_status": STATUS_CODE.get(row["status"], math.nan)}
        if i == 0:  # the headline: the smallest point
            out.update({_HEADLINE.get(k, k): float(v) for k, v in values.items()})
        tag = "_p" + row["percent"].replace(".", "_")
        out.update({f"{k}{tag}": float(v) for k, v in values.items()})
    return {k: v for k, v in out.items() if math.isfinite(v)}


_HEADLINE = {"worth": "worth_real_images", "worth_lo": "worth_real_images_lo",
             "worth_hi": "worth_real_images_hi"}


def curve_markdown(summary: dict[str, Any]) -> str:
    """``report.md``: the table, the reading and how each number is defined."""
    lines = ["# Label efficiency: how many real images is the synthetic data worth?", "",
             f"Rows: `RALLF000` (real only) and `{summary['label']}`, mean over architectures "
             f"{', '.join(summary['architectures'])} and seeds {summary['seeds']}; the interval: "
             f"{summary['bootstrap']} paired bootstrap replicates over seeds and test images.", "",
             "| labelled images | % | real-only mIoU [95% CI] | real + synthetic mIoU [95% CI] | "
             "worth (real images) [95% CI] | status |", "|---|---|---|---|---|---|"]
    for r in summary["points"]:
        lines.append(f"| {r['n']} | {r['percent']} | {r['miou_real_only']:.4f} "
                     f"[{r['miou_real_only_lo']:.4f}, {r['miou_real_only_hi']:.4f}] | "
                     f"{r['miou_with_synthetic']:.4f} [{r['miou_with_synthetic_lo']:.4f}, "
                     f"{r['miou_with_synthetic_hi']:.4f}] | {_fmt(r['worth'], r['status'])} "
                     f"({_ci(r)}) | {r['status']} |")
    lines += ["", "## Reading", "", *[f"- {s}" for s in summary["reading"]], "",
              "## Definitions", "", *_DEFINITIONS, ""]
    return "\n".join(lines)


_DEFINITIONS = [
    "- A point: a nested, seeded subset of the real train split (`isdm data subset`) with an "
    "SDM trained, finetuned and sampled on it alone; labelled images = its train split "
    "(validation carved from it); every point is tested on the same full test split.",
    "- mIoU: the mean over architectures of the mean over seeds of the test mIoU (background "
    "included), as in `isdm evaluate`'s tables.",
    "- Worth at a point of n labelled images: n* - n, where n* is where the real-only curve "
    "(straight lines between its points) gives that point's real + synthetic mIoU, found by "
    "walking from the point up the curve for a gain and down it for a loss (so the worth has "
    "the sign of the gain at the point). Zero or negative: the synthetic data did not help. "
    "`above`: the curve never reaches the mixed mIoU to the right, so the worth is more than "
    "the largest point minus n (a lower bound); `below`: it never falls to it to the left, so "
    "the worth is less than the smallest point minus n (an upper bound).",
    "- 95 % CI: paired bootstrap; each replicate draws seeds and test images with replacement "
    "once for every point, row and architecture and recomputes the worth; the 2.5 and 97.5 "
    "percentiles of the replicates (`>` / `<`: an end above / below the curve). The SDMs are "
    "not retrained: the interval is the downstream noise for these SDMs.",
]


def plot_curve(summary: dict[str, Any], path: str | Path) -> Any:
    """Both curves (mIoU against labelled images) with their 95 % intervals; each
    interpolated worth as a horizontal arrow from the point to where the real-only curve
    reaches its mixed mIoU. Written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    rows = summary["points"]
    ns = [r["n"] for r in rows]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, name in (("miou_real_only", "real only"), ("miou_with_synthetic", summary["label"])):
        y = np.array([r[key] for r in rows])
        err = np.array([[max(0.0, r[key] - r[f"{key}_lo"]) for r in rows],
                        [max(0.0, r[f"{key}_hi"] - r[key]) for r in rows]])
        ax.errorbar(ns, y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=name)
    for r in rows:
        if r["status"] == "interpolated" and r["worth"] > 0:
            ax.annotate(f"+{r['worth']:.1f}", xy=(r["n"] + r["worth"], r["miou_with_synthetic"]),
                        xytext=(r["n"], r["miou_with_synthetic"]), fontsize=8,
                        arrowprops={"arrowstyle": "->", "linestyle": ":"})
    ax.set_xlabel("labelled real images (train split of the subset)")
    ax.set_ylabel("real test mIoU (mean over architectures and seeds)")
    ax.set_title(f"synthetic data at {rows[0]['n']} labelled images:\nworth "
                 f"{_fmt(rows[0]['worth'], rows[0]['status'])} real images ({_ci(rows[0])})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return fig


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_labels(cfg: Config, points_dir: str | Path, out_dir: str | Path,
               dataset: Optional[str] = None) -> dict[str, Any]:
    """Read the points ``<points_dir>/<fraction>`` (``labels.fractions`` and ``1.0``), write the
    curve's files into ``out_dir`` and log them to MLflow; returns ``{"summary", "metrics"}``.

    Raises:
        EvaluationError: a point's report missing, or points that do not share architectures,
            seeds and test split.
    """
    from isdm import tracking

    fractions = sorted({*map(float, cfg.labels.fractions), 1.0})
    points = [lab.load_point(Path(points_dir) / lab.point_name(f), f) for f in fractions]
    summary = curve_summary(points, cfg.evaluate.bootstrap, cfg.evaluate.seeds[0])
    metrics = flat_metrics(summary)
    out = Path(out_dir)
    _claim_out(out)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "summary.json", _json_safe(summary))
    _write_csv(out / "curve.csv", [{k: v for k, v in r.items()} for r in summary["points"]])
    atomic_write_text(out / "report.md", curve_markdown(summary))
    plot_curve(summary, out / "curve.png")
    with tracking.start_run(cfg.tracking, name=f"label efficiency {summary['label']}",
                            action="labels", dataset=dataset or cfg.data.root,
                            params={"labels.fractions": list(fractions),
                                    "labels.seed": cfg.labels.seed}) as run:
        run.log_metrics(metrics)
        for name in ("metrics.json", "summary.json", "curve.csv", "report.md", "curve.png"):
            run.log_artifact(out / name)
    return {"summary": summary, "metrics": metrics}


_OUTPUTS = ("metrics.json", "summary.json", "curve.csv", "report.md", "curve.png")


def _claim_out(out: Path) -> None:
    """The curve's folder (:mod:`isdm.utils.ownership`): an earlier curve's files are replaced,
    any other file is refused by name (issue 22's rule for every command)."""
    from isdm.utils import ownership

    def legacy(root: Path) -> list[str]:  # a curve of an isdm without the record
        try:
            ours = "points" in json.loads((root / "summary.json").read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        return [n for n in _OUTPUTS if (root / n).is_file()] if ours else []

    output = ownership.claim(out, "labels", legacy=legacy)
    ownership.make_folder(out)
    output.record(_OUTPUTS)


def _json_safe(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _json_safe(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_json_safe(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree
