"""Adaptive repeats: prune a trial that cannot reach the best, give the leaders more repeats.

Repeat ``r`` of a trial gives one paired difference ``d_r`` (:mod:`.paired`); its value is their
mean. Under fixed repeats every trial runs ``R = tune.repeats`` of them. The adaptive rule
(``tune.pruning`` with the single objective ``[gain]``) spends the same segmenter cells where
they separate the top of the study from its noise. With ``r0 = tune.min_repeats``,
``R_max = max(tune.max_repeats, R)`` and ``z = tune.prune_z``:

- **rungs**: a trial runs ``r0`` repeats, then up to ``R``, then (a leader) up to ``R_max``;
  the repeats of a rung train side by side, decisions fall between rungs;
- **noise**: ``sigma`` = the pooled std of the paired differences of every trial of the study
  with two or more repeats, this one included (``sum (n_i - 1) s_i^2 / sum (n_i - 1)``: the
  seed noise is the same kind in every trial, and one trial's two repeats say little about it);
  the trial's standard error after ``r`` repeats is ``se = sigma / sqrt(r)``;
- **best**: the highest gain of the study's complete trials (no decision, i.e. fixed repeats,
  before ``tune.pruning_startup_trials`` of them completed or while ``sigma`` is unknown);
- **after a rung** with ``r`` repeats and mean ``m``:

      prune            if m + z se < best     (its upper bound cannot reach the best)
      go on to R       if r < R
      extend to R_max  if r < R_max, m >= best (it leads) and the credit pays for it
      complete         otherwise

- **credit**: the repeats the study saved, ``sum over finished trials of (R - repeats_i)``, minus
  what running trials planned beyond ``R`` and the real-only cells computed beyond the first
  ``R`` seeds. An extension costs its repeats plus the real-only cells of the seeds it adds, so
  the study never trains more segmenter cells than fixed repeats would (``R`` per trial plus
  ``R`` real-only cells). Decisions are taken under a file lock with the planned repeats written
  to the trial (``repeats_planned``), so workers sharing a study never spend one credit twice.

Trials that failed (a killed worker) count neither way. :func:`segmenter_cells` counts a
study's cells for ``summary.json`` and MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

__all__ = ["RepeatRule", "StudyState", "Decision", "pooled_sd", "decide", "study_state",
           "segmenter_cells", "PLANNED_ATTR"]

PLANNED_ATTR = "repeats_planned"
REPEATS_ATTR = "gain_repeats"


@dataclass(frozen=True)
class RepeatRule:
    """The rule's parameters (module docstring); ``adaptive`` False = fixed ``repeats``."""

    repeats: int
    min_repeats: int = 1
    max_repeats: int = 6
    z: float = 1.645
    startup: int = 2
    adaptive: bool = True

    @classmethod
    def from_config(cls, tune: Any) -> "RepeatRule":
        adaptive = bool(tune.pruning) and tuple(tune.objectives) == ("gain",)
        return cls(tune.repeats, min(tune.min_repeats, tune.repeats),
                   max(tune.max_repeats, tune.repeats), tune.prune_z,
                   tune.pruning_startup_trials, adaptive)

    @property
    def first(self) -> int:
        """The repeats of a trial's first rung."""
        return self.min_repeats if self.adaptive else self.repeats


@dataclass(frozen=True)
class StudyState:
    """What a decision needs from the study: the best complete gain (None: no decision yet),
    the pooled noise ``sigma`` (None: unknown), the credit in cells and the real-only cells
    computed so far."""

    best: Optional[float]
    sigma: Optional[float]
    credit: int
    baseline_cells: int


@dataclass(frozen=True)
class Decision:
    """``prune``, ``more`` (run up to ``target`` repeats) or ``stop`` (complete), and why."""

    action: str
    target: int
    reason: str
    upper: Optional[float] = None


