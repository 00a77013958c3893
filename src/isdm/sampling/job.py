"""``isdm sample``: generate exactly ``num_samples`` synthetic image/mask pairs into a folder.

Steps of :func:`run_sampling`:

1. Load the checkpoint (EMA weights; the model, chain and image size come from its own config).
2. Load the source masks and plan every sample (:mod:`isdm.sampling.plan`): sample i's mask,
   augmentation and seed are pure functions of ``(sample.seed, i, masks, config)``.
3. Claim the output folder (:class:`isdm.sampling.writer.OutputDir`): a folder written by a
   different config or checkpoint is refused unless ``overwrite``.
4. Generate the samples of this shard (``i % N == shard_index``) whose four files do not all
   exist yet, batch by batch, writing each batch at once (memory flat in ``num_samples``).
5. Rewrite the manifest, write ``grid.png`` and ``summary.json``, log to MLflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from isdm.config import Config, flatten, save_config, to_dict
from isdm.sampling.balance import Choice
from isdm.sampling.writer import OutputDir, sample_name

__all__ = ["run_sampling", "run_identity", "parse_shard"]

GRID_SAMPLES = 16


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> ``(1, 4)``; raises ValueError with the expected form."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def run_identity(cfg: Config, ckpt_hash: str) -> dict[str, Any]:
    """What decides the bytes of the outputs: the checkpoint's hash and every sample / data
    setting except the batch size (batch composition does not change a sample) and
    ``num_samples`` (sample i's plan does not depend on it, so a run can be extended later)."""
    sample = to_dict(cfg.sample)
    sample.pop("batch_size")
    sample.pop("num_samples")
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "num_workers", "hflip")}
    return {"checkpoint_sha256": ckpt_hash, "sample": sample, "data": data}


def _record(i: int, name: str, choice: Choice, key: str, ops: Sequence[str], cfg: Config,
            ckpt_hash: str) -> dict[str, Any]:
    from isdm.sampling.plan import sample_seed

    s = cfg.sample
    return {
        "index": i, "file": name, "source_mask": key, "source_index": choice.source,
        "augmentation": list(ops), "aug_seed": choice.aug_seed,
        "seed": s.seed, "sample_seed": sample_seed(s.seed, i), "checkpoint_sha256": ckpt_hash,
        "sampler": s.sampler, "steps": s.steps, "eta": s.eta, "s": s.s,
        "precision": s.precision,
    }


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for k in range(0, len(items), size):
        yield items[k:k + size]


def run_sampling(
    cfg: Config,
    data_root: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    device: str = "auto",
    max_new: Optional[int] = None,
) -> dict[str, Any]:
    """Generate ``cfg.sample.num_samples`` samples into ``out_dir`` (resuming, sharded).

    Args:
        cfg: the run config (``sample`` and ``data`` sections; the network comes from the
            checkpoint).
        data_root: dataset folder with ``train/images`` and ``train/masks``.
        checkpoint: ``best.pt`` of ``isdm train`` / ``isdm finetune``.
        out_dir: output folder (see :mod:`isdm.sampling.writer` for its layout).
        shard: ``(i, N)``: generate only samples with ``index % N == i``.
        overwrite: clear a folder written by another run instead of refusing.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        max_new: stop after generating this many new samples (time-boxed runs; the next run
            resumes). None = no limit.

    Returns:
        The summary dict also written to ``summary.json``.
    """
    from isdm import tracking
    from isdm.sampling.engine import load_engine
    from isdm.sampling.mask_sources import load_mask_set
    from isdm.sampling.plan import make_plan, materialize, sample_seed
    from isdm.training.checkpoint import checkpoint_hash
    from isdm.utils.runtime import resolve_device

    shard_i, shard_n = shard
    if not 0 <= shard_i < shard_n:
        raise ValueError(f"shard={shard}: need 0 <= i < N")
    # 1. checkpoint
    dev = resolve_device(device)
    ckpt_hash = checkpoint_hash(checkpoint)
    engine, cfg, meta = load_engine(cfg, checkpoint, dev)
    s = cfg.sample
    # 2. masks and plan
    masks = load_mask_set(cfg, data_root, cfg.data.image_size)
    plan = make_plan(cfg, masks)
    names = [sample_name(i, masks.entries[c.source].key) for i, c in enumerate(plan.choices)]
    # 3. output folder
    distribution = plan.distribution.report()
    _log_distribution(distribution)
    out = OutputDir(out_dir)
    resumed = out.prepare(run_identity(cfg, ckpt_hash),
                          {"checkpoint": str(checkpoint), "data_root": str(data_root),
                           "class_distribution": distribution},
                          num_samples=s.num_samples, overwrite=overwrite)
    save_config(cfg, out.root / "config.json")
    mine = list(range(shard_i, s.num_samples, shard_n))
    if resumed:  # drop torn lines of a killed run before appending to the manifest
        records = out.read_records()
        out.finalize_manifest(r for i, r in records.items()
                              if 0 <= i < s.num_samples and r.get("file") == names[i]
                              and out.is_complete(names[i]))
    todo = [i for i in mine if not out.is_complete(names[i])]
    skipped = len(mine) - len(todo)
    pending = todo if max_new is None else todo[:max_new]

    name = f"sample {s.sampler} {s.steps} steps s={s.s}"
    with tracking.start_run(cfg.tracking, name=name, action="sample", dataset=str(data_root),
                            params=flatten(cfg), tags={"isdm.checkpoint_sha256": ckpt_hash}) as run:
        # 4. generate, one batch at a time
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        with tqdm(total=len(pending), unit="img", desc=f"sample {shard_i}/{shard_n}") as bar:
            for batch in _batches(pending, s.batch_size):
                items = [materialize(plan.choices[i], masks, cfg) for i in batch]
                labels = np.stack([m for m, _, _ in items])
                images = engine(labels, [sample_seed(s.seed, i) for i in batch])
                for i, (mask, real, ops), gen in zip(batch, items, images):
                    out.write_sample(names[i], real, mask, gen)
                    out.append_record(_record(i, names[i], plan.choices[i],
                                              masks.entries[plan.choices[i].source].key, ops,
                                              cfg, ckpt_hash))
                bar.update(len(batch))
        seconds = time.perf_counter() - t0
        # 5. manifest, grid, summary
        summary = _finish(out, cfg, plan, masks, names, ckpt_hash, distribution, meta,
                          generated=len(pending), skipped=skipped, seconds=seconds, shard=shard, resumed=resumed)
        _track(run, out, summary)
    return summary


