"""Does the tuning objective separate the top of a study from its noise? Fixed vs adaptive
repeats, and the noise / spread of the objective.

**Rules** (the default, ``python -m isdm.bench --only tune``): two studies of the same trials,
one with today's fixed repeats (``tune.pruning: false``: ``tune.repeats`` per trial) and one
with the adaptive rule (``tune.pruning: true``, :mod:`isdm.tuning.repeats`), exactly as
``isdm tune`` runs them (:func:`isdm.tuning.run_study`, final check off), at the config's
budget (``tune.eval_steps``: ``auto`` = the calibrated steps). Trial ``k`` draws the same knobs
in both (TPE samples at random for every trial here: ``tune.sampler_startup_trials`` =
``n_trials``, seeded by trial number), and both studies share the finetune cache, the sampled
sets and the cell store (a cell both need is trained once; what each study USED is counted).
Per study, among its ``top`` complete trials of the highest gain (:func:`top_separation`):

- ``spread`` = the std (ddof 1) of their gains;
- ``se`` = the root mean square of their standard errors ``sigma / sqrt(r_i)`` (``sigma``: the
  study's pooled noise of one repeat, ``r_i``: the trial's repeats);
- ``spread_over_se`` (>= 3: the top is separated from its noise), and the segmenter cells
  and steps the study used (``summary.json``'s accounting).

**Corners** (``--corners``, the former benchmark): the noise of ONE setting (the config's own
knobs, ``k`` segmenter seeds: ``sigma_1`` and ``se_R = sigma_1 / sqrt(R)``) against the spread
of the objective at the four corners ``sample.s`` in {``s_low``, ``s_high``} x
``synthetic_ratio`` in {min, max of ``tune.ratios``} (gate off, :func:`signal_noise`).

Sizes: quick = a tiny SDM (32 px, 30 training steps) on a 12-image embedded set, 10-step cells,
a handful of trials: a smoke test of the machinery, its numbers mean nothing; full = the config
(``./params.yaml`` and ``pipelines/tune/params.yaml`` if present), the embedded dataset
(``data/synth`` if present, else written from ``synth``), the checkpoint
``$ISDM_BENCH_CHECKPOINT`` or ``models/sdm/best.pt`` (else one is trained with the config's
``train`` section), ``tune.n_trials`` trials per study (``--trials``).
``python -m isdm.bench.tune_bench [-c params.yaml] [--set tune.max_repeats=8 ...] [--trials N]
[--top K] [--corners --seeds K] [--data DIR --checkpoint CKPT] [--cell-cache DIR]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["run", "compare_rules", "top_separation", "measure_settings", "signal_noise", "main"]

_QUICK = ["model.preset=tiny", "data.image_size=32", "synth.image_size=32", "synth.num_train=12",
          "synth.num_test=4", "train.batch_size=4", "train.max_steps=10", "train.max_epochs=0",
          "finetune.batch_size=4", "finetune.max_steps=2", "sample.batch_size=8", "sample.steps=2",
          "sample.num_samples=8",
          "evaluate.image_size=32", "evaluate.val_every=5", "evaluate.batch_size=4",
          "tune.eval_steps=5", "tune.repeats=2", "tune.steps=[2]", "tune.ratios=[0.25,0.5]",
          "tune.drop_rates=[0.2]", "tune.samplers=[ddim]", "tune.finetune_epochs=1",
          "tune.n_trials=3", "tune.min_repeats=1", "tune.max_repeats=3",
          "tune.pruning_startup_trials=1", "tune.curate_min_fidelity=[]",
          "tune.curate_pixel_thresholds=[]"]
RULES = {"fixed": "tune.pruning=false", "adaptive": "tune.pruning=true"}


def _settings(cfg: Any, n_real: int) -> list[tuple[str, dict[str, Any]]]:
    """(name, knobs) of the noise setting and the four corners (gate off)."""
    from isdm.tuning.final_check import current_params

    t = cfg.tune
    own = {**current_params(cfg, n_real), "curate.min_fidelity": 0.0, "curate.pixel_threshold": 0.0}
    corners = [(f"corner s={s:g} ratio={r:g}", {**own, "sample.s": s, "synthetic_ratio": r})
               for s in (t.s_low, t.s_high) for r in (min(t.ratios), max(t.ratios))]
    return [("noise: config knobs", own), *corners]


def measure_settings(cfg: Any, data_root: str | Path, checkpoint: str | Path, work: str | Path,
                     noise_seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One row per setting of :func:`_settings`: its paired differences per seed (the cells of
    a setting side by side on the pool, into the cell store ``<work>/cells``)."""
    from isdm.tuning.cells import StudyCells
    from isdm.tuning.paired import resolve_budget

    with StudyCells(cfg, data_root, cell_cache=Path(work) / "cells") as cells:
        cfg, _ = resolve_budget(cfg, data_root, cells)
        return _measure(cfg, data_root, checkpoint, work, noise_seeds, cells)


