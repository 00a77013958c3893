"""``isdm evaluate``: train smp segmenters on real/synthetic mixes and compare them on real test.

The rows of the report are the mixes, each mix that uses synthetic images once per synthetic
set (``RALLFALL[synthetic]``, ``RALLFALL[curated]``; :func:`isdm.evaluation.mixes.mix_label`),
the real-only baseline ``RALLF000`` first. For every architecture, seed and row (a "cell",
:mod:`isdm.evaluation.cell`):

1. carve a validation split off the REAL train split (seeded with the cell's seed, the same for
   every row of that seed, so rows are paired) and draw the mix's real and synthetic training
   images (never a validation image);
2. train for ``evaluate.steps`` optimiser steps (the same for every row, whatever its size) and
   keep the weights of the best validation;
3. test ONCE on the real test split with the selected weights -> per-image counts.

With ``data.crop`` steps 2-3 train on random crops of the real images at ``data.scale`` and
predict whole validation / test images by sliding windows, scored at native size
(:mod:`isdm.evaluation.wholes`).

Then (:mod:`.summary`) mean and std over seeds per (architecture, row), the paired-bootstrap
gain of every row over ``RALLF000`` and of every further set over the first at the same mix,
per architecture and for the mean over architectures; label fidelity of each set (the first
seed's real-only model on its samples, :mod:`.fidelity`); outputs and MLflow runs (one parent,
one child per cell) via :mod:`.report` and :mod:`isdm.tracking`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from isdm.config import Config
from isdm.errors import EvaluationError
from isdm.evaluation import report
from isdm.evaluation.loading import SyntheticSpec, synthetic_sets
from isdm.evaluation.mixes import BASELINE, mix_label, parse_mix

__all__ = ["run_evaluation", "EvaluationError", "resolve_mixes", "report_rows"]


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


def report_rows(mixes: list[str], sets: list[str]) -> list[tuple[str, str]]:
    """``(mix, set)`` per report row: a mix with synthetic images once per set, in set order."""
    return [(m, s) for m in mixes for s in (sets if parse_mix(m).uses_synthetic else [""])]


def _check(mixes: list[str], sets: dict[str, Path]) -> None:
    needs = [m for m in mixes if parse_mix(m).uses_synthetic]
    if needs and not sets:
        raise EvaluationError(f"mixes {needs} need a synthetic folder: give --synthetic DIR "
                              "(or NAME=DIR, repeatable)")
    for name, folder in sets.items():
        if not folder.is_dir():
            raise EvaluationError(f"--synthetic {name}={folder}: not a folder (a sampling output "
                                  "with samples/ and labels/)")


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and np.isfinite(v)}


def run_evaluation(cfg: Config, data_root: str | Path, synthetic: SyntheticSpec,
                   out_dir: str | Path, *, device: Optional[str] = None,
                   fidelity_only: bool = False, progress: Optional[bool] = None) -> dict[str, Any]:
    """Run the whole evaluation and write its files into ``out_dir`` (:mod:`.report`:
    ``metrics.json`` (headline), ``report.json``, ``cells.csv``, ``report.md``, ``miou.png``,
    ``counts.npz``).

    Args:
        synthetic: the synthetic sets (:func:`isdm.evaluation.loading.synthetic_sets`: one
            folder, ``{name: folder}`` or ``NAME=DIR`` strings); None for real-only mixes.
        device: None = ``cfg.runtime.device`` (``auto`` = CUDA when available).
        progress: None = ``cfg.runtime.progress``.
        fidelity_only: train only the real-only baseline (first seed) and report label fidelity.
    Returns:
        ``{"summary", "headline", "cells", "table", "report", "out_dir"}``; ``summary`` is the
        ``report.json`` tree (:func:`isdm.evaluation.report.headline` reads it).
    """
    from tqdm.auto import tqdm

    from isdm import lineage, tracking
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.segmenter import build_segmenter
    from isdm.utils.runtime import resolve_device

    e = cfg.evaluate
    mixes = resolve_mixes(e.mixes, fidelity_only)
    sets = synthetic_sets(synthetic)
    if fidelity_only and not sets:
        raise EvaluationError("--fidelity-only needs --synthetic DIR")
    _check(mixes, sets)
    rows = report_rows(mixes, list(sets))
    seeds = list(e.seeds[:1] if fidelity_only else e.seeds)
    dev = resolve_device(cfg.runtime.device if device is None else device)
    progress = cfg.runtime.progress if progress is None else progress
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    for arch in e.architectures:  # unknown names / unavailable weights fail before any work
        build_segmenter(arch, e.encoder, e.encoder_weights, cfg.data.num_classes, 0)
    train_all, test, synth = _load(cfg, data_root, sets)
    for seed in seeds:  # an impossible mix fails before any training starts
        for mix, name in rows:
            plan_cell(cfg, e.architectures[0], mix, seed, train_all.keys, synth[name].keys, name)

    cells: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], list[np.ndarray]] = {}
    fidelity: dict[str, dict[str, dict[str, float]]] = {name: {} for name in sets}
    labels = [mix_label(m, s) for m, s in rows]
    name = f"evaluate {'+'.join(e.architectures)} x {'+'.join(labels)} x {len(seeds)} seeds"
    with tracking.start_run(cfg.tracking, name=name, action="evaluate",
                            dataset=str(data_root)) as parent:
        # lineage (issue 13): the generator of the first synthetic set (the others, e.g. its
        # curated copy, come from the same generator), its run ids, the datasets
        first = next(iter(sets.values()), None)
        generator = lineage.track_evaluation(parent, cfg, data_root, first)
        lineage.track_further_sets(parent, cfg, dict(list(sets.items())[1:]))
        bar = tqdm(total=len(e.architectures) * len(seeds) * len(rows), desc="evaluate",
                   unit="cell", disable=not progress)
        for arch in e.architectures:
            for seed in seeds:
                for mix, set_name in rows:
                    cell = plan_cell(cfg, arch, mix, seed, train_all.keys, synth[set_name].keys,
                                     set_name)
                    bar.set_postfix_str(cell.name)
                    fid_sets = {n: synth[n] for n in sets} if (mix == BASELINE
                                                               and seed == seeds[0]) else {}
                    row, cell_counts, fid = _run_cell(cfg, cell, train_all, test, synth[set_name],
                                                      dev, str(data_root), parent.run_id, fid_sets)
                    cells.append(row)
                    counts.setdefault((arch, cell.label), []).append(cell_counts)
                    for n, metrics in fid.items():
                        fidelity[n][arch] = metrics
                    bar.update(1)
        bar.close()
        setup = _setup(cfg, data_root, sets, dev, seeds, train_all, test, synth)
        summary = report.build_summary(cfg, cells, counts, rows, list(sets), seeds, fidelity, setup)
        result = _write_outputs(out, summary, cells, counts, parent)
        # lineage (issue 13): the headline onto the sample run
        lineage.track_downstream(parent, generator, result["headline"])
        return result


def _load(cfg: Config, data_root: str | Path, sets: dict[str, Path]) -> tuple[Any, Any, dict]:
    """Real train, real test (:func:`isdm.evaluation.loading.load_split`: at
    ``evaluate.image_size``, or whole with ``data.crop``) and each synthetic set (key ``""``: an
    empty set, for rows without synthetic images) at ``evaluate.image_size``, in memory."""
    from isdm.evaluation.loading import empty_set, eval_data_config, load_split, load_synthetic

    data_cfg = eval_data_config(cfg.data, cfg.evaluate.image_size)
    train_all, test = load_split(cfg, data_root, "train"), load_split(cfg, data_root, "test")
    synth = {"": empty_set(cfg)}
    synth.update({name: load_synthetic(folder, data_cfg) for name, folder in sets.items()})
    return train_all, test, synth


def _run_cell(cfg: Config, cell: Any, train_all: Any, test: Any, synth: Any, dev: Any,
              dataset: str, parent_run_id: Optional[str], fid_sets: dict[str, Any],
              ) -> tuple[dict[str, Any], np.ndarray, dict[str, dict[str, float]]]:
    """Train, select and test one cell inside its own child run; label fidelity of the trained
    model on each set of ``fid_sets`` (the real-only model of the first seed)."""
    from isdm import tracking
    from isdm.evaluation.cell import train_cell
    from isdm.evaluation.fidelity import label_fidelity
    from isdm.evaluation.metrics import summarize
    from isdm.evaluation.segmenter import predict_counts

    e, nc, ign, plan = cfg.evaluate, cfg.data.num_classes, cfg.data.ignore_index, cell.plan
    params = {"arch": cell.arch, "mix": cell.label, "set": cell.synthetic_set, "seed": cell.seed,
              "n_real": len(plan.real_keys), "n_fake": len(plan.synthetic_keys),
              "n_val": len(plan.val_keys), "n_test": len(test), "encoder": e.encoder}
    fid = {}
    with tracking.start_run(cfg.tracking, name=cell.name, action="evaluate-cell", dataset=dataset,
                            params=params, parent_run_id=parent_run_id) as child:
        model, fit = train_cell(
            cfg, cell, train_all, synth, device=dev,
            on_validation=lambda r: child.log_metrics(
                _finite({k: r[k] for k in ("train_loss", "val_miou", "val_miou_nobg")}),
                step=int(r["step"])))
        counts = predict_counts(model, test, nc, ign, dev, e.batch_size, e.encoder_weights)
        budget = {"steps": fit.steps, "images_seen": fit.images_seen, "epochs": fit.epochs,
                  "best_step": fit.best_step, "best_val_miou": fit.best_val_miou,
                  "train_seconds": fit.train_seconds}
        row = {**params, **budget, **summarize(counts)}
        child.log_metrics(_finite({f"test_{k}": v for k, v in summarize(counts).items()}))
        child.log_metrics(_finite(budget))
        for name, images in fid_sets.items():
            fid[name], _ = label_fidelity(model, images, num_classes=nc, ignore_index=ign,
                                          device=dev, batch_size=e.batch_size,
                                          encoder_weights=e.encoder_weights)
            child.log_metrics(_finite({f"fidelity_{name}_{k}": v for k, v in fid[name].items()}))
    return row, counts, fid


def _setup(cfg: Config, data_root: Any, sets: dict[str, Path], dev: Any, seeds: list[int],
           train_all: Any, test: Any, synth: dict[str, Any]) -> dict[str, str]:
    """The ``Setup`` lines of report.md (and ``report.json``'s ``setup``)."""
    e = cfg.evaluate
    return {"data": str(data_root),
            "synthetic sets": ", ".join(f"{n} = {p} ({len(synth[n])} images)"
                                        for n, p in sets.items()) or "none",
            "device": str(dev),
            "classes": f"{cfg.data.num_classes} ({cfg.data.dataset_mode}, ignore_index "
                       f"{cfg.data.ignore_index})",
            "images": f"{len(train_all)} real train (val_fraction {e.val_fraction} held out per "
                      f"seed), {len(test)} real test",
            "budget": f"{e.steps} optimiser steps of {e.batch_size} images for every cell "
                      f"({e.steps * e.batch_size} images seen), validation every {e.val_every} "
                      "steps and after the last, best validation kept",
            "recipe": f"{e.encoder} (weights {e.encoder_weights}), {_geometry(cfg)}, lr {e.lr}, "
                      f"loss {e.loss}, augment {e.augment}, precision {e.precision}",
            "seeds": ", ".join(map(str, seeds)),
            "bootstrap": f"{e.bootstrap} paired replicates over seeds and test images, 95% CI"}


def _geometry(cfg: Config) -> str:
    """What the segmenter sees: whole images at ``evaluate.image_size``, or crops of them."""
    e, d = cfg.evaluate, cfg.data
    if not d.crop:
        return f"{e.image_size} px"
    return (f"random {e.image_size} px crops of the images at scale {d.scale} (defect-centred "
            f"with p {d.crop_defect_prob}), validation and test on whole images by sliding "
            f"windows (overlap {e.window_overlap}), scored at native size")


def _write_outputs(out: Path, summary: dict[str, Any], cells: list[dict[str, Any]],
                   counts: dict[tuple[str, str], list[np.ndarray]], parent: Any) -> dict[str, Any]:
    from isdm.utils.io import atomic_path

    written = report.write_reports(out, summary, cells)
    with atomic_path(out / "counts.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{a}__{m}": np.stack(c) for (a, m), c in counts.items()})
    parent.log_metrics(report.mlflow_metrics(summary))
    for path in written:
        parent.log_artifact(path)
    return {"summary": summary, "headline": summary["headline"], "cells": cells,
            "table": report.markdown_table(summary), "report": (out / "report.md").read_text(),
            "out_dir": str(out)}
