"""Does the tuning objective see more than its own noise? Noise vs spread of the paired gain.

The objective of ``isdm tune`` (:mod:`isdm.tuning.paired`) is measured here exactly as a trial
measures it (same finetune cache, sampling, cells; the curation gate off, so that only the
generator's knobs move), on the embedded pipeline at the config's tune budget
(``tune.eval_steps``, ``tune.repeats``, ``tune.ratios``, ``evaluate.image_size``):

- **noise**: ONE setting (the config's own knobs) with ``k`` segmenter seeds; each seed ``i``
  gives a paired difference ``d_i`` (one repeat). ``sigma_1`` = their std (ddof 1); a trial's
  value, the mean of ``R = tune.repeats`` such differences, has the standard error
  ``se_R = sigma_1 / sqrt(R)``;
- **spread**: the objective itself (``R`` repeats, seeds ``tune.seed`` ...) at the corners of the
  search space that matter most: ``sample.s`` in {``s_low``, ``s_high``} x ``synthetic_ratio`` in
  {min, max of ``tune.ratios``} (drop rate, sampler and steps at the config's values);
  ``spread`` = std of the four corner values;
- **spread_over_se** = ``spread / se_R``. Four values of pure noise have an expected std of about
  ``se_R`` (ratio ~1); the search can tell settings apart when the ratio is clearly above 1
  (``>= 2`` is called clear here).

One row per setting (seeds, mean, std and se of the differences, seconds) and a summary row.
Sizes: quick = a tiny SDM (32 px, 30 training steps) on a 12-image embedded set, 10-step
cells, 3 noise seeds, 2 repeats: a smoke test of the machinery, its numbers mean nothing;
full = the config (``./params.yaml`` and ``pipelines/tune/params.yaml`` if present), the
embedded dataset (``data/synth`` if present, else written from ``synth``), the checkpoint
``$ISDM_BENCH_CHECKPOINT`` or
``models/sdm/best.pt`` (else one is trained with the config's ``train`` section), 5 noise seeds.
``python -m isdm.bench.tune_bench [-c params.yaml] [--set tune.eval_steps=400 ...] [--seeds K]
[--data DIR --checkpoint CKPT]`` runs other budgets.
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

__all__ = ["run", "measure_settings", "signal_noise", "main"]

_QUICK = ["model.preset=tiny", "data.image_size=32", "synth.image_size=32", "synth.num_train=12",
          "synth.num_test=4", "train.batch_size=4", "train.max_steps=30", "train.max_epochs=0",
          "finetune.batch_size=4", "finetune.max_steps=4", "sample.batch_size=8", "sample.steps=3",
          "sample.num_samples=8",
          "evaluate.image_size=32", "evaluate.val_every=5", "tune.eval_steps=10", "tune.repeats=2",
          "tune.steps=[3]", "tune.ratios=[0.5,1.0]", "tune.finetune_epochs=1"]


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

    with StudyCells(cfg, data_root, cell_cache=Path(work) / "cells") as cells:
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


def run(quick: bool = False, config: Optional[str | Path | Sequence[str | Path]] = None,
        overrides: Sequence[str] = (), data_root: Optional[str | Path] = None,
        checkpoint: Optional[str | Path] = None, seeds: Optional[int] = None) -> dict:
    """The bench entry (module docstring); ``table``: one row per setting and the summary row."""
    from isdm.config import load_config
    from isdm.data.synth import write_synthetic_dataset

    if config is None and not quick and Path("params.yaml").is_file():
        config = [p for p in ("params.yaml", "pipelines/tune/params.yaml") if Path(p).is_file()]
    cfg = load_config(config, [*(_QUICK if quick else []), "tracking.enabled=false",
                               "runtime.progress=false", *overrides])
    k = seeds or (3 if quick else 5)
    t0 = time.perf_counter()
    if data_root is None and not quick and Path("data/synth/train").is_dir():
        data_root = "data/synth"
    dataset = str(data_root or "the embedded set (synth section), written to a temp folder")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if data_root is None:
            data_root = work / "synth"
            write_synthetic_dataset(data_root, cfg.synth)
        ckpt = Path(checkpoint) if checkpoint else _checkpoint(cfg, Path(data_root), work, quick)
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
    parser.add_argument("--seeds", type=int, default=None, help="noise seeds k (default 5)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    res = run(args.quick, args.config, args.overrides, args.data, args.checkpoint, args.seeds)
    print(markdown_table(res["table"]))
    for line in res["notes"]:
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