def _measure(cfg: Any, data_root: str | Path, checkpoint: str | Path, work: str | Path,
             noise_seeds: Sequence[int], cells: Any) -> list[dict[str, Any]]:
    from isdm.evaluation.loading import empty_set
    from isdm.sampling import run_sampling
    from isdm.tuning import paired
    from isdm.tuning.cache import finetuned_checkpoint
    from isdm.tuning.objective import (
        generator_config,
        load_real_train,
        load_synthetic_set,
    )

    bcfg = paired.budget_config(cfg)
    real = load_real_train(bcfg, data_root)
    n_real = paired.real_pool_size(bcfg, real.keys)
    seeds = sorted(set(noise_seeds) | set(paired.repeat_seeds(cfg)))
    t0 = time.perf_counter()
    empty = empty_set(bcfg)
    base = dict(zip(seeds, (v for v, _ in paired.repeat_values(bcfg, "RALLF000", real, empty, None,
                                                                cells, seeds))))
    rows = [{"setting": "real-only baseline", "seeds": len(seeds),
             "val_miou_mean": statistics.fmean(base.values()),
             "seconds": time.perf_counter() - t0}]
    for i, (name, knobs) in enumerate(_settings(cfg, n_real)):
        t0 = time.perf_counter()
        tcfg = paired.budget_config(generator_config(cfg, knobs, n_real))
        ckpt = finetuned_checkpoint(tcfg, data_root, checkpoint, work)
        folder = Path(work) / f"set{i}"
        run_sampling(tcfg, data_root, ckpt, folder, overwrite=True)
        synth = load_synthetic_set(tcfg, folder)
        run_seeds = list(noise_seeds) if i == 0 else paired.repeat_seeds(cfg)
        values = paired.repeat_values(tcfg, paired.TRIAL_MIX, real, synth, folder, cells, run_seeds)
        diffs = [v - base[s] for (v, _), s in zip(values, run_seeds)]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        rows.append({"setting": name, "s": knobs["sample.s"],
                     "synthetic_ratio": knobs["synthetic_ratio"],
                     "n_synthetic": len(synth), "seeds": len(diffs),
                     "gain_mean": statistics.fmean(diffs), "gain_sd": sd,
                     "gain_se": sd / math.sqrt(len(diffs)), "seconds": time.perf_counter() - t0})
    return rows


