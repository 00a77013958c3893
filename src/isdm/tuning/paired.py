"""A trial's value: the paired validation-mIoU gain of real + synthetic over real only.

Repeat ``r = 0, 1, ...`` uses the segmenter seed ``seed_r = tune.seed + r`` in EVERY trial
(how many repeats a trial runs: ``tune.repeats``, or the adaptive rule of :mod:`.repeats`).
For each ``seed_r`` two downstream cells (:mod:`isdm.evaluation.cell`) of
``tune.architecture`` are planned with that seed, so they share the validation split, the real
training images, the initial weights and the batch-order seed (common random numbers): the
real-only cell ``RALLF000`` and the trial's cell ``RALLFALL`` (all real training images plus
the trial's synthetic set). Both train ``tune.eval_steps`` optimiser steps
(:func:`budget_config`; ``auto``: the calibrated steps of ``tune.architecture``,
:func:`resolve_budget`), whatever their size, and give their best validation mIoU ``b_r`` and
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
trial, so they are computed once per study and seed (:func:`study_baseline`, as far as the
repeats reach) and kept in the study's user attribute :data:`BASELINE_ATTR`; with several
workers the first takes a file lock and computes them, the others wait and read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from isdm.config import Config, to_dict
from isdm.errors import TuningError

__all__ = ["Gain", "BASELINE_ATTR", "TRIAL_MIX", "BASELINE_MIX", "budget_config",
           "resolve_budget", "repeat_seeds", "real_pool_size", "repeat_values", "paired_gain",
           "measure", "baseline_identity", "study_baseline", "StudyBaseline"]

BASELINE_ATTR = "isdm.baseline"
TRIAL_MIX = "RALLFALL"
BASELINE_MIX = "RALLF000"
# the protocol keys: the real-only cells train as `mix` whatever they say (the trials' cells
# have them in their spec), so a study's baseline does not depend on them
_NOT_RECIPE = ("architectures", "mixes", "seeds", "bootstrap", "workers", "threads",
               "calibration", "protocol", "pretrain_split", "synthetic_share", "protocols")


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
    """``cfg`` with the trial budget: ``evaluate.steps = tune.eval_steps`` (a number:
    :func:`resolve_budget` resolves ``auto``)."""
    if not isinstance(cfg.tune.eval_steps, int):
        raise TuningError(f"tune.eval_steps={cfg.tune.eval_steps!r} is not resolved to a number "
                          "of steps yet (isdm.tuning.paired.resolve_budget)")
    return cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, steps=cfg.tune.eval_steps))


def resolve_budget(cfg: Config, data_root: str | Path, cells: Any,
                   progress: bool = False) -> tuple[Config, Any]:
    """``(cfg with tune.eval_steps a number, its Calibration or None)``: with ``auto`` the
    calibrated steps of ``tune.architecture`` with the evaluate recipe and seeds
    (:func:`isdm.evaluation.calibration.calibrate`, cached in the cell store: evaluate and
    tune calibrate an architecture once), run on the study's pool."""
    if isinstance(cfg.tune.eval_steps, int):
        return cfg, None
    from isdm.evaluation.calibration import calibrate

    arch = cfg.tune.architecture
    calibration = calibrate(cfg, data_root, [arch], store=cells.store, device=cells.device,
                            progress=progress, pool=cells.pool)[arch]
    if calibration.void:
        print(f"warning: tune.eval_steps auto: the real-only {arch} still predicts (almost) no "
              f"defect pixel at {calibration.steps} steps (the cap): every trial's gain compares "
              "segmenters that found no defect", file=sys.stderr)
    return cfg.replace(tune=dataclasses.replace(cfg.tune, eval_steps=calibration.steps)), \
        calibration


def repeat_seeds(cfg: Config, n: Optional[int] = None) -> list[int]:
    """The segmenter seeds of the first ``n`` repeats (default ``tune.repeats``), the same for
    every trial of a study."""
    return [cfg.tune.seed + r for r in range(cfg.tune.repeats if n is None else n)]


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


Baseline = Callable[[int], Sequence[float]]


