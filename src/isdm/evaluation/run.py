"""``isdm evaluate``: train smp segmenters on real/synthetic mixes and compare them on real test.

The rows of the report are the mixes, each mix that uses synthetic images once per synthetic
set (``RALLFALL[synthetic]``, ``RALLFALL[curated]``; :func:`isdm.evaluation.mixes.mix_label`)
and training protocol (``evaluate.protocol``, then each of ``evaluate.protocols``:
``RALLFALL[synthetic] pretrain 0.5``; :mod:`isdm.evaluation.protocols`), the real-only
baseline ``RALLF000`` first. For every architecture, seed and row (a "cell",
:mod:`isdm.evaluation.cell`):

1. carve a validation split off the REAL train split (seeded with the cell's seed, the same for
   every row of that seed, so rows are paired) and draw the mix's real and synthetic training
   images (never a validation image);
2. train for ``evaluate.steps`` optimiser steps (the same for every row, whatever its size) and
   keep the weights of the best validation; with ``auto`` the steps of each architecture are
   calibrated first on its real-only cells (:mod:`.calibration`), which are then the table's
   real-only cells;
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

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from isdm.config import Config
from isdm.errors import EvaluationError
from isdm.evaluation import report
from isdm.evaluation.loading import SyntheticSpec, synthetic_sets
from isdm.evaluation.mixes import BASELINE, mix_label, parse_mix
from isdm.evaluation.protocols import parse_protocol, row_protocols
from isdm.evaluation.cell_runs import log_cell

__all__ = ["run_evaluation", "run_shard", "EvaluationError", "resolve_mixes", "report_rows"]


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


def report_rows(mixes: list[str], sets: list[str], protocols: Sequence[str] = ("mix",),
                set_protocols: Optional[Mapping[str, str]] = None) -> list[tuple[str, str, str]]:
    """``(mix, set, protocol)`` per report row: a mix without synthetic images once (``mix``),
    a mix with synthetic images once per set, in set order, and per set once per protocol:
    the set's main protocol (``set_protocols[set]``, default ``protocols[0]``) first, then
    ``protocols[1:]`` (the extra rows) without it."""
    rows = []
    for m in mixes:
        if not parse_mix(m).uses_synthetic:
            rows.append((m, "", "mix"))
            continue
        for s in sets:
            main = (set_protocols or {}).get(s, protocols[0])
            rows += [(m, s, p) for p in dict.fromkeys([main, *protocols[1:]])]
    return rows


def _check(mixes: list[str], sets: dict[str, Path]) -> None:
    needs = [m for m in mixes if parse_mix(m).uses_synthetic]
    if needs and not sets:
        raise EvaluationError(f"mixes {needs} need a synthetic folder: give --synthetic DIR "
                              "(or NAME=DIR, repeatable)")
    for name, folder in sets.items():
        if not folder.is_dir():
            raise EvaluationError(f"--synthetic {name}={folder}: not a folder (a sampling output "
                                  "with samples/ and labels/)")


def run_evaluation(cfg: Config, data_root: str | Path, synthetic: SyntheticSpec,
                   out_dir: str | Path, *, device: Optional[str] = None,
                   fidelity_only: bool = False, progress: Optional[bool] = None,
                   cell_cache: Optional[str | Path] = None,
                   shard: Optional[tuple[int, int]] = None,
                   set_protocols: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Run the whole evaluation and write its files into ``out_dir`` (:mod:`.report`:
    ``metrics.json`` (headline), ``report.json``, ``cells.csv``, ``report.md``, ``miou.png``,
    ``counts.npz``; :mod:`.calibration_report`: ``calibration.json``, ``calibration.png``).
    With ``evaluate.steps: auto`` the steps of every architecture are calibrated first (or read
    from the store's cached calibration; :mod:`.calibration`).

    Args:
        synthetic: the synthetic sets (:func:`isdm.evaluation.loading.synthetic_sets`: one
            folder, ``{name: folder}`` or ``NAME=DIR`` strings); None for real-only mixes.
        device: None = ``cfg.runtime.device`` (``auto`` = CUDA when available).
        progress: None = ``cfg.runtime.progress``.
        fidelity_only: train only the real-only baseline (first seed) and report label fidelity.
        cell_cache: the cell store (:func:`isdm.evaluation.store.resolve_root`: default
            ``$ISDM_CELL_CACHE``, else ``./.isdm/cells``); cells found there are not trained.
        shard: ``(i, n)``: train only cells ``i, i + n, i + 2n, ...`` into the store and write no
            report (:func:`run_shard`); with ``auto`` every shard first needs the calibration
            (the first computes it, the others wait on its lock and read it).
        set_protocols: ``{set: protocol code}``: the main protocol of a set's rows where it is
            not the config's (``isdm tune``'s final check: each set with the protocol it was
            tuned for); the extra rows of ``evaluate.protocols`` follow for every set.
    Returns:
        ``{"summary", "headline", "cells", "table", "report", "out_dir", "trained",
        "from_store"}``; ``summary`` is the ``report.json`` tree
        (:func:`isdm.evaluation.report.headline` reads it). With ``shard``:
        :func:`run_shard`'s dict.
    """
    from isdm import lineage, tracking
    from isdm.evaluation.calibration import resolve_steps
    from isdm.evaluation.pool import CellPool
    from isdm.evaluation.store import CellStore, resolve_root
    from isdm.utils.runtime import resolve_device

    e = cfg.evaluate
    mixes = resolve_mixes(e.mixes, fidelity_only)
    sets = synthetic_sets(synthetic)
    if fidelity_only and not sets:
        raise EvaluationError("--fidelity-only needs --synthetic DIR")
    _check(mixes, sets)
    rows = report_rows(mixes, list(sets), row_protocols(e),
                       {k: parse_protocol(v).code for k, v in (set_protocols or {}).items()})
    seeds = list(e.seeds[:1] if fidelity_only else e.seeds)
    dev = resolve_device(cfg.runtime.device if device is None else device)
    progress = cfg.runtime.progress if progress is None else progress
    store = CellStore(resolve_root(cell_cache))
    steps, calibrations = resolve_steps(cfg, data_root, e.architectures, store=store, device=dev,
                                        progress=progress)
    plan = _plan(cfg, data_root, sets, rows, seeds, dev, store, steps)
    if shard is not None:
        return run_shard(plan, shard, dev, progress)
    out = Path(out_dir)
    report.claim_out(out)  # its own earlier files or nothing (isdm.utils.ownership)
    out.mkdir(parents=True, exist_ok=True)

    first_seed_baselines = {i for i, job in enumerate(plan.jobs)
                            if job.cell.mix == BASELINE and job.cell.seed == seeds[0]}
    fidelity: dict[str, dict[str, dict[str, float]]] = {name: {} for name in sets}
    outcomes: dict[int, Any] = {}
    labels = [mix_label(*row) for row in rows]
    name = f"evaluate {'+'.join(e.architectures)} x {'+'.join(labels)} x {len(seeds)} seeds"
    missing = len(plan.jobs) - store.count([j.spec for j in plan.jobs])
    with tracking.start_run(cfg.tracking, name=name, action="evaluate",
                            dataset=str(data_root)) as parent, \
            CellPool.for_cells(e, dev, missing, progress=progress, desc="evaluate") as pool:
        # lineage (issue 13): the generator of the first synthetic set (the others, e.g. its
        # curated copy, come from the same generator), its run ids, the datasets
        first = next(iter(sets.values()), None)
        generator = lineage.track_evaluation(parent, cfg, data_root, first)
        lineage.track_further_sets(parent, cfg, dict(list(sets.items())[1:]))
        index = {id(job): i for i, job in enumerate(plan.jobs)}
        for outcome in pool.run(plan.jobs):
            i = index[id(outcome.job)]
            outcomes[i] = outcome
            fid_sets = {n: plan.synth[n] for n in sets} if i in first_seed_baselines else {}
            fid = log_cell(cfg, outcome, len(plan.test), str(data_root), parent.run_id,
                           fid_sets, dev)
            for n, metrics in fid.items():
                fidelity[n][outcome.job.cell.arch] = metrics
        ordered = [outcomes[i] for i in range(len(plan.jobs))]
        cells, counts = _collect(plan, ordered)
        setup = _setup(cfg, data_root, sets, dev, seeds, plan.train, plan.test, plan.synth, steps)
        setup["cells"] = (f"{len(cells)}: {pool.trained} trained in this run "
                          f"({pool.describe()}), {pool.from_store} from the cell store "
                          f"{store.root}" + ("; the real-only cells are the calibration's"
                                             if calibrations else ""))
        calibration = _calibration(cfg, steps, calibrations, ordered)
        summary = report.build_summary(cfg, cells, counts, rows, list(sets), seeds, fidelity, setup,
                                       calibration)
        result = _write_outputs(out, summary, cells, counts, parent)
        # lineage (issue 13): the headline onto the sample run
        lineage.track_downstream(parent, generator, result["headline"])
        return {**result, "trained": pool.trained, "from_store": pool.from_store}


