"""When has a real-only baseline stopped learning? The stopping rule of ``evaluate.steps: auto``.

The one home of the rule: the calibration (:mod:`isdm.evaluation.calibration`) applies it
between chunks of training, the plateau bench (:mod:`isdm.bench.plateau`) applies it to whole
recorded curves, so both say the same thing about the same curve.

Input: the validation curves of S seeds, ``miou[s, j]`` and ``nobg[s, j]`` (validation mIoU with
and without background) at the steps ``t_j = j * val_every``, ``j = 1 .. n``, so ``N = t_n``.
With ``m_j`` the seed mean of ``miou[:, j]`` and ``q = max(1, n // 4)``:

    rise(N)      = mean(m_{n-q+1} .. m_n) - mean(m_{n-2q+1} .. m_{n-q})
    sigma(N)     = mean over the last 2q points of std_s(miou[s, j]) (ddof 1); one seed:
                   sqrt(mean((m_{j+1} - m_j)^2) / 2) over those points (white noise around a
                   smooth curve)
    threshold(N) = max(rise_floor, rise_se * sigma(N) / sqrt(S))
    defect(N)    = mean(seed mean of nobg over the last q points)

Decision at a check at N: ``plateau`` when N >= ``min_steps``, n >= :data:`MIN_VALIDATIONS`,
defect(N) >= ``min_defect_iou`` and rise(N) < threshold(N); else ``cap`` when N >= ``max_steps``;
else ``continue``. sigma / sqrt(S) is the standard error of one point of the seed-mean curve:
a rise below it is within what another draw of the seeds would move a single validation. The
background test keeps a curve flat at the background-only level (a segmenter that predicts no
defect pixel) from passing for a plateau.

Checks happen at the ends of chunks of ``check_every`` validations (:meth:`PlateauRule.checks`);
the first at the first chunk end where the rule may stop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["MIN_VALIDATIONS", "PlateauRule", "Check", "quarter_rise", "curve_noise", "check",
           "first_stop"]

MIN_VALIDATIONS = 8  # two validations per quarter at least


@dataclass(frozen=True)
class PlateauRule:
    """The rule's parameters (``evaluate.calibration``) and the validation interval in steps."""

    val_every: int
    check_every: int = 5
    min_steps: int = 0
    max_steps: int = 2000
    rise_se: float = 1.0
    rise_floor: float = 0.001
    min_defect_iou: float = 0.05

    @classmethod
    def from_config(cls, calibration: Any, val_every: int) -> "PlateauRule":
        """The rule of an ``evaluate.calibration`` section at a resolved ``val_every``."""
        return cls(val_every=int(val_every), **asdict(calibration))

    @property
    def chunk(self) -> int:
        """K: steps between two checks (a multiple of ``val_every``)."""
        return self.check_every * self.val_every

    def checks(self) -> list[int]:
        """The steps at which the rule is checked: the chunk ends from the first one where it
        may stop (``min_steps`` and :data:`MIN_VALIDATIONS` reached), and the cap."""
        first = max(self.min_steps, MIN_VALIDATIONS * self.val_every)
        k = self.chunk
        start = max(k, -(-first // k) * k)
        return [s for s in range(start, self.max_steps, k)] + [self.max_steps]

    def describe(self) -> str:
        """The rule in one sentence (report.md)."""
        first = max(self.min_steps, MIN_VALIDATIONS * self.val_every)
        return (f"validation every {self.val_every} steps, checked every {self.chunk} steps; "
                f"stop at the first check N >= {first} "
                f"where the seed-mean validation mIoU rose by less than max({self.rise_floor:g}, "
                f"{self.rise_se:g} x its standard error) over the last quarter of the curve "
                f"(mean of the last quarter minus the quarter before) and the defect classes "
                f"score at least {self.min_defect_iou:g} IoU; at most {self.max_steps} steps")


@dataclass(frozen=True)
class Check:
    """One check of the rule at ``step`` (see the module docstring); ``decision`` is
    ``continue``, ``plateau`` or ``cap``."""

    step: int
    validations: int
    rise: float
    noise: float
    threshold: float
    defect_iou: float
    background_only: bool
    decision: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Check":
        """From :meth:`as_dict` after strict JSON (NaN stored as null)."""
        return cls(**{k: (float("nan") if v is None else v) for k, v in data.items()})

    def evidence(self) -> str:
        """``rise +0.0031 < 0.0087 over the last quarter at 600 steps`` and the like."""
        cmp = "<" if self.rise < self.threshold else ">="
        text = (f"rise {self.rise:+.4f} {cmp} threshold {self.threshold:.4f} over the last "
                f"quarter at {self.step} steps")
        if self.decision == "cap":
            text = f"cap reached ({self.step} steps): {text}"
        if self.background_only:
            text += (f"; background only (defect IoU {self.defect_iou:.4f} < the rule's "
                     "minimum)")
        return text


def quarter_rise(curve: Sequence[float]) -> float:
    """Mean of the last quarter of ``curve`` minus the mean of the quarter before (quarters of
    ``max(1, n // 4)`` points; NaN for fewer than 2 points)."""
    mean = np.asarray(curve, dtype=float)
    if mean.size < 2:
        return float("nan")
    q = max(1, mean.size // 4)
    return float(np.nanmean(mean[-q:]) - np.nanmean(mean[-2 * q:-q]))


def curve_noise(curves: np.ndarray) -> float:
    """sigma of the module docstring for ``curves[S, n]``: the seed-to-seed std over the last
    2q points, or for one seed the point-to-point noise of its curve (NaN when undefined)."""
    curves = np.atleast_2d(np.asarray(curves, dtype=float))
    n = curves.shape[1]
    window = curves[:, -2 * max(1, n // 4):]
    if curves.shape[0] >= 2:
        return float(np.nanmean(np.nanstd(window, axis=0, ddof=1)))
    steps = np.diff(window[0])
    return float(math.sqrt(np.nanmean(steps ** 2) / 2)) if steps.size else float("nan")


def check(rule: PlateauRule, steps: Sequence[float], miou: np.ndarray, nobg: np.ndarray,
          at: Optional[int] = None) -> Check:
    """The rule at step ``at`` (default the last of ``steps``; a cap between two validations
    is later than the last) for ``miou`` / ``nobg``: ``[S, n]``, columns at ``steps``."""
    miou, nobg = np.atleast_2d(np.asarray(miou, float)), np.atleast_2d(np.asarray(nobg, float))
    n, seeds = miou.shape[1], miou.shape[0]
    step = int(steps[-1] if at is None else at)
    mean = np.nanmean(miou, axis=0)
    rise = quarter_rise(mean)
    noise = curve_noise(miou)
    se = noise / math.sqrt(seeds) if math.isfinite(noise) else 0.0
    threshold = max(rule.rise_floor, rule.rise_se * se)
    q = max(1, n // 4)
    defect = float(np.nanmean(np.nanmean(nobg, axis=0)[-q:]))
    background = not defect >= rule.min_defect_iou  # NaN: no defect pixel anywhere
    flat = math.isfinite(rise) and rise < threshold
    if step >= rule.min_steps and n >= MIN_VALIDATIONS and flat and not background:
        decision = "plateau"
    else:
        decision = "cap" if step >= rule.max_steps else "continue"
    return Check(step, n, rise, noise, threshold, defect, background, decision)


def first_stop(rule: PlateauRule, steps: Sequence[float], miou: np.ndarray,
               nobg: np.ndarray) -> Optional[Check]:
    """Replay the rule on recorded curves (validations at ``steps``, every ``val_every``):
    the first check whose decision is not ``continue``, or None when the curves end before
    one (the plateau bench: where ``auto`` would have stopped)."""
    steps = [int(s) for s in steps]
    miou, nobg = np.atleast_2d(np.asarray(miou, float)), np.atleast_2d(np.asarray(nobg, float))
    for at in rule.checks():
        if at not in steps:
            return None
        j = steps.index(at) + 1
        result = check(rule, steps[:j], miou[:, :j], nobg[:, :j])
        if result.decision != "continue":
            return result
    return None
