"""Lineage: what generated a synthetic set, and which params, tags and datasets its runs log.

``isdm sample`` stores a generator record under ``"generator"`` in its output's ``run.json``
and ``summary.json`` (:func:`generator_record`)::

    checkpoint         the --checkpoint given: a path, or models:/isdm-sdm/<version>
    checkpoint_sha256  SHA-256 of the checkpoint file (as in manifest.jsonl and the MLflow tags)
    checkpoint_md5     MD5 of the file: DVC's hash of it in dvc.lock
    checkpoint_action  train | finetune: the command that wrote the checkpoint
    drop_rate          the mask drop rate the checkpoint was trained with (its finetune section's
                       for a finetuned checkpoint, its train section's otherwise)
    sample             the sampling run's whole `sample` section (s, steps, sampler, seed, ...)
    runs               MLflow run ids that were found: {"sample", "finetune", "train"}
    model_version      the registered version of isdm-sdm, when sampled from models:/

``isdm evaluate`` reads it back (:func:`read_generator`) and logs THOSE values as its generator
params (:func:`evaluate_params`: ``sample.*``, ``finetune.drop_rate``, ``generator.*``), never
today's params.yaml, and tags its run with the ids of the runs upstream (:func:`generator_tags`).

A run logs, from its own config, only the sections that describe what it did
(:func:`training_params`, :func:`sample_params`, :func:`evaluate_params`,
:func:`isdm.curation.run.run_params`): params.yaml's other sections may have changed since the checkpoint or
the synthetic set was made, and a ``params.sample.s`` filter in ``mlflow ui`` must find the
runs of sets sampled with that ``s``, not every run of a commit.

Datasets (MLflow inputs): :func:`real_dataset`, :func:`synthetic_dataset` and
:func:`mask_folder` describe a folder by DVC's hash of it and a profile that depends on the
folder alone (every split, class shares at the stored resolution), so one digest always has
one profile.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from isdm.config import Config, flatten, to_dict

__all__ = ["DatasetInfo", "generator_record", "read_generator", "generator_params",
           "generator_tags", "training_params", "sample_params", "evaluate_params",
           "class_shares",
           "real_dataset", "synthetic_dataset", "mask_folder"]

_SAMPLE_SECTIONS = ("data", "model", "diffusion", "tracking")  # + generator_params
_EVALUATE_SECTIONS = ("data", "evaluate", "tracking")  # + generator_params
_RUN_TAGS = {"sample": "isdm.sample_run_id", "finetune": "isdm.finetune_run_id",
             "train": "isdm.train_run_id"}


# ---- the generator record ---------------------------------------------------------------------
def generator_record(cfg: Config, meta: Mapping[str, Any], checkpoint: str, sha256: str,
                     md5: str, runs: Mapping[str, str], model_version: str = "") -> dict[str, Any]:
    """The record of a sampling run (see the module docstring). ``cfg`` is the resolved sampling
    config, ``meta`` the checkpoint's meta dict (``action``, ``drop_rate``)."""
    record = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256, "checkpoint_md5": md5,
              "checkpoint_action": meta.get("action", ""), "drop_rate": meta.get("drop_rate"),
              "sample": to_dict(cfg.sample), "runs": {k: v for k, v in runs.items() if v}}
    if model_version:
        record["model_version"] = model_version
    return record


def read_generator(folder: Optional[str | Path]) -> Optional[dict[str, Any]]:
    """The generator record of a sampling output folder (``run.json``, else ``summary.json``);
    None when there is none (a folder not written by ``isdm sample``, or by an older isdm)."""
    if folder is None:
        return None
    for name in ("run.json", "summary.json"):
        try:
            record = json.loads((Path(folder) / name).read_text()).get("generator")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("sample"), dict):
            return record
    return None