def pooled_sd(diffs: Iterable[Sequence[float]]) -> Optional[float]:
    """The pooled std (ddof 1 per trial) of several trials' differences; None without any
    trial of two or more."""
    num = dof = 0.0
    for d in diffs:
        n = len(d)
        if n < 2:
            continue
        mean = sum(d) / n
        num += sum((x - mean) ** 2 for x in d)
        dof += n - 1
    return math.sqrt(num / dof) if dof else None


def decide(rule: RepeatRule, diffs: Sequence[float], state: StudyState) -> Decision:
    """The decision after a rung that left the trial with ``diffs`` (module docstring)."""
    r = len(diffs)
    mean = sum(diffs) / r
    if not rule.adaptive:
        return _go_on(rule, r, "fixed repeats")
    if state.best is None or state.sigma is None:
        return _go_on(rule, r, f"no decision before {rule.startup} complete trials and a "
                               "noise estimate")
    upper = mean + rule.z * state.sigma / math.sqrt(r)
    if upper < state.best:
        return Decision("prune", r, f"upper bound {upper:+.4f} (mean {mean:+.4f} + {rule.z:g} "
                                    f"se) < best {state.best:+.4f} after {r} repeats", upper)
    if r < rule.repeats:
        return Decision("more", rule.repeats, f"upper bound {upper:+.4f} >= best "
                                              f"{state.best:+.4f}", upper)
    if r < rule.max_repeats and mean >= state.best:
        cost = (rule.max_repeats - r) + max(0, rule.max_repeats - state.baseline_cells)
        if state.credit >= cost:
            return Decision("more", rule.max_repeats, f"leads (mean {mean:+.4f} >= best "
                                                      f"{state.best:+.4f}): extended, credit "
                                                      f"{state.credit} >= cost {cost}", upper)
        return Decision("stop", r, f"leads, but the credit {state.credit} < cost {cost}", upper)
    return Decision("stop", r, f"complete after {r} repeats", upper)


def _go_on(rule: RepeatRule, r: int, why: str) -> Decision:
    if r < rule.repeats:
        return Decision("more", rule.repeats, why)
    return Decision("stop", r, why)


def _repeats(trial: Any) -> list[float]:
    return list(trial.user_attrs.get(REPEATS_ATTR) or [])


def study_state(trials: Sequence[Any], number: int, rule: RepeatRule, diffs: Sequence[float],
                baseline_cells: int) -> StudyState:
    """The :class:`StudyState` seen by trial ``number`` (``diffs`` its differences so far) among
    ``trials`` (``study.get_trials()``; their user attributes ``gain_repeats`` and
    ``repeats_planned``)."""
    import optuna

    states = optuna.trial.TrialState
    others = [t for t in trials if t.number != number]
    complete = [t for t in others if t.state == states.COMPLETE and t.values]
    best = max((t.values[0] for t in complete), default=None)
    if len(complete) < rule.startup:
        best = None
    sigma = pooled_sd([*(_repeats(t) for t in others if t.state != states.FAIL), list(diffs)])
    credit = -max(0, baseline_cells - rule.repeats) - max(0, len(diffs) - rule.repeats)
    for t in others:
        spent = len(_repeats(t))
        if t.state in (states.COMPLETE, states.PRUNED):
            credit += rule.repeats - spent
        elif t.state == states.RUNNING:
            planned = max(spent, int(t.user_attrs.get(PLANNED_ATTR) or 0))
            credit -= max(0, planned - rule.repeats)
    return StudyState(best, sigma, credit, baseline_cells)


def segmenter_cells(trials: Sequence[Any], baseline_cells: int, repeats: int) -> dict[str, int]:
    """``{"trials", "baseline", "total", "fixed_total"}``: the segmenter cells a study used
    (the repeats of its trials and its real-only cells) and what fixed ``repeats`` would have
    used for the same trials. A failed trial (its worker was killed) counts in neither: its
    retry reads the cells it left in the store."""
    import optuna

    counted = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
    used = sum(len(_repeats(t)) for t in counted)
    return {"trials": used, "baseline": baseline_cells, "total": used + baseline_cells,
            "fixed_total": len(counted) * repeats + repeats}
