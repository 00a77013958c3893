"""``isdm sample``: generate exactly ``num_samples`` synthetic image/mask pairs into a folder.

Steps of :func:`run_sampling`:

1. Validate every file the mask source reads (all problems at once, before any work).
2. Load the checkpoint (EMA weights; the model, chain and image size come from its own config).
3. Load the source masks and plan every sample (:mod:`isdm.sampling.plan`): sample i's mask,
   augmentation and seed are pure functions of ``(sample.seed, i, masks, config)``.
4. Claim the output folder (:class:`isdm.sampling.writer.OutputDir`): a folder written by a
   different config or checkpoint is refused unless ``overwrite``.
5. Generate the samples of this shard (``i % N == shard_index``) that are not complete (a
   manifest record whose four files have the recorded sizes and digests), batch by batch,
   writing each batch at once (memory flat in ``num_samples``).
6. Rewrite the manifest, write ``grid.png`` and ``summary.json``, log to MLflow.

Lineage: ``run.json`` and ``summary.json`` get a ``generator`` block (checkpoint digests, the
checkpoint's drop rate, the sample section, the MLflow ids of this sample run and of the
finetune / train runs that made the checkpoint): :mod:`isdm.lineage`. ``--checkpoint`` may name
a registered model version, ``models:/isdm-sdm/<version>`` (:mod:`isdm.tracking.registry`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from isdm.config import Config, save_config, to_dict
from isdm.sampling.mask_sources import MaskSet, validate_mask_source
from isdm.sampling.plan import Plan, make_plan, materialize, sample_seed
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
    sample.pop("guidance_without_null_label")  # a permission, not a setting of the samples
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "hflip")}
    return {"checkpoint_sha256": ckpt_hash, "sample": sample, "data": data}


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
    device: Optional[str] = None,
    max_new: Optional[int] = None,
) -> dict[str, Any]:
    """Generate ``cfg.sample.num_samples`` samples into ``out_dir`` (resuming, sharded).

    Args:
        cfg: the run config (``sample`` and ``data`` sections; the network comes from the
            checkpoint).
        data_root: dataset folder with ``train/images`` and ``train/masks``.
        checkpoint: ``best.pt`` of ``isdm train`` / ``isdm finetune``, or a registered version
            ``models:/isdm-sdm/<version>`` (also ``/latest`` or ``@<alias>``).
        out_dir: output folder (see :mod:`isdm.sampling.writer` for its layout).
        shard: ``(i, N)``: generate only samples with ``index % N == i``.
        overwrite: delete the files isdm recorded writing in ``out_dir`` (a run of another
            config or checkpoint, or this one's) and start afresh; refused before anything is
            deleted when its per-sample folders hold other files.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...; None = ``cfg.runtime.device``.
        max_new: stop after generating this many new samples (time-boxed runs; the next run
            resumes). None = no limit.

    Returns:
        The summary dict also written to ``summary.json``.
    """
    from isdm.sampling.engine import load_engine
    from isdm.sampling.mask_sources import load_mask_set
    from isdm.training.checkpoint import checkpoint_hash
    from isdm.utils import ownership
    from isdm.utils.runtime import resolve_device

    shard_i, shard_n = shard
    if not 0 <= shard_i < shard_n:
        raise ValueError(f"shard={shard}: need 0 <= i < N")
    check_max_new(max_new)
    ownership.check_not_in_split(out_dir)
    # 1. the source files, before the checkpoint is loaded
    validate_mask_source(cfg, data_root)
    # 2. checkpoint (the network, chain and image size come from it)
    source = str(checkpoint)
    checkpoint, model = _local_checkpoint(source, cfg)
    ckpt_hash = checkpoint_hash(checkpoint)
    engine, cfg, meta = load_engine(
        cfg, checkpoint, resolve_device(cfg.runtime.device if device is None else device))
    # 3. masks and plan
    masks = load_mask_set(cfg, data_root, cfg.data.image_size)
    plan = make_plan(cfg, masks)
    _log_distribution(plan.distribution.report())
    # 4. output folder: one process per shard (the shards of one run share it)
    lock = ownership.LOCK if shard_n == 1 else f".isdm.{shard_i}-{shard_n}.lock"
    with ownership.exclusive(out_dir, "sample", name=lock):
        job = _Job(cfg, masks, plan, OutputDir(out_dir), ckpt_hash)
        return _generate(job, engine, meta, data_root, source, checkpoint, model, shard=shard,
                         overwrite=overwrite, max_new=max_new)


def check_max_new(max_new: Optional[int]) -> None:
    """Raises ConfigError for a negative ``--max-new``."""
    from isdm.errors import ConfigError

    if max_new is not None and max_new < 0:
        raise ConfigError(f"--max-new {max_new}: the number of new samples to generate in this "
                          "run must be >= 0 (0 only rewrites the manifest and summary); leave "
                          "it out to generate every missing sample")


def _generate(job: "_Job", engine: Any, meta: dict, data_root: str | Path, source: str,
              checkpoint: Path, model: dict[str, str], *, shard: tuple[int, int],
              overwrite: bool, max_new: Optional[int]) -> dict[str, Any]:
    """Steps 4-6 of :func:`run_sampling`, the folder's lock held."""
    from isdm import lineage, tracking
    from isdm.tracking import links
    from isdm.utils.dvc_hash import md5_file
    from isdm.utils.io import atomic_write_json

    cfg, sampling, (shard_i, shard_n) = job.cfg, job.cfg.sample, shard
    distribution, ckpt_hash = job.plan.distribution.report(), job.ckpt_hash
    resumed = job.out.prepare(run_identity(cfg, ckpt_hash),
                              {"checkpoint": source, "data_root": str(data_root),
                               "class_distribution": distribution},
                              num_samples=sampling.num_samples, overwrite=overwrite)
    save_config(cfg, job.out.root / "config.json")
    mine = range(shard_i, sampling.num_samples, shard_n)
    todo = job.incomplete(mine)
    this_run = todo if max_new is None else todo[:max_new]

    name = f"sample {sampling.sampler} {sampling.steps} steps s={tracking.short(sampling.s)}"
    with tracking.start_run(cfg.tracking, name=name, action="sample", dataset=str(data_root),
                            tags={"isdm.checkpoint_sha256": ckpt_hash}) as run:
        runs = {**links.producer_runs(run, ckpt_hash, model.get("model_run_id", "")),
                "sample": run.run_id or ""}
        generator = lineage.generator_record(cfg, meta, source, ckpt_hash, md5_file(checkpoint),
                                             runs, model.get("model_version", ""))
        run.log_params(lineage.sample_params(cfg, generator))
        run.set_tags(lineage.generator_tags(generator))
        if run.run_id:
            run.log_dataset(_masks_dataset(cfg, data_root, job.masks), "masks")
        # 5. generate, one batch at a time
        seconds = job.generate(engine, this_run, desc=f"sample {shard_i}/{shard_n}")
        # 6. manifest, grid, summary
        done = job.out.finalize_manifest(job.names, job.verified)
        job.out.write_grid([job.names[i] for i in done[:GRID_SAMPLES]])
        summary = _summary(job, done, distribution, meta, generated=len(this_run),
                           skipped=len(mine) - len(todo), seconds=seconds, shard=shard,
                           resumed=resumed)
        summary["generator"] = generator
        atomic_write_json(job.out.root / "summary.json", summary)
        _record_generator(job.out.root / "run.json", generator)
        _track(run, job.out, summary)
        if run.run_id:
            run.log_dataset(lineage.synthetic_dataset(job.out.root, cfg.data.num_classes),
                            "generated")
    return summary


def _local_checkpoint(checkpoint: str, cfg: Config) -> tuple[Path, dict[str, str]]:
    """The checkpoint file and, for a ``models:/`` URI, the registered version it came from
    (downloaded once into the cache)."""
    from isdm.tracking import registry, resolve_tracking_uri

    if not registry.is_model_uri(checkpoint):
        return Path(checkpoint), {}
    return registry.resolve_checkpoint(checkpoint, resolve_tracking_uri(cfg.tracking.tracking_uri))


def _masks_dataset(cfg: Config, data_root: str | Path, masks: MaskSet) -> Any:
    """The source of the conditioning masks as an MLflow dataset input."""
    from isdm import lineage

    if cfg.sample.mask_source == "folder":
        return lineage.mask_folder(cfg.sample.mask_dir, masks.masks, cfg.data.num_classes)
    return lineage.real_dataset(data_root, cfg.data)


def _record_generator(run_file: Path, generator: dict[str, Any]) -> None:
    """Add the generator record to ``run.json`` (its identity, which decides reuse, stays)."""
    import json

    from isdm.utils.io import atomic_write_json

    atomic_write_json(run_file, {**json.loads(run_file.read_text()), "generator": generator})


@dataclass
class _Job:
    """What the steps of one sampling run share."""

    cfg: Config
    masks: MaskSet
    plan: Plan
    out: OutputDir
    ckpt_hash: str
    names: list[str] = field(init=False)
    verified: dict[int, dict] = field(init=False, default_factory=dict)  # complete, checked here

    def __post_init__(self) -> None:
        self.names = [sample_name(i, self.masks.entries[c.source].key)
                      for i, c in enumerate(self.plan.choices)]

    def incomplete(self, indices: Sequence[int]) -> list[int]:
        """The ``indices`` without a record of their planned file whose four files verify;
        the others go to :attr:`verified`."""
        records = self.out.read_records()
        todo = []
        for i in indices:
            rec = records.get(i)
            if rec is not None and rec["file"] == self.names[i] and self.out.verify(rec):
                self.verified[i] = rec
            else:
                todo.append(i)
        return todo

    def record(self, i: int, ops: Sequence[str], files: dict[str, Any]) -> dict[str, Any]:
        """Sample i's manifest line: a pure function of the plan (no times; the files' sizes
        and digests are of deterministic PNG bytes), so reruns, resumes and shards write
        identical manifests."""
        sampling, choice = self.cfg.sample, self.plan.choices[i]
        return {
            "index": i, "file": self.names[i], "source_mask": self.masks.entries[choice.source].key,
            "source_index": choice.source, "augmentation": list(ops), "aug_seed": choice.aug_seed,
            "seed": sampling.seed, "sample_seed": sample_seed(sampling.seed, i),
            "checkpoint_sha256": self.ckpt_hash, "sampler": sampling.sampler,
            "steps": sampling.steps, "eta": sampling.eta, "s": sampling.s,
            "precision": sampling.precision, "files": files,
        }

    def generate(self, engine: Any, indices: list[int], desc: str) -> float:
        """Generate and write the samples ``indices`` batch by batch; return the seconds.

        Each batch's names are first appended as ``pending`` lines (the proof that isdm wrote
        the files, should the run die before their records); each sample's record follows its
        four files."""
        from isdm.utils import progress

        sampling = self.cfg.sample
        t0 = time.perf_counter()
        with progress.bar(total=len(indices), unit="img", desc=desc,
                          enabled=self.cfg.runtime.progress) as bar:
            for batch in _batches(indices, sampling.batch_size):
                self.out.append({"index": i, "file": self.names[i], "pending": True}
                                for i in batch)
                items = [materialize(self.plan.choices[i], self.masks, self.cfg) for i in batch]
                images = engine(np.stack([c.mask for c in items]),
                                [sample_seed(sampling.seed, i) for i in batch])
                for i, cond, gen in zip(batch, items, images):
                    files = self.out.write_sample(self.names[i], cond.image, cond.mask, gen)
                    rec = self.record(i, cond.ops, files)
                    self.out.append([rec])
                    self.verified[i] = rec
                bar.update(len(batch))
        return time.perf_counter() - t0


def _summary(job: _Job, done: list[int], distribution: dict, meta: dict, *, generated: int,
             skipped: int, seconds: float, shard: tuple[int, int], resumed: bool) -> dict:
    sampling = job.cfg.sample
    return {
        "num_samples": sampling.num_samples,
        "complete": len(done),
        "missing": sampling.num_samples - len(done),
        "shard": f"{shard[0]}/{shard[1]}",
        "this_run": {
            "generated": generated,
            "skipped_existing": skipped,
            "resumed": resumed,
            "seconds": round(seconds, 3),
            "seconds_per_image": round(seconds / generated, 4) if generated else None,
            "images_per_s": round(generated / seconds, 4) if generated and seconds > 0 else None,
        },
        "sampler": sampling.sampler, "steps": sampling.steps, "s": sampling.s,
        "precision": sampling.precision, "mask_source": sampling.mask_source,
        "balanced": job.plan.balanced,
        "distinct_layouts": len(set(job.plan.choices)),
        "checkpoint_sha256": job.ckpt_hash, "weights": meta.get("weights"),
        "class_distribution": distribution,
    }


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