def generator_params(record: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """Dotted params of the generator: ``sample.*`` (the record's section), ``finetune.drop_rate``
    and ``generator.checkpoint`` / ``checkpoint_sha256`` / ``checkpoint_md5`` / ``action`` /
    ``model_version``. Empty without a record."""
    if not record:
        return {}
    params = flatten(dict(record["sample"]), "sample")
    if record.get("drop_rate") is not None:
        params["finetune.drop_rate"] = record["drop_rate"]
    for key, name in (("checkpoint", "checkpoint"), ("checkpoint_sha256", "checkpoint_sha256"),
                      ("checkpoint_md5", "checkpoint_md5"), ("checkpoint_action", "action"),
                      ("model_version", "model_version")):
        if record.get(key):
            params[f"generator.{name}"] = record[key]
    return params


def generator_tags(record: Optional[Mapping[str, Any]], folder: Any = None) -> dict[str, str]:
    """Tags that link a run to the generator's runs (``isdm.sample_run_id``,
    ``isdm.finetune_run_id``, ``isdm.train_run_id``) and checkpoint (``isdm.checkpoint_sha256``,
    ``isdm.checkpoint_md5``); without a record, ``isdm.generator`` says why there is none."""
    if not record:
        return {} if folder is None else {
            "isdm.generator": f"unknown: {folder} holds no generator record (run.json of "
                              "`isdm sample`), so no sample.* params are logged"}
    tags = {tag: record["runs"][key] for key, tag in _RUN_TAGS.items() if record["runs"].get(key)}
    tags.update({f"isdm.{k}": record[k] for k in ("checkpoint_sha256", "checkpoint_md5")
                 if record.get(k)})
    return tags


def _params(cfg: Config, sections: tuple[str, ...], record: Optional[Mapping[str, Any]]) -> dict:
    own = {k: v for k, v in flatten(cfg).items() if k.split(".", 1)[0] in sections}
    return {**own, **generator_params(record)}


def training_params(cfg: Config, action: str) -> dict[str, Any]:
    """A train / finetune run's params: data, model, diffusion, its own section (``train`` or
    ``finetune``) and tracking; sampling and evaluation settings belong to their runs."""
    return _params(cfg, ("data", "model", "diffusion", action, "tracking"), None)


def sample_params(cfg: Config, record: Mapping[str, Any]) -> dict[str, Any]:
    """A sample run's params: data, model, diffusion (the checkpoint's), tracking, and the
    generator (``sample.*``, ``finetune.drop_rate`` of the checkpoint, ``generator.*``)."""
    return _params(cfg, _SAMPLE_SECTIONS, record)


def evaluate_params(cfg: Config, record: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """An evaluate run's params: data, evaluate, tracking, and the generator of the synthetic
    set it evaluates (none without a record)."""
    return _params(cfg, _EVALUATE_SECTIONS, record)


# ---- datasets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """One dataset input of a run: ``digest`` is DVC's hash, ``profile`` JSON-ready."""

    name: str
    digest: str
    source: str
    profile: Mapping[str, Any] = field(default_factory=dict)


def class_shares(labels: Iterable[Any], num_classes: int) -> list[float]:
    """Fraction of the labelled pixels per class over label maps (arrays of class ids, any
    shape); other values (the ignore index, >= ``num_classes``) are left out. 6 digits."""
    counts = np.zeros(num_classes, np.int64)
    for lab in labels:
        ids = np.asarray(lab).ravel().astype(np.int64)
        counts += np.bincount(ids[(ids >= 0) & (ids < num_classes)], minlength=num_classes)
    total = int(counts.sum())
    return [round(int(c) / total, 6) if total else 0.0 for c in counts]


def real_dataset(root: str | Path, data_cfg: Any) -> DatasetInfo:
    """A real dataset folder: digest = DVC's hash of ``root`` (``dvc.lock``'s ``md5`` of
    ``data/synth``); profile = pairs and class shares of every split present."""
    from isdm.data.layout import SPLITS
    from isdm.data.validate import scan_dataset
    from isdm.utils.dvc_hash import md5_folder

    root = Path(root).resolve()
    splits = tuple(s for s in SPLITS if (root / s).is_dir())
    report = scan_dataset(root, data_cfg, splits)
    stats = report.splits
    profile = {"num_pairs": {s: stats[s].num_pairs for s in stats},
               "class_shares": {s: [round(x, 6) for x in stats[s].class_share()] for s in stats}}
    return DatasetInfo(root.name, md5_folder(root), str(root), profile)


def mask_folder(folder: str | Path, masks: list[np.ndarray], num_classes: int) -> DatasetInfo:
    """The mask folder of ``sample.mask_source: folder`` with its decoded ``masks``."""
    from isdm.utils.dvc_hash import md5_folder

    folder = Path(folder).resolve()
    profile = {"num_masks": len(masks), "class_shares": class_shares(masks, num_classes)}
    return DatasetInfo(folder.name, md5_folder(folder), str(folder), profile)


def synthetic_dataset(folder: str | Path, num_classes: int) -> DatasetInfo:
    """A sampling output folder as ``isdm evaluate`` reads it (``samples/`` + ``labels/``):
    digest = MD5 of DVC's hashes of the two folders (both in the profile, ``dvc_md5``, as
    ``dvc.lock`` lists them); class shares of the stored labels."""
    from PIL import Image

    from isdm.utils.dvc_hash import md5_folder

    folder = Path(folder).resolve()
    dvc_md5 = {sub: md5_folder(folder / sub) for sub in ("samples", "labels")}
    labels = sorted((folder / "labels").glob("*.png"))

    def ids(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img)

    profile = {"num_pairs": len(labels), "dvc_md5": dvc_md5,
               "class_shares": class_shares((ids(p) for p in labels), num_classes)}
    digest = hashlib.md5(json.dumps(dvc_md5, sort_keys=True).encode()).hexdigest()
    return DatasetInfo(folder.name, digest, str(folder), profile)


# ---- what an evaluate run logs ------------------------------------------------------------------
def track_evaluation(run: Any, cfg: Config, data_root: str | Path,
                     synthetic_dir: Optional[str | Path]) -> Optional[dict[str, Any]]:
    """Log an evaluate run's params (:func:`evaluate_params`), links (:func:`generator_tags`)
    and dataset inputs (the real dataset, the synthetic set); return the generator record of
    ``synthetic_dir`` (None without one) for :func:`track_downstream`."""
    record = read_generator(synthetic_dir)
    run.log_params(evaluate_params(cfg, record))
    run.set_tags(generator_tags(record, synthetic_dir))
    if run.run_id:
        run.log_dataset(real_dataset(data_root, cfg.data), "real")
        if synthetic_dir is not None:
            run.log_dataset(synthetic_dataset(synthetic_dir, cfg.data.num_classes), "synthetic")
    return record


def track_further_sets(run: Any, cfg: Config, sets: Mapping[str, str | Path]) -> None:
    """Log each further synthetic set of an evaluate run (e.g. ``curated``: a curated copy of the
    first set, made by the same generator) as a dataset input named by its set."""
    if run.run_id:
        for name, folder in sets.items():
            run.log_dataset(synthetic_dataset(folder, cfg.data.num_classes), name)


def track_downstream(run: Any, record: Optional[Mapping[str, Any]],
                     headline: Mapping[str, float]) -> None:
    """Log the evaluate run's ``headline`` metrics onto the sample run that made the synthetic
    set, so "s, steps, drop rate -> mIoU gain" compares on the sample runs alone."""
    from isdm.tracking.links import log_downstream

    log_downstream(run, record, headline)