def signal_noise(rows: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """The summary row: ``sigma_1``, ``se_R``, the corners' spread (std, range) and their ratio."""
    noise = next(r for r in rows if r["setting"].startswith("noise"))
    corners = [r["gain_mean"] for r in rows if r["setting"].startswith("corner")]
    se_r = noise["gain_sd"] / math.sqrt(repeats)
    spread = statistics.stdev(corners)
    if spread == 0:
        ratio, verdict = 0.0, ("no signal: every corner scored the same (at this budget the "
                               "segmenters do not tell the synthetic sets apart)")
    else:
        ratio = spread / se_r if se_r > 0 else math.inf
        verdict = ("spread clearly exceeds noise" if ratio >= 2 else
                   "spread about the noise: the search cannot tell these settings apart"
                   if ratio < 1.5 else "spread marginally above noise")
    return {"setting": "signal / noise", "sigma_1": noise["gain_sd"], "se_R": se_r,
            "repeats": repeats, "spread_sd": spread, "spread_range": max(corners) - min(corners),
            "spread_over_se": ratio, "verdict": verdict}


def _checkpoint(cfg: Any, data_root: Path, work: Path, quick: bool) -> Path:
    """The bench's SDM: ``$ISDM_BENCH_CHECKPOINT``, ``models/sdm/best.pt``, or trained here."""
    from isdm.training import train

    for path in ([] if quick else [os.environ.get("ISDM_BENCH_CHECKPOINT"), "models/sdm/best.pt"]):
        if path and Path(path).is_file():
            return Path(path)
    train(cfg, data_root, work / "sdm", progress=False)
    return work / "sdm" / "best.pt"


def top_separation(rows: Sequence[dict[str, Any]], top: int = 3) -> dict[str, Any]:
    """Spread / se among the ``top`` complete trials of a study's ``trials.csv`` rows (module
    docstring): ``top``, ``best_gain``, ``best_repeats``, ``sigma``, ``spread``, ``se``,
    ``spread_over_se``."""
    from isdm.tuning.repeats import pooled_sd

    def diffs(row: dict[str, Any]) -> list[float]:
        keys = sorted((k for k in row if k.startswith("gain_r") and row[k] not in ("", None)),
                      key=lambda k: int(k[6:]))
        return [float(row[k]) for k in keys]

    sigma = pooled_sd([diffs(r) for r in rows if r["state"] != "FAIL"])
    done = sorted((r for r in rows if r["state"] == "COMPLETE" and r.get("gain") not in ("", None)),
                  key=lambda r: -float(r["gain"]))[:top]
    gains = [float(r["gain"]) for r in done]
    spread = statistics.stdev(gains) if len(gains) > 1 else float("nan")
    ses = [sigma / math.sqrt(len(diffs(r))) for r in done] if sigma is not None else []
    se = math.sqrt(statistics.fmean([x * x for x in ses])) if ses else float("nan")
    if spread == 0:
        ratio = 0.0
    else:
        ratio = spread / se if se > 0 else (math.inf if math.isfinite(spread) else float("nan"))
    return {"top": len(done), "best_gain": gains[0] if gains else float("nan"),
            "best_repeats": len(diffs(done[0])) if done else 0,
            "sigma": float("nan") if sigma is None else sigma, "spread": spread, "se": se,
            "spread_over_se": ratio}


def _read_csv(path: Path) -> list[dict[str, Any]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def compare_rules(cfg: Any, data_root: str | Path, checkpoint: str | Path, work: str | Path,
                  n_trials: int, top: int = 3,
                  cell_cache: Optional[str | Path] = None) -> list[dict[str, Any]]:
    """One row per rule (``fixed``, ``adaptive``): the study of ``n_trials`` trials and its
    top's separation (:func:`top_separation`), the segmenter cells and steps it used."""
    from isdm.config import Config, apply_overrides, from_dict, to_dict
    from isdm.tuning import run_study

    rows = []
    for rule, setting in RULES.items():
        rcfg = from_dict(Config, apply_overrides(to_dict(cfg), [
            setting, f"tune.sampler_startup_trials={n_trials}", "tune.final_check=false",
            "tracking.enabled=false"]))
        t0 = time.perf_counter()
        summary = run_study(rcfg, data_root, checkpoint, Path(work) / "study", n_trials=n_trials,
                            study_name=f"bench-{rule}", progress=False,
                            cell_cache=cell_cache or Path(work) / "cells")
        cells = summary.get("segmenter_cells") or {}
        rows.append({"rule": rule, "trials": summary["n_trials"],
                     "complete": summary["complete"], "pruned": summary["pruned"],
                     **top_separation(_read_csv(Path(work) / "study" / "trials.csv"), top),
                     "eval_steps": summary.get("eval_steps"),
                     "segmenter_cells": cells.get("total"),
                     "fixed_repeats_cells": cells.get("fixed_total"),
                     "segmenter_steps": summary.get("segmenter_steps"),
                     "seconds": time.perf_counter() - t0})
    return rows


def _verdict(rows: list[dict[str, Any]]) -> str:
    fixed, adaptive = (next(r for r in rows if r["rule"] == k) for k in ("fixed", "adaptive"))
    cheaper = (adaptive["segmenter_steps"] or 0) <= (fixed["segmenter_steps"] or 0)
    return (f"adaptive: spread / se {adaptive['spread_over_se']:.2f} among the top "
            f"{adaptive['top']} at {adaptive['segmenter_steps']} segmenter steps; fixed: "
            f"{fixed['spread_over_se']:.2f} at {fixed['segmenter_steps']} "
            f"({'no more' if cheaper else 'MORE'} steps than fixed; the goal: >= 3)")


def _prepare(quick: bool, config: Any, overrides: Sequence[str], data_root: Any) -> tuple:
    from isdm.config import load_config

    if config is None and not quick and Path("params.yaml").is_file():
        config = [p for p in ("params.yaml", "pipelines/tune/params.yaml") if Path(p).is_file()]
    cfg = load_config(config, [*(_QUICK if quick else []), "tracking.enabled=false",
                               "runtime.progress=false", *overrides])
    if data_root is None and not quick and Path("data/synth/train").is_dir():
        data_root = "data/synth"
    return cfg, data_root


def run(quick: bool = False, config: Optional[str | Path | Sequence[str | Path]] = None,
        overrides: Sequence[str] = (), data_root: Optional[str | Path] = None,
        checkpoint: Optional[str | Path] = None, seeds: Optional[int] = None,
        corners: bool = False, trials: Optional[int] = None, top: int = 3,
        cell_cache: Optional[str | Path] = None) -> dict:
    """The bench entry (module docstring): the rules (default) or the corners; ``table``: one
    row per rule (or per setting and the summary row)."""
    from isdm.data.synth import write_synthetic_dataset

    cfg, data_root = _prepare(quick, config, overrides, data_root)
    t0 = time.perf_counter()
    dataset = str(data_root or "the embedded set (synth section), written to a temp folder")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if data_root is None:
            data_root = work / "synth"
            write_synthetic_dataset(data_root, cfg.synth)
        ckpt = Path(checkpoint) if checkpoint else _checkpoint(cfg, Path(data_root), work, quick)
        if corners:
            return _corners(cfg, data_root, ckpt, work, seeds or (3 if quick else 5), quick,
                            dataset, t0)
        n = trials or cfg.tune.n_trials
        rows = compare_rules(cfg, data_root, ckpt, work, n, top, cell_cache)
    t, e = cfg.tune, cfg.evaluate
    notes = [f"{n} trials per study, {t.architecture} at {e.image_size} px, batch "
             f"{e.batch_size}, eval_steps {rows[0]['eval_steps']} ({t.eval_steps}); fixed: "
             f"{t.repeats} repeats; adaptive: {t.min_repeats} -> {t.repeats} -> "
             f"{max(t.max_repeats, t.repeats)} repeats, z {t.prune_z:g}, decisions after "
             f"{t.pruning_startup_trials} complete trials; data {dataset}",
             f"{_verdict(rows)}; wall {time.perf_counter() - t0:.0f} s"
             + ("; quick: a smoke test, not a measurement" if quick else "")]
    return {"table": rows, "notes": notes}


def _corners(cfg: Any, data_root: Any, ckpt: Path, work: Path, k: int, quick: bool,
             dataset: str, t0: float) -> dict:
    """The noise / spread of the objective at the four corners (module docstring)."""
    rows = measure_settings(cfg, data_root, ckpt, work, list(range(cfg.tune.seed,
                                                                    cfg.tune.seed + k)))
    summary = signal_noise(rows, cfg.tune.repeats)
    t, e = cfg.tune, cfg.evaluate
    notes = [f"budget: tune.eval_steps={t.eval_steps} (val every {e.val_every}), "
             f"tune.repeats={t.repeats}, {t.architecture} at {e.image_size} px, batch "
             f"{e.batch_size}, ratios {list(t.ratios)}, s in [{t.s_low:g}, {t.s_high:g}], "
             f"{k} noise seeds; data {dataset}",
             f"{summary['verdict']} (spread / se_R = {summary['spread_over_se']:.2f}); wall "
             f"{time.perf_counter() - t0:.0f} s" + ("; quick: a smoke test, not a measurement"
                                                     if quick else "")]
    return {"table": [*rows, summary], "notes": notes, "summary": summary}


def main(argv: Optional[list[str]] = None) -> int:
    from isdm.bench.__main__ import markdown_table

    parser = argparse.ArgumentParser(prog="python -m isdm.bench.tune_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None,
                        help="config files, base then overlays (default ./params.yaml and "
                             "pipelines/tune/params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", default=None, help="embedded dataset root (default data/synth)")
    parser.add_argument("--checkpoint", default=None, help="SDM checkpoint (default models/sdm/best.pt)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per study (default tune.n_trials)")
    parser.add_argument("--top", type=int, default=3, help="top trials compared (default 3)")
    parser.add_argument("--cell-cache", default=None,
                        help="cell store (default: a fresh one in a temp folder)")
    parser.add_argument("--corners", action="store_true",
                        help="the noise / spread of the objective at the four corners instead")
    parser.add_argument("--seeds", type=int, default=None,
                        help="--corners: noise seeds k (default 5)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    res = run(args.quick, args.config, args.overrides, args.data, args.checkpoint, args.seeds,
              corners=args.corners, trials=args.trials, top=args.top, cell_cache=args.cell_cache)
    print(markdown_table(res["table"]))
    for line in res["notes"]:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
