"""``isdm evaluate``: train smp segmenters on real/synthetic mixes and compare them on real test.

For every architecture, seed and mix (a "cell", :mod:`isdm.evaluation.cell`):

1. carve a validation split off the REAL train split (seeded with the cell's seed, the same for
   every mix of that seed, so mixes are paired) and draw the mix's real and synthetic training
   images (never a validation image);
2. train with the seeded recipe, keep the epoch with the best validation mIoU;
3. test ONCE on the real test split with the selected weights -> per-image counts.

Then per (architecture, mix): mean and std over seeds and the paired-bootstrap gain over
``RALLF000`` (:mod:`stats`); label fidelity of the first seed's real-only model (:mod:`fidelity`);
outputs and MLflow runs (one parent, one child per cell) via :mod:`report` and
:mod:`isdm.tracking`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from isdm.config import Config
from isdm.errors import EvaluationError
from isdm.evaluation import report
from isdm.evaluation.mixes import BASELINE, parse_mix

__all__ = ["run_evaluation", "EvaluationError", "resolve_mixes"]

# metrics summarised as mean/std over seeds in the tables and metrics.json
_SUMMARY_KEYS = ("miou", "miou_nobg", "micro_iou", "dice", "dice_nobg", "pixel_acc")


def resolve_mixes(mixes: tuple[str, ...], fidelity_only: bool = False) -> list[str]:
    """Parse every mix strictly; put the baseline ``RALLF000`` first (added when missing, since
    gains and label fidelity need it). ``fidelity_only`` keeps only the baseline."""
    parsed = [parse_mix(m).code for m in mixes]
    dupes = sorted({m for m in parsed if parsed.count(m) > 1})
    if dupes:
        raise EvaluationError(f"evaluate.mixes lists {dupes} more than once")
    if fidelity_only:
        return [BASELINE]
    return [BASELINE] + [m for m in parsed if m != BASELINE]


def _check(cfg: Config, mixes: list[str], synthetic_dir: Optional[str | Path]) -> None:
    needs_synth = any(parse_mix(m).uses_synthetic for m in mixes)
    if needs_synth and (synthetic_dir is None or not Path(synthetic_dir).is_dir()):
        raise EvaluationError(f"mixes {[m for m in mixes if parse_mix(m).uses_synthetic]} need a "
                              f"synthetic folder, but --synthetic {synthetic_dir!r} is not a folder")


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float) and np.isfinite(v)}


def run_evaluation(cfg: Config, data_root: str | Path, synthetic_dir: Optional[str | Path],
                   out_dir: str | Path, *, device: Optional[str] = None,
                   fidelity_only: bool = False, progress: Optional[bool] = None) -> dict[str, Any]:
    """Run the whole evaluation and write ``metrics.json``, ``cells.csv``, ``report.md``,
    ``miou.png`` and ``counts.npz`` (per cell ``[S, N, C, 3]`` test counts) into ``out_dir``.

    Args:
        device: None = ``cfg.runtime.device`` (``auto`` = CUDA when available).
        fidelity_only: train only the real-only baseline (first seed) and report label fidelity.
    Returns:
        ``{"summary", "fidelity", "cells", "metrics", "table", "report"}``.
    """
    from tqdm.auto import tqdm

    from isdm import lineage, tracking
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.segmenter import build_segmenter
    from isdm.utils.runtime import resolve_device

    e = cfg.evaluate
    mixes = resolve_mixes(e.mixes, fidelity_only)
    if fidelity_only and synthetic_dir is None:
        raise EvaluationError("--fidelity-only needs --synthetic DIR")
    _check(cfg, mixes, synthetic_dir)
    seeds = list(e.seeds[:1] if fidelity_only else e.seeds)
    dev = resolve_device(cfg.runtime.device if device is None else device)
    progress = cfg.runtime.progress if progress is None else progress
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    for arch in e.architectures:  # unknown names / unavailable weights fail before any work
        build_segmenter(arch, e.encoder, e.encoder_weights, cfg.data.num_classes, 0)
    train_all, test, synth = _load(cfg, data_root, synthetic_dir)
    for seed in seeds:  # an impossible mix fails before any training starts
        for m in mixes:
            plan_cell(cfg, e.architectures[0], m, seed, train_all.keys, synth.keys)

    rows: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], list[np.ndarray]] = {}
    fidelity: dict[str, dict[str, float]] = {}
    name = f"evaluate {'+'.join(e.architectures)} x {'+'.join(mixes)} x {len(seeds)} seeds"
    with tracking.start_run(cfg.tracking, name=name, action="evaluate",
                            dataset=str(data_root)) as parent:
        # lineage (issue 13): the generator's params and run ids, the datasets
        generator = lineage.track_evaluation(parent, cfg, data_root, synthetic_dir)
        bar = tqdm(total=len(e.architectures) * len(seeds) * len(mixes), desc="evaluate",
                   unit="cell", disable=not progress)
        for arch in e.architectures:
            for seed in seeds:
                for mix in mixes:
                    bar.set_postfix_str(f"{arch} {mix} seed {seed}")
                    cell = plan_cell(cfg, arch, mix, seed, train_all.keys, synth.keys)
                    row, cell_counts, fid = _run_cell(cfg, cell, train_all, test, synth, dev,
                                                      str(data_root), parent.run_id,
                                                      with_fidelity=mix == BASELINE and seed == seeds[0])
                    rows.append(row)
                    counts.setdefault((arch, mix), []).append(cell_counts)
                    if fid is not None:
                        fidelity[arch] = fid
                    bar.update(1)
        bar.close()
        summary = _summarize(rows, counts, e.architectures, mixes, e.bootstrap, seeds[0])
        meta = _meta(cfg, data_root, synthetic_dir, dev, mixes, seeds, train_all, test, synth)
        result = _write_outputs(out, summary, fidelity, rows, counts, parent, meta)
        # lineage (issue 13): the headline onto the sample run
        lineage.track_downstream(parent, generator, _headline(summary, fidelity, mixes))
        return result


def _headline(summary: dict, fidelity: dict, mixes: list[str]) -> dict[str, float]:
    """INTERIM until wt/evaluate's ``report.headline``: means over architectures of the
    baseline's and the first synthetic mix's mIoU, its gain with the bounds of its 95 % CI, and
    the label fidelity mIoU."""
    if len(mixes) < 2:
        return {}

    def mean(key: str, mix: str = mixes[1]) -> float:
        return float(np.mean([summary[arch][mix][key] for arch in summary]))

    out = {"miou_real_only": mean("miou_mean", BASELINE), "miou_with_synthetic": mean("miou_mean"),
           "miou_gain": mean("gain"), "miou_gain_lo": mean("gain_lo"),
           "miou_gain_hi": mean("gain_hi")}
    if fidelity:
        out["label_fidelity"] = float(np.mean([f["miou"] for f in fidelity.values()]))
    return out


def _load(cfg: Config, data_root: str | Path, synthetic_dir: Optional[str | Path]) -> tuple[Any, Any, Any]:
    """Real train, real test and synthetic images at ``evaluate.image_size``, in memory."""
    import torch

    from isdm.evaluation.loading import eval_data_config, load_real, load_synthetic
    from isdm.evaluation.segmenter import TensorSet

    size = cfg.evaluate.image_size
    data_cfg = eval_data_config(cfg.data, size)
    train_all, test = load_real(data_root, "train", data_cfg), load_real(data_root, "test", data_cfg)
    if synthetic_dir is not None:
        synth = load_synthetic(synthetic_dir, data_cfg)
    else:
        h, w = data_cfg.size
        synth = TensorSet(torch.empty(0, 3, h, w), torch.empty(0, h, w, dtype=torch.long), [])
    return train_all, test, synth


def _run_cell(cfg: Config, cell: Any, train_all: Any, test: Any, synth: Any, dev: Any,
              dataset: str, parent_run_id: Optional[str],
              with_fidelity: bool) -> tuple[dict[str, Any], np.ndarray, Optional[dict[str, float]]]:
    """Train, select and test one (architecture, mix, seed) cell inside its own child run."""
    from isdm import tracking
    from isdm.evaluation.cell import train_cell
    from isdm.evaluation.fidelity import label_fidelity
    from isdm.evaluation.metrics import summarize
    from isdm.evaluation.segmenter import predict_counts

    e, nc, ign, plan = cfg.evaluate, cfg.data.num_classes, cfg.data.ignore_index, cell.plan
    params = {"arch": cell.arch, "mix": cell.mix, "seed": cell.seed, "n_real": len(plan.real_keys),
              "n_fake": len(plan.synthetic_keys), "n_val": len(plan.val_keys), "n_test": len(test),
              "encoder": e.encoder}
    fid = None
    with tracking.start_run(cfg.tracking, name=cell.name, action="evaluate-cell", dataset=dataset,
                            params=params, parent_run_id=parent_run_id) as child:
        model, fit = train_cell(
            cfg, cell, train_all, synth, device=dev,
            on_epoch=lambda r: child.log_metrics(
                _finite({"train_loss": r["train_loss"], "val_miou": r["val_miou"]}), step=int(r["epoch"])))
        counts = predict_counts(model, test, nc, ign, dev, e.batch_size, e.encoder_weights)
        row = {**params, "best_epoch": fit.best_epoch, "best_val_miou": fit.best_val_miou,
               "train_seconds": fit.train_seconds, **summarize(counts)}
        child.log_metrics(_finite({f"test_{k}": float(v) for k, v in summarize(counts).items()}))
        child.log_metrics(_finite({"best_epoch": float(fit.best_epoch),
                                   "best_val_miou": fit.best_val_miou,
                                   "train_seconds": fit.train_seconds}))
        if with_fidelity and len(synth):
            fid, _ = label_fidelity(model, synth, num_classes=nc, ignore_index=ign, device=dev,
                                    batch_size=e.batch_size, encoder_weights=e.encoder_weights)
            child.log_metrics(_finite({f"fidelity_{k}": v for k, v in fid.items()}))
    return row, counts, fid


def _summarize(rows: list[dict[str, Any]], counts: dict[tuple[str, str], list[np.ndarray]],
               archs: tuple[str, ...], mixes: list[str], n_boot: int,
               boot_seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean/std over seeds per (arch, mix) and the paired-bootstrap gain over the baseline."""
    from isdm.evaluation.stats import mean_std, paired_bootstrap

    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for arch in archs:
        summary[arch] = {}
        for mix in mixes:
            cell_rows = [r for r in rows if r["arch"] == arch and r["mix"] == mix]
            stats: dict[str, Any] = {"n_seeds": len(cell_rows)}
            for key in _SUMMARY_KEYS:
                stats[f"{key}_mean"], stats[f"{key}_std"] = mean_std([r[key] for r in cell_rows])
            if mix != BASELINE:
                base, other = np.stack(counts[(arch, BASELINE)]), np.stack(counts[(arch, mix)])
                for suffix, bg in (("", True), ("_nobg", False)):
                    b = paired_bootstrap(base, other, n_boot=n_boot, seed=boot_seed, background=bg)
                    stats.update({f"gain{suffix}": b.gain, f"gain{suffix}_lo": b.lo,
                                  f"gain{suffix}_hi": b.hi, f"verdict{suffix}": b.verdict})
            summary[arch][mix] = stats
    return summary


