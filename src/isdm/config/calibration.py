"""The ``evaluate.calibration`` section: the stopping rule of ``evaluate.steps: auto``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from isdm.config.checks import Problem, Section, at_least, in_range

__all__ = ["CalibrationConfig"]


@dataclass(frozen=True)
class CalibrationConfig(Section):
    """How ``evaluate.steps: auto`` (and ``tune.eval_steps: auto``) chooses the optimiser steps
    of an architecture (:mod:`isdm.evaluation.calibration`; the rule:
    :mod:`isdm.evaluation.plateau_rule`).

    The real-only cells of every ``evaluate.seeds`` train in lockstep, ``check_every``
    validations (K = ``check_every`` x ``val_every`` steps) at a time; after each chunk, at step
    N, the seed-mean validation mIoU curve (validations at ``val_every``, 2 ``val_every``, ...,
    N) gives

        rise = mean(last quarter of the curve) - mean(the quarter before)
        threshold = max(rise_floor, rise_se * sigma / sqrt(S))

    with ``sigma`` the seed-to-seed std of the curve (mean over the points of its last half;
    one seed: the point-to-point noise of its curve) and S the seeds. The curve has plateaued
    at N when N >= ``min_steps``, the curve holds at least 8 validations (two per quarter) and
    ``rise < threshold``: the curve gained less over its last quarter than the noise of one of
    its points, so training longer moves the baseline by less than re-drawing its seeds would.
    ``max_steps`` caps the calibration (a cost bound: "cap reached" in the report). A curve whose
    seed-mean validation mIoU WITHOUT background stays below ``min_defect_iou`` over its last
    quarter has not learned the defects (e.g. it predicts background only): flat there is not a
    plateau, calibration goes on to the cap, and a baseline still below it there makes the
    comparison void (the report says so).

    None of these keys changes a cell (they are not in a cell's key): they choose N, and N is.
    """

    SECTION = "evaluate.calibration"
    RULES = {
        "min_steps": (at_least(0),),
        "max_steps": (at_least(1),),
        "check_every": (at_least(1),),
        "rise_se": (at_least(0),),
        "rise_floor": (at_least(0),),
        "min_defect_iou": (in_range(0, 1),),
    }

    min_steps: int = 0
    max_steps: int = 2000
    check_every: int = 5
    rise_se: float = 1.0
    rise_floor: float = 0.001
    min_defect_iou: float = 0.05

    def _problems(self) -> Iterable[Problem]:
        if self.min_steps > self.max_steps:
            yield Problem("min_steps", self.min_steps,
                          f"must be <= evaluate.calibration.max_steps={self.max_steps}")
        if self.rise_se == 0 and self.rise_floor == 0:
            yield Problem("rise_floor", self.rise_floor, "rise_se=0 and rise_floor=0 stop only "
                          "on a falling curve: give a rise_se (e.g. 1.0) or a rise_floor > 0")