@dataclass
class Plan:
    """The data of an evaluation and its cell jobs, in report order (architecture, seed, row)."""

    train: Any
    test: Any
    synth: dict[str, Any]
    jobs: list[Any]
    store: Any


def _calibration(cfg: Config, steps: dict[str, int], calibrations: dict[str, Any],
                 outcomes: list[Any]) -> dict[str, Any]:
    """The ``calibration`` tree of the report, from the real-only cells of the table."""
    from isdm.evaluation.calibration_report import summarize

    baseline: dict[str, list[Any]] = {}
    for outcome in outcomes:
        if outcome.job.cell.mix == BASELINE:
            baseline.setdefault(outcome.job.cell.arch, []).append(outcome.record)
    return summarize(cfg, steps, calibrations, baseline)


def _plan(cfg: Config, data_root: str | Path, sets: dict[str, Path],
          rows: list[tuple[str, str, str]], seeds: list[int], dev: Any, store: Any,
          steps: dict[str, int]) -> Plan:
    """Check the names, load the data, plan every cell (an impossible mix fails before any
    training starts) and make its job (``steps``: per architecture)."""
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.segmenter import build_segmenter, precision_warning
    from isdm.evaluation.worker import Digests, make_job

    e = cfg.evaluate
    for arch in e.architectures:  # unknown names / unavailable weights fail before any work
        build_segmenter(arch, e.encoder, e.encoder_weights, cfg.data.num_classes, 0)
    if (warning := precision_warning(e.precision, dev)) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    digests = Digests(data_root)
    train_all, test, synth = _load(cfg, data_root, sets, digests)
    jobs = []
    for arch in e.architectures:
        for seed in seeds:
            for mix, set_name, protocol in rows:
                cell = plan_cell(cfg, arch, mix, seed, train_all.keys, synth[set_name].keys,
                                 set_name, protocol)
                jobs.append(make_job(cfg, data_root, cell, digests=digests,
                                     synthetic=sets.get(set_name), test=True,
                                     device_type=dev.type, store=store, steps=steps[arch]))
    return Plan(train_all, test, synth, jobs, store)


