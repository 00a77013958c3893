"""A trial's value: the paired validation-mIoU gain of real + synthetic over real only.

Repeat ``r = 0 .. R-1`` (``R = tune.repeats``) uses the segmenter seed ``seed_r = tune.seed +
r`` in EVERY trial. For each ``seed_r`` two downstream cells (:mod:`isdm.evaluation.cell`) of
``tune.architecture`` are planned with that seed, so they share the validation split, the real
training images, the initial weights and the batch-order seed (common random numbers): the
real-only cell ``RALLF000`` and the trial's cell ``RALLFALL`` (all real training images plus
the trial's synthetic set). Both train ``tune.eval_steps`` optimiser steps
(:func:`budget_config`), whatever their size, and give their best validation mIoU ``b_r`` and
``v_r``. The trial's value is

    d_r = v_r - b_r,    gain = mean_r d_r,    se = std(d_1 .. d_R, ddof=1) / sqrt(R)

(``se`` is None for R = 1). The differences remove what the seeds and the split do to both
cells alike; what is left is the synthetic set's effect plus the part of the seed noise that
the synthetic images change.

The real-only cells do not depend on the trial, so they are trained once per study
(:func:`study_baseline`): cached in ``<out>/baselines/<key>.json`` (``key`` digests the real
train files, the data keys, the evaluate recipe at the trial budget, the architecture, the
seeds and the device type) and stored in the study's user attribute :data:`BASELINE_ATTR`; with
several workers the first takes a file lock and trains them, the others wait and read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from isdm.config import Config, to_dict
from isdm.errors import TuningError

__all__ = ["Gain", "BASELINE_ATTR", "TRIAL_MIX", "budget_config", "repeat_seeds",
           "real_pool_size", "cell_val_miou", "paired_gain", "measure", "baseline_identity",
           "study_baseline"]

BASELINE_ATTR = "isdm.baseline"
TRIAL_MIX = "RALLFALL"
_NOT_RECIPE = ("architectures", "mixes", "seeds", "bootstrap")


@dataclasses.dataclass(frozen=True)
class Gain:
    """Per repeat: ``values`` (with synthetic), ``baseline`` (real only) and their differences
    ``diffs``; ``mean`` and standard error ``se`` (None for one repeat) of the differences."""

    values: tuple[float, ...]
    baseline: tuple[float, ...]
    diffs: tuple[float, ...]
    mean: float
    se: Optional[float]


def budget_config(cfg: Config) -> Config:
    """``cfg`` with the trial budget: ``evaluate.steps = tune.eval_steps``."""
    return cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, steps=cfg.tune.eval_steps))


def repeat_seeds(cfg: Config) -> list[int]:
    """The segmenter seeds of the repeats, the same for every trial of a study."""
    return [cfg.tune.seed + r for r in range(cfg.tune.repeats)]


def real_pool_size(cfg: Config, real_keys: Sequence[str]) -> int:
    """Real training images of a cell (the real train split minus its validation images;
    the same count for every seed)."""
    from isdm.evaluation.cell import split_validation

    return len(split_validation(real_keys, cfg.evaluate.val_fraction, cfg.tune.seed)[1])


def cell_val_miou(cfg: Config, mix: str, seed: int, real: Any, synthetic: Any) -> tuple[float, int]:
    """(best validation mIoU, optimiser steps) of the cell (``tune.architecture``, ``mix``,
    ``seed``) trained with ``cfg.evaluate``'s recipe on ``real`` + ``synthetic``
    (:class:`isdm.evaluation.segmenter.TensorSet` s at ``evaluate.image_size``)."""
    from isdm.evaluation.cell import plan_cell, train_cell
    from isdm.utils.runtime import resolve_device

    cell = plan_cell(cfg, cfg.tune.architecture, mix, seed, real.keys, synthetic.keys)
    _, fit = train_cell(cfg, cell, real, synthetic, device=resolve_device(cfg.runtime.device))
    return float(fit.best_val_miou), int(fit.steps)


def paired_gain(values: Sequence[float], baseline: Sequence[float]) -> Gain:
    """The :class:`Gain` of paired ``values`` and ``baseline`` (same length, same seeds)."""
    diffs = [v - b for v, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = None if n < 2 else math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    return Gain(tuple(values), tuple(baseline), tuple(diffs), mean, se)


def measure(cfg: Config, real: Any, synthetic: Any, baseline: Sequence[float],
            on_repeat: Optional[Callable[[int, Gain], None]] = None) -> Gain:
    """Train the trial's cell for every repeat seed and pair it with ``baseline``.

    ``cfg`` has the trial budget (:func:`budget_config`). ``on_repeat(r, gain so far)`` runs
    after each repeat (it may raise ``optuna.TrialPruned``). An empty ``synthetic`` set (the
    curation gate kept no pair) trains exactly the real-only cell, so its values are the
    baseline's and its gain is 0 without training.
    """
    values: list[float] = []
    gain = None
    for r, seed in enumerate(repeat_seeds(cfg)):
        values.append(cell_val_miou(cfg, TRIAL_MIX, seed, real, synthetic)[0] if len(synthetic)
                      else baseline[r])
        gain = paired_gain(values, baseline[:len(values)])
        if on_repeat is not None:
            on_repeat(r, gain)
    assert gain is not None  # tune.repeats >= 1
    return gain


def baseline_identity(cfg: Config, data_root: str | Path, device_type: str) -> dict[str, Any]:
    """What decides the real-only values: ``cfg`` at the trial budget (see module docstring)."""
    from isdm.curation.scorer import dataset_digest

    d = cfg.data
    return {"dataset_sha256": dataset_digest(data_root),
            "data": {"dataset_mode": d.dataset_mode, "num_classes": d.num_classes,
                     "ignore_index": d.ignore_index, "resize": d.resize},
            "evaluate": {k: v for k, v in to_dict(cfg.evaluate).items() if k not in _NOT_RECIPE},
            "architecture": cfg.tune.architecture, "seeds": repeat_seeds(cfg),
            "device": device_type}


def study_baseline(cfg: Config, data_root: str | Path, real: Any, study: Any,
                   out_dir: str | Path) -> tuple[list[float], bool]:
    """(best validation mIoU of the real-only cell per repeat seed, trained here?).

    Read from the study, else from ``<out_dir>/baselines/<key>.json``, else trained under the
    file lock and written to both. ``cfg`` has the trial budget.

    Raises:
        TuningError: the study holds a baseline of another recipe, dataset, seeds or device
            (its trials would not be comparable with this worker's).
    """
    from isdm.tuning.cache import digest, lock
    from isdm.utils.io import atomic_write_json
    from isdm.utils.runtime import resolve_device

    identity = baseline_identity(cfg, data_root, resolve_device(cfg.runtime.device).type)
    key = digest(identity)
    stored = study.user_attrs.get(BASELINE_ATTR)
    if stored is not None and stored["key"] != key:
        raise TuningError(
            f"study {study.study_name!r} was measured against another real-only baseline (key "
            f"{stored['key']}, this worker's {key}: the data, the evaluate recipe, tune.eval_steps, "
            "tune.architecture, tune.seed, tune.repeats or the device type differ); give a new "
            "--study-name, or the study's settings")
    if stored is not None:
        return list(stored["val_miou"]), False
    path = Path(out_dir) / "baselines" / f"{key}.json"
    trained = False
    with lock(path.with_suffix(".lock")):
        if not path.exists():
            from isdm.evaluation.loading import empty_set

            empty = empty_set(cfg)
            cells = [cell_val_miou(cfg, "RALLF000", seed, real, empty) for seed in repeat_seeds(cfg)]
            atomic_write_json(path, {"identity": identity, "seeds": repeat_seeds(cfg),
                                     "val_miou": [v for v, _ in cells],
                                     "steps": [n for _, n in cells]})
            trained = True
        values = json.loads(path.read_text())["val_miou"]
    study.set_user_attr(BASELINE_ATTR, {"key": key, "seeds": repeat_seeds(cfg), "val_miou": values})
    return list(values), trained