def _finish(out: OutputDir, cfg: Config, plan: Any, masks: Any, names: list[str], ckpt_hash: str,
            distribution: dict, meta: dict, *, generated: int, skipped: int, seconds: float,
            shard: tuple[int, int], resumed: bool) -> dict[str, Any]:
    from isdm.sampling.plan import materialize
    from isdm.utils.io import atomic_write_json

    s = cfg.sample
    records = out.read_records()
    complete = [i for i in range(s.num_samples) if out.is_complete(names[i])]
    final = []
    for i in complete:
        rec = records.get(i)
        if rec is None or rec.get("file") != names[i]:
            # finished by a concurrent shard whose line landed after our read: rebuild it
            _, _, ops = materialize(plan.choices[i], masks, cfg, with_image=False)
            rec = _record(i, names[i], plan.choices[i], masks.entries[plan.choices[i].source].key,
                          ops, cfg, ckpt_hash)
        final.append(rec)
    out.finalize_manifest(final)
    out.write_grid([names[i] for i in complete[:GRID_SAMPLES]])
    summary = {
        "num_samples": s.num_samples,
        "complete": len(complete),
        "missing": s.num_samples - len(complete),
        "shard": f"{shard[0]}/{shard[1]}",
        "this_run": {
            "generated": generated,
            "skipped_existing": skipped,
            "resumed": resumed,
            "seconds": round(seconds, 3),
            "seconds_per_image": round(seconds / generated, 4) if generated else None,
            "images_per_s": round(generated / seconds, 4) if generated and seconds > 0 else None,
        },
        "sampler": s.sampler, "steps": s.steps, "s": s.s, "precision": s.precision,
        "mask_source": s.mask_source, "balanced": plan.balanced,
        "distinct_layouts": len(set(plan.choices)),
        "checkpoint_sha256": ckpt_hash, "weights": meta.get("weights"),
        "class_distribution": distribution,
    }
    atomic_write_json(out.root / "summary.json", summary)
    return summary


def _log_distribution(report: dict) -> None:
    import logging

    log = logging.getLogger("isdm.sample")
    fmt = lambda side: ", ".join(f"{c}: {p:.3f}" for c, p in report[side]["shares"].items())  # noqa
    log.info("class %s shares before (source masks): %s; imbalance %.4f",
             report["basis"], fmt("before"), report["before"]["imbalance"])
    log.info("class %s shares after (%s): %s; imbalance %.4f", report["basis"],
             "generated only" if report["from_generated_only"] else "real + generated",
             fmt("after"), report["after"]["imbalance"])
    for note in report["notes"]:
        log.info("balance: %s", note)


def _track(run: Any, out: OutputDir, summary: dict) -> None:
    this = summary["this_run"]
    metrics = {"generated": this["generated"], "skipped_existing": this["skipped_existing"],
               "complete": summary["complete"], "sample_seconds": this["seconds"]}
    if this["seconds_per_image"] is not None:
        metrics["seconds_per_image"] = this["seconds_per_image"]
        metrics["images_per_s"] = this["images_per_s"]
    dist = summary["class_distribution"]
    for side in ("before", "after"):
        metrics[f"class_imbalance_{side}"] = dist[side]["imbalance"]
        for c, share in dist[side]["shares"].items():
            metrics[f"class_share_{side}.{c}"] = share
    run.log_metrics(metrics)
    for name in ("grid.png", "summary.json", "config.json", "manifest.jsonl"):
        run.log_artifact(out.root / name)