def run_shard(plan: Plan, shard: tuple[int, int], dev: Any, progress: bool) -> dict[str, Any]:
    """Train this shard's cells (every ``n``-th from the ``i``-th) into the store; no report,
    no MLflow run. Returns ``{"shard", "cells", "shard_cells", "trained", "from_store",
    "present"}`` (``present``: cells of the whole evaluation now in the store)."""
    from isdm.evaluation.pool import CellPool

    i, n = shard
    if not 0 <= i < n:
        raise EvaluationError(f"--shard {i}/{n}: use i/n with 0 <= i < n, e.g. --shard 0/2")
    mine = plan.jobs[i::n]
    missing = len(mine) - plan.store.count([j.spec for j in mine])
    with CellPool.for_cells(plan.jobs[0].cfg.evaluate, dev, missing, progress=progress,
                            desc=f"evaluate shard {i}/{n}") as pool:
        for _ in pool.run(mine):
            pass
    return {"shard": [i, n], "cells": len(plan.jobs), "shard_cells": len(mine),
            "trained": pool.trained, "from_store": pool.from_store,
            "present": plan.store.count([j.spec for j in plan.jobs]),
            "store": str(plan.store.root)}


def _load(cfg: Config, data_root: str | Path, sets: dict[str, Path],
          digests: Any) -> tuple[Any, Any, dict]:
    """Real train, real test (:func:`isdm.evaluation.loading.load_split`: at
    ``evaluate.image_size``, or whole with ``data.crop``) and each synthetic set (key ``""``: an
    empty set, for rows without synthetic images) at ``evaluate.image_size``, in memory (kept
    for the cells this process trains, :mod:`.worker`)."""
    from isdm.evaluation.loading import empty_set
    from isdm.evaluation.worker import load_real, load_synthetic_set

    train_all = load_real(cfg, data_root, "train", digests.split("train"))
    test = load_real(cfg, data_root, "test", digests.split("test"))
    synth = {"": empty_set(cfg)}
    synth.update({name: load_synthetic_set(cfg, folder, digests.synthetic(folder))
                  for name, folder in sets.items()})
    return train_all, test, synth


