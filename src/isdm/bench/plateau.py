"""Has the real-only baseline learned what it can? Its validation mIoU against optimiser steps.

``evaluate.steps`` must be large enough that the baseline ``RALLF000`` has plateaued: a gain
measured against an under-trained segmenter says little. This tool trains the baseline cell of
each architecture and seed (:mod:`isdm.evaluation.cell`, the evaluate recipe with
``evaluate.steps`` = ``--steps``, validated every ``--val-every`` steps on the REAL validation
split), side by side on the cell pool (:mod:`isdm.evaluation.pool`) into the cell store: they
are evaluate's real-only cells (tested once at the end like those; the curves never read the
test counts), so an evaluate with the same recipe and steps reuses them. It records every
validation:

- ``plateau_<dataset>.csv``: ``dataset, arch, seed, step, epoch, train_loss, val_miou,
  val_miou_nobg, seconds`` (``seconds``: since the previous validation, training + validation);
- ``plateau.png``: the mean over seeds of ``val_miou`` (and ``val_miou_nobg``) per architecture,
  a band of ± one std, one row of panels per dataset;
- a table per (dataset, architecture): the best of the seed-mean curve, the first step at which
  it comes within ``tol`` (0.01) of that best (``plateau_step``), the mean of its last quarter
  minus the mean of the quarter before (``last_quarter_rise``: ~0 once plateaued;
  :func:`isdm.evaluation.plateau_rule.quarter_rise`), where ``evaluate.steps: auto`` would
  have stopped on these curves (``auto_steps``, ``auto_reason``: the calibration's own rule,
  :func:`isdm.evaluation.plateau_rule.first_stop`, with the config's
  ``evaluate.calibration``; empty when the curves end first), and the cost (``s_per_step``,
  training plus its validations; ``steps_per_s``).

``python -m isdm.bench.plateau --data DIR [-c params.yaml] [--set k=v] --steps N --val-every K
--seeds 0 1 2 --out DIR`` runs one dataset with the config's evaluate recipe;
``python -m isdm.bench --only plateau [--crackforest DIR]`` runs the embedded dataset (written to
a temp folder from the ``synth`` defaults) and CrackForest (binary, 128 px as the eval
benchmark) and writes next to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["curves", "plateau_table", "plot_curves", "run", "main"]

_FIELDS = ("dataset", "arch", "seed", "step", "epoch", "train_loss", "val_miou", "val_miou_nobg",
           "seconds")


def curves(cfg: Any, data_root: str | Path, dataset: str, seeds: Sequence[int],
           progress: bool = False, cell_cache: Optional[str | Path] = None) -> list[dict[str, Any]]:
    """One row per validation of the baseline cell of every ``cfg.evaluate.architectures`` x
    ``seeds``, trained for ``cfg.evaluate.steps`` steps on the pool (``evaluate.workers`` /
    ``evaluate.threads``) into the cell store ``cell_cache`` (default
    :func:`isdm.evaluation.store.resolve_root`); cells already there are read."""
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.mixes import BASELINE
    from isdm.evaluation.pool import CellPool
    from isdm.evaluation.store import CellStore, resolve_root
    from isdm.evaluation.worker import Digests, load_real, make_job
    from isdm.utils.runtime import resolve_device

    e = cfg.evaluate
    digests, store = Digests(data_root), CellStore(resolve_root(cell_cache))
    real = load_real(cfg, data_root, "train", digests.split("train"))  # whole with data.crop
    device = resolve_device(cfg.runtime.device)
    jobs = [make_job(cfg, data_root, plan_cell(cfg, arch, BASELINE, seed, real.keys, []),
                     digests=digests, synthetic=None, test=bool(digests.split("test")),
                     device_type=device.type, store=store)
            for arch in e.architectures for seed in seeds]
    records = {}
    with CellPool.for_cells(e, device, len(jobs), progress=progress,
                            desc=f"plateau {dataset}") as pool:
        for outcome in pool.run(jobs):
            records[id(outcome.job)] = outcome.record
            if progress:
                fit = outcome.record.fit
                print(f"  {dataset} {outcome.job.cell.name}: {fit['steps']} steps in "
                      f"{fit['train_seconds']:.0f} s{'' if outcome.trained else ' (stored)'}, "
                      f"best val mIoU {outcome.record.best_val_miou:.4f} at step "
                      f"{fit['best_step']}", file=sys.stderr, flush=True)
    rows: list[dict[str, Any]] = []
    for job in jobs:
        rows += [{"dataset": dataset, "arch": job.cell.arch, "seed": job.cell.seed,
                  **{k: (float("nan") if v is None else v) for k, v in h.items()}}
                 for h in records[id(job)].fit["history"]]
    return rows


def _mean_curve(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean over seeds, std over seeds) of ``key``; every seed validates at the same steps."""
    steps = sorted({r["step"] for r in rows})
    by_step = np.array([[r[key] for r in rows if r["step"] == s] for s in steps], dtype=float)
    return np.array(steps), np.nanmean(by_step, axis=1), np.nanstd(by_step, axis=1)


