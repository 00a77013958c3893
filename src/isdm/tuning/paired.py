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

Every cell is an evaluate cell (:mod:`isdm.evaluation.cell`) run by the study's pool into the
cell store (:class:`isdm.tuning.cells.StudyCells`, :func:`repeat_values`): the repeats of a
trial train side by side, and a cell already in the store (keyed by the real train files, the
data keys, the evaluate recipe at the trial budget, the architecture, mix, seed, the synthetic
set's files and the device type) is read, not trained. The real-only cells do not depend on the
trial, so they are computed once per study (:func:`study_baseline`) and kept in the study's
user attribute :data:`BASELINE_ATTR`; with several workers the first takes a file lock and
computes them, the others wait and read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from isdm.config import Config, to_dict
from isdm.errors import TuningError

__all__ = ["Gain", "BASELINE_ATTR", "TRIAL_MIX", "BASELINE_MIX", "budget_config",
           "repeat_seeds", "real_pool_size", "repeat_values", "paired_gain", "measure",
           "baseline_identity", "study_baseline"]

BASELINE_ATTR = "isdm.baseline"
TRIAL_MIX = "RALLFALL"
BASELINE_MIX = "RALLF000"
# the protocol keys: the real-only cells train as `mix` whatever they say (the trials' cells
# have them in their spec), so a study's baseline does not depend on them
_NOT_RECIPE = ("architectures", "mixes", "seeds", "bootstrap", "workers", "threads",
               "protocol", "pretrain_split", "synthetic_share", "protocols")


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


def repeat_values(cfg: Config, mix: str, real: Any, synthetic: Any, folder: Optional[str | Path],
                  cells: Any, seeds: Optional[Sequence[int]] = None) -> Iterator[tuple[float, int]]:
    """``(best validation mIoU, optimiser steps)`` of the cell (``tune.architecture``, ``mix``,
    seed) for each of ``seeds`` (default :func:`repeat_seeds`), in that order, trained with
    ``cfg.evaluate``'s recipe on ``real`` + ``synthetic`` (the images of ``folder``; None for
    ``RALLF000``) by ``cells`` (a :class:`isdm.tuning.cells.StudyCells`: side by side, from
    the store when there)."""
    jobs = cells.jobs(cfg, mix, repeat_seeds(cfg) if seeds is None else seeds, real, synthetic,
                      folder)
    yield from cells.values(jobs)


def paired_gain(values: Sequence[float], baseline: Sequence[float]) -> Gain:
    """The :class:`Gain` of paired ``values`` and ``baseline`` (same length, same seeds)."""
    diffs = [v - b for v, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = None if n < 2 else math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    return Gain(tuple(values), tuple(baseline), tuple(diffs), mean, se)


def measure(cfg: Config, real: Any, synthetic: Any, baseline: Sequence[float],
            on_repeat: Optional[Callable[[int, Gain], None]] = None, *,
            folder: Optional[str | Path] = None, cells: Any = None) -> Gain:
    """Train the trial's cell for every repeat seed (side by side, :func:`repeat_values`) and
    pair it with ``baseline``.

    ``cfg`` has the trial budget (:func:`budget_config`); ``synthetic`` holds the images of
    ``folder``. ``on_repeat(r, gain so far)`` runs after each repeat, in repeat order (it may
    raise ``optuna.TrialPruned``: the repeats not yet started are cancelled). An empty
    ``synthetic`` set (the curation gate kept no pair) trains exactly the real-only cell, so
    its values are the baseline's and its gain is 0 without training.
    """
    values: list[float] = []
    gain = None
    if len(synthetic):
        source: Iterator[float] = (v for v, _ in repeat_values(cfg, TRIAL_MIX, real, synthetic,
                                                                folder, cells))
    else:
        source = (b for b in baseline[:cfg.tune.repeats])
    with contextlib.closing(source):  # a pruned trial cancels the repeats not yet started
        for r, value in enumerate(source):
            values.append(value)
            gain = paired_gain(values, baseline[:len(values)])
            if on_repeat is not None:
                on_repeat(r, gain)
    assert gain is not None  # tune.repeats >= 1
    return gain


def baseline_identity(cfg: Config, data_root: str | Path, device_type: str) -> dict[str, Any]:
    """What decides the real-only values: ``cfg`` at the trial budget (see module docstring)."""
    from isdm.data.digest import dataset_digest

    d = cfg.data
    return {"dataset_sha256": dataset_digest(data_root),
            "data": {"dataset_mode": d.dataset_mode, "num_classes": d.num_classes,
                     "ignore_index": d.ignore_index, "resize": d.resize},
            "evaluate": {k: v for k, v in to_dict(cfg.evaluate).items() if k not in _NOT_RECIPE},
            "architecture": cfg.tune.architecture, "seeds": repeat_seeds(cfg),
            "device": device_type}


def study_baseline(cfg: Config, data_root: str | Path, real: Any, study: Any,
                   out_dir: str | Path, cells: Any) -> tuple[list[float], bool]:
    """(best validation mIoU of the real-only cell per repeat seed, computed here?).

    Read from the study, else computed (from the cell store, or trained by ``cells``) under
    the file lock ``<out_dir>/baseline.lock`` and written to the study. ``cfg`` has the trial
    budget.

    Raises:
        TuningError: the study holds a baseline of another recipe, dataset, seeds or device
            (its trials would not be comparable with this worker's).
    """
    from isdm.tuning.cache import digest, lock

    identity = baseline_identity(cfg, data_root, cells.device.type)
    key = digest(identity)

    def stored() -> Optional[list[float]]:
        attr = study.user_attrs.get(BASELINE_ATTR)
        if attr is not None and attr["key"] != key:
            raise TuningError(
                f"study {study.study_name!r} was measured against another real-only baseline "
                f"(key {attr['key']}, this worker's {key}: the data, the evaluate recipe, "
                "tune.eval_steps, tune.architecture, tune.seed, tune.repeats or the device type "
                "differ); give a new --study-name, or the study's settings")
        return None if attr is None else list(attr["val_miou"])

    if (values := stored()) is not None:
        return values, False
    with lock(Path(out_dir) / "baseline.lock"):
        if (values := stored()) is not None:  # another worker computed it while we waited
            return values, False
        from isdm.evaluation.loading import empty_set

        values = [v for v, _ in repeat_values(cfg, BASELINE_MIX, real, empty_set(cfg), None,
                                               cells)]
        study.set_user_attr(BASELINE_ATTR, {"key": key, "seeds": repeat_seeds(cfg),
                                            "val_miou": values})
    return values, True