def measure(cfg: Config, real: Any, synthetic: Any, baseline: Sequence[float] | Baseline,
            on_repeat: Optional[Callable[[int, Gain], None]] = None, *,
            folder: Optional[str | Path] = None, cells: Any = None,
            plan: Optional[Callable[[Optional[Gain]], int]] = None) -> Gain:
    """Train the trial's cell for each repeat seed, rung by rung (the repeats of a rung side
    by side, :func:`repeat_values`), and pair it with the real-only ``baseline``.

    ``cfg`` has the trial budget (:func:`budget_config`); ``synthetic`` holds the images of
    ``folder``. ``baseline``: the real-only values per repeat, or a function ``n -> the first
    n`` (computing the seeds a rung adds, :class:`StudyBaseline`). ``plan(gain so far)`` gives
    the repeats the trial should have after its next rung (``plan(None)``: the first rung; no
    more than it has: stop; it may raise ``optuna.TrialPruned``); default: ``tune.repeats`` in
    one rung. ``on_repeat(r, gain so far)`` runs after each repeat, in repeat order. An empty
    ``synthetic`` set (the curation gate kept no pair) trains exactly the real-only cell, so
    its values are the baseline's and its gain is 0 without training.
    """
    values: list[float] = []
    gain: Optional[Gain] = None
    plan = plan or (lambda g: cfg.tune.repeats)
    target = plan(None)
    while target > len(values):
        base = list(baseline(target) if callable(baseline) else baseline[:target])
        seeds = repeat_seeds(cfg, target)[len(values):]
        if len(synthetic):
            source: Iterator[float] = (v for v, _ in repeat_values(cfg, TRIAL_MIX, real, synthetic,
                                                                    folder, cells, seeds))
        else:
            source = (b for b in base[len(values):target])
        with contextlib.closing(source):
            for value in source:
                values.append(value)
                gain = paired_gain(values, base[:len(values)])
                if on_repeat is not None:
                    on_repeat(len(values) - 1, gain)
        target = plan(gain)
    assert gain is not None, "a trial needs at least one repeat"
    return gain


def baseline_identity(cfg: Config, data_root: str | Path, device_type: str) -> dict[str, Any]:
    """What decides the real-only values: ``cfg`` at the trial budget (see module docstring);
    the value of repeat ``r`` is that of the seed ``tune.seed + r``, however many repeats a
    trial runs."""
    from isdm.data.digest import dataset_digest

    d = cfg.data
    return {"dataset_sha256": dataset_digest(data_root),
            "data": {"dataset_mode": d.dataset_mode, "num_classes": d.num_classes,
                     "ignore_index": d.ignore_index, "resize": d.resize},
            "evaluate": {k: v for k, v in to_dict(cfg.evaluate).items() if k not in _NOT_RECIPE},
            "architecture": cfg.tune.architecture, "seed": cfg.tune.seed,
            "device": device_type}


def study_baseline(cfg: Config, data_root: str | Path, real: Any, study: Any,
                   out_dir: str | Path, cells: Any, n: Optional[int] = None,
                   ) -> tuple[list[float], bool]:
    """(best validation mIoU of the real-only cell of the first ``n`` repeat seeds (default
    ``tune.repeats``), computed here?).

    Read from the study, else the missing seeds computed (from the cell store, or trained by
    ``cells``) under the file lock ``<out_dir>/baseline.lock`` and added to the study's
    :data:`BASELINE_ATTR` (``key``, ``seeds``, ``val_miou``, ``steps``). ``cfg`` has the
    trial budget.

    Raises:
        TuningError: the study holds a baseline of another recipe, dataset, steps, seed or
            device (its trials would not be comparable with this worker's).
    """
    from isdm.tuning.cache import digest, lock

    n = cfg.tune.repeats if n is None else n
    key = digest(baseline_identity(cfg, data_root, cells.device.type))

    def stored() -> list[float]:
        attr = study.user_attrs.get(BASELINE_ATTR)
        if attr is not None and attr["key"] != key:
            raise TuningError(
                f"study {study.study_name!r} was measured against another real-only baseline "
                f"(key {attr['key']}, this worker's {key}: the data, the evaluate recipe, "
                "tune.eval_steps, tune.architecture, tune.seed or the device type differ); "
                "give a new --study-name, or the study's settings")
        return [] if attr is None else list(attr["val_miou"])

    if len(values := stored()) >= n:
        return values[:n], False
    with lock(Path(out_dir) / "baseline.lock", what="the study's real-only baseline"):
        values = stored()  # another worker may have computed some while we waited
        if len(values) >= n:
            return values[:n], False
        from isdm.evaluation.loading import empty_set

        seeds = repeat_seeds(cfg, n)[len(values):]
        values += [v for v, _ in repeat_values(cfg, BASELINE_MIX, real, empty_set(cfg), None,
                                                cells, seeds)]
        study.set_user_attr(BASELINE_ATTR, {"key": key, "seeds": repeat_seeds(cfg, n),
                                            "val_miou": values,
                                            "steps": cfg.evaluate.steps})
    return values, True


class StudyBaseline:
    """The study's real-only values as :func:`measure` asks for them: ``baseline(n)`` = the
    first ``n`` (:func:`study_baseline`: seeds computed once per study, when a trial first
    needs them); ``count`` = the seeds computed so far."""

    def __init__(self, cfg: Config, data_root: str | Path, real: Any, study: Any,
                 out_dir: str | Path, cells: Any) -> None:
        self.cfg, self.data_root, self.real = cfg, data_root, real
        self.study, self.out_dir, self.cells = study, out_dir, cells

    def __call__(self, n: int) -> list[float]:
        return study_baseline(self.cfg, self.data_root, self.real, self.study, self.out_dir,
                              self.cells, n)[0]

    @property
    def count(self) -> int:
        attr = self.study.user_attrs.get(BASELINE_ATTR)
        return 0 if attr is None else len(attr["val_miou"])