def _meta(cfg: Config, data_root: Any, synthetic_dir: Any, dev: Any, mixes: list[str],
          seeds: list[int], train_all: Any, test: Any, synth: Any) -> dict[str, Any]:
    e = cfg.evaluate
    return {"data": str(data_root), "synthetic": str(synthetic_dir), "device": str(dev),
            "classes": f"{cfg.data.num_classes} ({cfg.data.dataset_mode}, ignore_index "
                       f"{cfg.data.ignore_index})",
            "images": f"{len(train_all)} real train (val_fraction {e.val_fraction} held out per "
                      f"seed), {len(test)} real test, {len(synth)} synthetic",
            "recipe": f"{e.encoder} (weights {e.encoder_weights}), {e.image_size} px, {e.epochs} "
                      f"epochs, lr {e.lr}, batch {e.batch_size}, loss {e.loss}, augment {e.augment}",
            "mixes": ", ".join(mixes), "seeds": ", ".join(map(str, seeds)),
            "bootstrap": f"{e.bootstrap} paired replicates over seeds and test images, 95% CI"}


def _write_outputs(out: Path, summary: dict, fidelity: dict, rows: list[dict[str, Any]],
                   counts: dict[tuple[str, str], list[np.ndarray]], parent: Any,
                   meta: dict[str, Any]) -> dict[str, Any]:
    from isdm.utils.io import atomic_path, atomic_write_text

    n_cells = float(len(rows))
    extra = {"n_cells": n_cells, "train_seconds_total": float(sum(r["train_seconds"] for r in rows))}
    for arch, mixes in summary.items():
        for mix, s in mixes.items():
            if "gain" in s and np.isfinite(s["gain"]):
                key = f"best_gain_{arch}"
                extra[key] = max(extra.get(key, -np.inf), s["gain"])
    tree = report.metrics_json(summary, fidelity, extra)
    report.write_metrics_json(out / "metrics.json", tree)
    report.write_cells_csv(out / "cells.csv", rows)
    text = report.markdown_report(summary, fidelity, meta)
    atomic_write_text(out / "report.md", text)
    report.plot_miou(summary, out / "miou.png")
    with atomic_path(out / "counts.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{a}__{m}": np.stack(c) for (a, m), c in counts.items()})
    parent.log_metrics({k: v for k, v in _flat_numeric(tree).items()})
    for name in ("metrics.json", "cells.csv", "report.md", "miou.png"):
        parent.log_artifact(out / name)
    return {"summary": summary, "fidelity": fidelity, "cells": rows, "metrics": tree,
            "table": report.markdown_table(summary), "report": text, "out_dir": str(out)}


def _flat_numeric(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"FPN": {"RALLFALL": {"gain": 0.1}}}`` -> ``{"FPN.RALLFALL.gain": 0.1}``."""
    out: dict[str, float] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flat_numeric(v, key))
        else:
            out[key] = float(v)
    return out
