"""The ``tune`` section: the Optuna study's search space, budget and workers (the study's knobs
live in ``pipelines/tune/params.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Union

from isdm.config.checks import (
    GREATER_0,
    NON_EMPTY,
    TEXT,
    Problem,
    Rule,
    Section,
    at_least,
    each,
    in_range,
)
from isdm.config.grammar import PROTOCOL
from isdm.config.schema import SEED, STEPS

__all__ = ["TuneConfig"]


@dataclass(frozen=True)
class TuneConfig(Section):
    """Optuna search over the generator's knobs against the paired validation-mIoU gain.

    A trial draws guidance ``s`` in ``[s_low, s_high]``, a ``drop_rates`` / ``steps`` /
    ``samplers`` / ``ratios`` choice (``ratios``: synthetic images per real training image) and,
    when their lists are not empty, a ``curate_min_fidelity`` / ``curate_pixel_thresholds``
    choice (0 = that filter off), a ``protocols`` code (``evaluate.protocols``' grammar) and a
    ``mask_sources`` choice (``sample.mask_source``); it finetunes (cached by checkpoint digest
    and finetune config,
    ``finetune_epochs`` epochs), samples, curates, and trains ``architecture`` for
    ``eval_steps`` optimiser steps (``auto``: the calibrated steps of ``architecture`` with the
    evaluate recipe, :mod:`isdm.evaluation.calibration`, the same cached calibration evaluate
    uses) with repeat seeds ``seed``, ``seed + 1``, ...; its value is the mean over repeats of
    (validation mIoU with synthetic images minus that of the real-only cell of the same seed),
    the real-only cells being trained once per study. ``repeats``: the repeats of a trial under
    fixed repeats, and the study's average budget under the adaptive rule (``pruning``, single
    objective only: :mod:`isdm.tuning.repeats`): a trial runs ``min_repeats`` repeats, is pruned
    when its upper bound (mean + ``prune_z`` standard errors, the noise pooled over the study)
    is below the best complete trial's gain, else runs to ``repeats``, is pruned again by the
    same test, and a trial that leads the study (its mean >= the best) goes on to
    ``max_repeats`` (no extension when it is <= ``repeats``) while the repeats saved by pruned
    trials pay for it (never more segmenter steps than ``repeats`` per trial). The rule decides
    once ``pruning_startup_trials`` trials completed. ``objectives``: ``[gain]`` or ``[gain, cost]``
    (cost = sampling seconds per image,
    minimised: a Pareto front). ``storage`` '' = a journal file under ``--out``. TPE samples
    at random for the first ``sampler_startup_trials`` trials. ``n_trials`` 0 only creates the
    study (and its MLflow run) for workers to join. ``final_check``: after the trials, the best
    trial's knobs and the config's own are compared on the TEST split
    (``evaluate.architectures`` x ``final_seeds``, the evaluate recipe, paired bootstrap). The
    study's knobs live in pipelines/tune/params.yaml. Workers sharing a study: a running trial
    records a heartbeat every ``heartbeat_interval`` seconds; one silent for ``heartbeat_grace``
    seconds (its worker was killed) is failed and its parameters retried by the next worker.
    """

    SECTION = "tune"
    RULES = {
        "n_trials": (at_least(0),),
        "study_name": (TEXT,),
        "s_low": (at_least(0),),
        "drop_rates": (NON_EMPTY, each(in_range(0, 1, open_lo=True, open_hi=True))),
        "steps": (NON_EMPTY, each(at_least(1))),
        "samplers": (NON_EMPTY, each(Rule(
            lambda v: v in ("ddpm", "ddim", "dpmpp2m", "dpmpp3m", "unipc"),
            "must be ddpm, ddim, dpmpp2m, dpmpp3m or unipc"))),
        "ratios": (NON_EMPTY, each(GREATER_0)),
        "finetune_epochs": (at_least(1),),
        "eval_steps": (STEPS,),
        "repeats": (at_least(1),),
        "min_repeats": (at_least(1),),
        "max_repeats": (at_least(1),),
        "prune_z": (at_least(0),),
        "architecture": (TEXT,),
        "seed": (SEED,),
        "objectives": (Rule(lambda v: list(v) in (["gain"], ["gain", "cost"]),
                            "must be [gain] or [gain, cost]"),),
        "pruning_startup_trials": (at_least(0),),
        "sampler_startup_trials": (at_least(0),),
        "curate_min_fidelity": (each(in_range(0, 1)),),
        "curate_pixel_thresholds": (each(at_least(0)),),
        "protocols": (each(PROTOCOL),),
        "final_seeds": (NON_EMPTY, each(SEED)),
        "heartbeat_interval": (GREATER_0,),
    }

    n_trials: int = 10
    study_name: str = "isdm"
    storage: str = ""
    s_low: float = 0.0
    s_high: float = 5.0
    drop_rates: tuple[float, ...] = (0.1, 0.2, 0.3)
    steps: tuple[int, ...] = (10, 20, 30)
    samplers: tuple[str, ...] = ("dpmpp2m", "ddim")
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    finetune_epochs: int = 2
    eval_steps: Union[int, Literal["auto"]] = "auto"
    repeats: int = 3
    min_repeats: int = 1
    max_repeats: int = 6
    prune_z: float = 1.645
    architecture: str = "FPN"
    seed: int = 0
    objectives: tuple[str, ...] = ("gain",)
    pruning: bool = True
    pruning_startup_trials: int = 2
    sampler_startup_trials: int = 5
    curate_min_fidelity: tuple[float, ...] = (0.0, 0.2, 0.4)
    curate_pixel_thresholds: tuple[float, ...] = (0.0, 2.0)
    protocols: tuple[str, ...] = ()
    mask_sources: tuple[Literal["train", "folder", "augment"], ...] = ()
    final_check: bool = True
    final_seeds: tuple[int, ...] = (0, 1, 2)
    heartbeat_interval: float = 30.0
    heartbeat_grace: float = 120.0

    def _problems(self) -> Iterable[Problem]:
        if self.s_high < self.s_low:
            yield Problem("s_high", self.s_high, f"must be >= tune.s_low={self.s_low}")
        if self.pruning and self.min_repeats > self.repeats:
            yield Problem("min_repeats", self.min_repeats,
                          f"must be <= tune.repeats={self.repeats} (the first rung of a trial)")
        if self.heartbeat_grace <= self.heartbeat_interval:
            yield Problem("heartbeat_grace", self.heartbeat_grace,
                          f"must be > tune.heartbeat_interval={self.heartbeat_interval} (a "
                          "running trial would be failed between two of its heartbeats)")