def _seed_curves(rows: list[dict[str, Any]], key: str) -> tuple[list[int], np.ndarray]:
    """(steps, ``key`` per seed ``[S, n]``) at the steps every seed validated."""
    seeds = sorted({r["seed"] for r in rows})
    steps = sorted(set.intersection(*[{r["step"] for r in rows if r["seed"] == s} for s in seeds]))
    values = np.array([[next(r[key] for r in rows if r["seed"] == s and r["step"] == t)
                        for t in steps] for s in seeds], dtype=float)
    return [int(t) for t in steps], values


def _auto(rows: list[dict[str, Any]], calibration: Any) -> dict[str, Any]:
    """Where the calibration rule stops on these curves (validation interval: their spacing)."""
    from isdm.evaluation.plateau_rule import PlateauRule, first_stop

    steps, miou = _seed_curves(rows, "val_miou")
    _, nobg = _seed_curves(rows, "val_miou_nobg")
    val_every = steps[0] if steps else 1
    stop = first_stop(PlateauRule.from_config(calibration, val_every), steps, miou, nobg)
    return {"auto_steps": None if stop is None else stop.step,
            "auto_reason": "not within the curves" if stop is None else stop.decision}


def plateau_table(rows: list[dict[str, Any]], tol: float = 0.01,
                  calibration: Any = None) -> list[dict[str, Any]]:
    """Per (dataset, architecture): the seed-mean curve's best, plateau step, last-quarter
    rise and where ``evaluate.steps: auto`` would stop (module docstring; ``calibration``: an
    ``evaluate.calibration`` section, default the built-in one), for ``val_miou`` and
    ``val_miou_nobg``, and the cost."""
    from isdm.config.calibration import CalibrationConfig
    from isdm.evaluation.plateau_rule import quarter_rise

    calibration = calibration or CalibrationConfig()
    table = []
    for dataset, arch in dict.fromkeys((r["dataset"], r["arch"]) for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset and r["arch"] == arch]
        out: dict[str, Any] = {"dataset": dataset, "arch": arch,
                               "seeds": len({r["seed"] for r in sub})}
        for key in ("val_miou", "val_miou_nobg"):
            steps, mean, _ = _mean_curve(sub, key)
            best = float(np.nanmax(mean))
            out[f"{key}_best"] = best
            out[f"{key}_final"] = float(mean[-1])
            out[f"{key}_plateau_step"] = int(steps[np.argmax(mean >= best - tol)])
            out[f"{key}_last_quarter_rise"] = quarter_rise(mean)
        out.update(_auto(sub, calibration))
        seconds = sum(r["seconds"] for r in sub)
        total_steps = sum(max(r["step"] for r in sub if r["seed"] == s) for s in {r["seed"] for r in sub})
        out["steps"] = int(max(r["step"] for r in sub))
        out["s_per_step"] = seconds / total_steps
        out["steps_per_s"] = total_steps / seconds
        table.append(out)
    return table


def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> Any:
    """The seed-mean validation curves (± std), one row of two panels per dataset, as a PNG."""
    from matplotlib.figure import Figure

    from isdm.utils.io import atomic_path

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    colors = {a: f"C{i}" for i, a in enumerate(dict.fromkeys(r["arch"] for r in rows))}
    fig = Figure(figsize=(11, 3.6 * len(datasets)))
    axes = fig.subplots(len(datasets), 2, squeeze=False)
    for i, dataset in enumerate(datasets):
        for j, (key, title) in enumerate((("val_miou", "val mIoU"),
                                          ("val_miou_nobg", "val mIoU without background"))):
            ax = axes[i][j]
            for arch in dict.fromkeys(r["arch"] for r in rows if r["dataset"] == dataset):
                sub = [r for r in rows if r["dataset"] == dataset and r["arch"] == arch]
                steps, mean, std = _mean_curve(sub, key)
                n = len({r["seed"] for r in sub})
                ax.plot(steps, mean, color=colors[arch], label=f"{arch} ({n} seed{'s' * (n > 1)})")
                ax.fill_between(steps, mean - std, mean + std, color=colors[arch], alpha=0.2)
            ax.set_title(f"{dataset}: real-only {title}", fontsize=10)
            ax.set_xlabel("optimiser steps")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return fig