def _collect(plan: Plan, outcomes: list[Any]) -> tuple[list[dict[str, Any]],
                                                       dict[tuple[str, str], list[np.ndarray]]]:
    """The rows of ``cells.csv`` and the test counts per (architecture, row), in plan order."""
    from isdm.evaluation.cell_runs import cell_row

    cells, counts = [], {}
    for outcome in outcomes:
        cells.append(cell_row(outcome, len(plan.test)))
        counts.setdefault((outcome.job.cell.arch, outcome.job.cell.label), []).append(
            outcome.record.counts)
    return cells, counts


def _setup(cfg: Config, data_root: Any, sets: dict[str, Path], dev: Any, seeds: list[int],
           train_all: Any, test: Any, synth: dict[str, Any],
           steps: dict[str, int]) -> dict[str, str]:
    """The ``Setup`` lines of report.md (and ``report.json``'s ``setup``)."""
    e = cfg.evaluate
    n = ", ".join(f"{a} {s}" for a, s in steps.items()) if len(set(steps.values())) > 1 \
        else str(next(iter(steps.values())))
    how = " (calibrated: evaluate.steps auto)" if e.steps == "auto" else ""
    return {"data": str(data_root),
            "synthetic sets": ", ".join(f"{n} = {p} ({len(synth[n])} images)"
                                        for n, p in sets.items()) or "none",
            "device": str(dev),
            "classes": f"{cfg.data.num_classes} ({cfg.data.dataset_mode}, ignore_index "
                       f"{cfg.data.ignore_index})",
            "images": f"{len(train_all)} real train (val_fraction {e.val_fraction} held out per "
                      f"seed), {len(test)} real test",
            "budget": f"{n} optimiser steps{how} of {e.batch_size} images for every cell of an "
                      f"architecture, validation every {e.val_every} steps and after the last, "
                      "best validation kept",
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

    from isdm.evaluation.calibration_report import write_calibration

    written = report.write_reports(out, summary, cells)
    written += write_calibration(out, summary["calibration"])
    with atomic_path(out / "counts.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{a}__{m}": np.stack(c) for (a, m), c in counts.items()})
    parent.log_metrics(report.mlflow_metrics(summary))
    for path in written:
        parent.log_artifact(path)
    return {"summary": summary, "headline": summary["headline"], "cells": cells,
            "table": report.markdown_table(summary), "report": (out / "report.md").read_text(),
            "out_dir": str(out)}