def write_outputs(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``plateau_<dataset>.csv`` per dataset and ``plateau.png`` into ``out_dir``."""
    from isdm.utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        lines = [",".join(_FIELDS)]
        lines += [",".join(str(r[f]) for f in _FIELDS) for r in rows if r["dataset"] == dataset]
        paths.append(out / f"plateau_{dataset}.csv")
        atomic_write_text(paths[-1], "\n".join(lines) + "\n")
    paths.append(out / "plateau.png")
    plot_curves(rows, paths[-1])
    return paths


def _recipe(cfg: Any, steps: int, val_every: int, **evaluate: Any) -> Any:
    return cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, steps=steps, val_every=val_every,
                                                    **evaluate))


def run(quick: bool = False, data_root: Optional[str | Path] = None,
        out_dir: str | Path = "bench") -> dict:
    """The bench entry: the embedded dataset and (when ``data_root`` holds it) CrackForest.
    quick: 1 seed, 40 steps; full: 3 seeds, 1000 steps (embedded) / 600 steps (CrackForest)."""
    from isdm.config import Config, DataConfig, SynthConfig, TrackingConfig
    from isdm.data.synth import write_synthetic_dataset

    seeds = [0] if quick else [0, 1, 2]
    base = Config(tracking=TrackingConfig(enabled=False))
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:  # a fresh cell store: every cell trained now
        write_synthetic_dataset(Path(tmp) / "data", SynthConfig())
        cfg = _recipe(base, 40 if quick else 1000, 10 if quick else 25)
        rows += curves(cfg, Path(tmp) / "data", "embedded", seeds, progress=True,
                       cell_cache=Path(tmp) / "cells")
        root = Path(data_root) if data_root else None
        if root is not None and (root / "train" / "images").is_dir():
            data = DataConfig(root=str(root), dataset_mode="binary", num_classes=2,
                              ignore_index=None, image_size=128)
            cfg = _recipe(base.replace(data=data), 40 if quick else 600, 10 if quick else 25,
                          image_size=128, batch_size=4)
            rows += curves(cfg, root, "crackforest", seeds, progress=True,
                           cell_cache=Path(tmp) / "cells")
        else:
            notes.append("CrackForest not given or not found (--crackforest DIR): embedded set "
                         "only")
    paths = write_outputs(rows, out_dir)
    notes.append(f"curves: {', '.join(str(p) for p in paths)}")
    return {"table": plateau_table(rows), "notes": notes}


def main(argv: Optional[list[str]] = None) -> int:
    from isdm.config import load_config

    parser = argparse.ArgumentParser(prog="python -m isdm.bench.plateau", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root (train/, test/)")
    parser.add_argument("--name", default=None, help="dataset name in the outputs (folder name)")
    parser.add_argument("-c", "--config", action="append", default=None,
                        help="config (params.yaml) for the recipe; repeat for overlays")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/plateau")
    parser.add_argument("--cell-cache", default=None,
                        help="cell store (default $ISDM_CELL_CACHE, else ./.isdm/cells)")
    parser.add_argument("--workers", type=int, default=None, help="evaluate.workers")
    parser.add_argument("--threads", type=int, default=None, help="evaluate.threads")
    args = parser.parse_args(argv)
    pool = [f"evaluate.{k}={v}" for k, v in (("workers", args.workers),
                                              ("threads", args.threads)) if v is not None]
    cfg = _recipe(load_config(args.config, [*args.overrides, *pool, "tracking.enabled=false"]),
                  args.steps, args.val_every)
    name = args.name or Path(args.data).resolve().name
    rows = curves(cfg, args.data, name, args.seeds, progress=True, cell_cache=args.cell_cache)
    paths = write_outputs(rows, args.out)
    from isdm.bench.__main__ import markdown_table

    print(markdown_table(plateau_table(rows, calibration=cfg.evaluate.calibration)))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
