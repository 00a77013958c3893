"""One downstream "cell": a segmenter of one architecture trained on one real/synthetic mix with
one seed, selected on REAL validation images.

``isdm evaluate`` trains a cell per (architecture, mix, synthetic set, seed) and then tests it
once on the real test split; ``isdm tune`` trains, per repeat seed, the real-only cell and the
trial's cell and takes the difference of their best validation mIoU (:mod:`isdm.tuning.paired`).
Both go through the same two steps, configured by ``cfg.evaluate`` (the recipe) and ``cfg.data``
(classes, ignore index):

1. :func:`plan_cell` (split -> plan): carve the validation split off the real train keys
   (``data.dataset.split_keys`` seeded with the cell's seed, so every mix of one seed holds out
   the same images and mixes are paired), then draw the mix's real and synthetic training keys
   (:func:`isdm.evaluation.mixes.plan_mix`; a validation image is never a training image);
2. :class:`CellRun` (concat -> build -> train): concatenate the drawn real and synthetic
   images (with ``data.crop``: a :class:`~isdm.evaluation.wholes.CropMix` that cuts a fresh
   crop of a real image each time it is drawn), build the smp model with init seeded by the
   cell's seed and train it with the recipe (:class:`isdm.evaluation.loop.SegmenterRun`:
   ``evaluate.steps`` optimiser steps whatever the mix's size, batches drawn as the cell's
   training protocol says, :mod:`isdm.evaluation.protocols`), selecting the weights of its
   best validation (whole validation images by sliding windows with ``data.crop``);
3. :meth:`CellRun.finish`: the selection, and with a test split the per-image test counts of
   the selected weights (tested ONCE).

``CellRun.advance(k)`` / ``state_dict()`` / ``load_state_dict()`` / ``advance(N)`` /
``finish()`` gives the bits of ``advance(N)`` / ``finish()``: a long cell saves its progress
and a killed one resumes; the plateau calibration trains in chunks and checks its curve between
them. :func:`train_cell` is the one-go form.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from isdm.config import Config
from isdm.errors import EvaluationError
from isdm.evaluation.mixes import MixPlan, mix_label, plan_mix
from isdm.evaluation.loop import SegmenterFit, SegmenterRun
from isdm.evaluation.protocols import MIX, Protocol, parse_protocol, protocol_of
from isdm.evaluation.segmenter import TensorSet, build_segmenter
from isdm.evaluation.wholes import CropMix, WholeSet

__all__ = ["Cell", "CellResult", "CellRun", "split_validation", "plan_cell", "train_cell"]


@dataclass(frozen=True)
class Cell:
    """One (architecture, mix, seed) cell and the keys it trains and selects on; ``synthetic_set``
    names the synthetic folder its synthetic keys come from ('' for a mix without any);
    ``protocol`` how it trains on them (:data:`MIX` for a mix without any)."""

    arch: str
    plan: MixPlan
    synthetic_set: str = ""
    protocol: Protocol = MIX

    @property
    def mix(self) -> str:
        return self.plan.mix.code

    @property
    def label(self) -> str:
        """The row as reports name it: ``RALLFALL[curated]``, ``RALLFALL[curated] pretrain
        0.5``, or ``RALLF000`` without a set."""
        return mix_label(self.mix, self.synthetic_set, self.protocol.code)

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def name(self) -> str:
        return f"{self.arch} {self.label} seed {self.seed}"


def split_validation(keys: Sequence[str], val_fraction: float,
                     seed: int) -> tuple[list[str], list[str]]:
    """(validation keys, remaining real training pool) of the real train ``keys``, seeded.

    Raises:
        EvaluationError: ``val_fraction`` leaves no validation image.
    """
    from isdm.data.dataset import split_keys

    pool, val_keys = split_keys(list(keys), val_fraction, seed)
    if not val_keys:
        raise EvaluationError(f"evaluate.val_fraction={val_fraction} leaves no validation image "
                              f"out of {len(keys)} real train images; raise it")
    return list(val_keys), list(pool)


def plan_cell(cfg: Config, arch: str, mix: str, seed: int, real_keys: Sequence[str],
              synthetic_keys: Sequence[str], synthetic_set: str = "",
              protocol: Optional[str | Protocol] = None) -> Cell:
    """Split the real train keys and draw the training keys of ``mix`` for ``seed``
    (``synthetic_keys``: those of the set named ``synthetic_set``), trained with ``protocol``
    (None: the config's, :func:`isdm.evaluation.protocols.protocol_of`; a mix without
    synthetic images always trains as ``mix``).

    Raises:
        EvaluationError: no validation image, a mix asking for more images than there are, or
            a protocol that cannot train the mix (e.g. a share that leaves no real image).
    """
    val_keys, pool = split_validation(real_keys, cfg.evaluate.val_fraction, seed)
    plan = plan_mix(mix, pool, val_keys, synthetic_keys, seed)
    if not plan.mix.uses_synthetic:
        return Cell(arch, plan, "", MIX)
    chosen = protocol_of(cfg.evaluate) if protocol is None else parse_protocol(protocol)
    steps = cfg.evaluate.steps
    chosen.check(cfg.evaluate.batch_size, len(plan.real_keys), len(plan.synthetic_keys),
                 steps if isinstance(steps, int) else None)
    return Cell(arch, plan, synthetic_set, chosen)


@dataclass
class CellResult:
    """A finished cell: its fit (selection, history, the selected weights in
    ``fit.state_dict``) and the test counts ``[N, C, 3]`` of those weights (None untested)."""

    fit: SegmenterFit
    counts: Optional[np.ndarray] = None


class CellRun:
    """One cell in training: the sets of its plan, its seeded model and its
    :class:`~isdm.evaluation.loop.SegmenterRun`.

    Args:
        real: the real TRAIN images (training and validation keys) at ``evaluate.image_size``,
            or whole with ``data.crop`` (:func:`isdm.evaluation.loading.load_split`).
        synthetic: the images of the cell's synthetic set (may be empty for mixes without ``F``).
        on_validation: receives each validation's ``{"step", "epoch", "train_loss",
            "val_miou", "val_miou_nobg", "seconds"}`` (``epoch`` derived: images shown /
            training images).
        steps: the cell's whole budget (default ``evaluate.steps``): a ``pretrain`` protocol
            switches to real images after its split of it.
    """

    def __init__(self, cfg: Config, cell: Cell, real: TensorSet | WholeSet,
                 synthetic: TensorSet, *, device: torch.device,
                 on_validation: Optional[Callable[[dict[str, float]], None]] = None,
                 steps: Optional[int] = None) -> None:
        e, plan = cfg.evaluate, cell.plan
        steps = e.steps if steps is None else steps  # the budget a pretrain split is a part of
        if isinstance(real, WholeSet):  # data.crop: fresh crops of whole real images every step
            train = CropMix(real.subset(plan.real_keys), synthetic.subset(plan.synthetic_keys),
                            cell.seed)
        else:
            train = TensorSet.concat([real.subset(plan.real_keys),
                                      synthetic.subset(plan.synthetic_keys)])
        self.cfg, self.cell, self.device = cfg, cell, device
        self.model = build_segmenter(cell.arch, e.encoder, e.encoder_weights, cfg.data.num_classes,
                                     cell.seed)
        stream = cell.protocol.stream(len(plan.real_keys), len(plan.synthetic_keys),
                                      e.batch_size, steps, cell.seed)
        self.loop = SegmenterRun(self.model, train, real.subset(plan.val_keys), e,
                                 num_classes=cfg.data.num_classes,
                                 ignore_index=cfg.data.ignore_index, seed=cell.seed,
                                 device=device, on_validation=on_validation, stream=stream)

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def val_every(self) -> int:
        return self.loop.val_every

    def advance(self, to_step: int) -> None:
        """Train up to optimiser step ``to_step``."""
        self.loop.advance(to_step)

    def finish(self, test: Optional[TensorSet | WholeSet] = None) -> CellResult:
        """The selection at the current step and, given the real ``test`` split, its test
        counts (on a copy of the model: the run can go on training)."""
        from isdm.evaluation.segmenter import predict_counts

        fit = self.loop.finish()
        counts = None
        if test is not None:
            e = self.cfg.evaluate
            model = self.best_model(fit)
            counts = predict_counts(model, test, self.cfg.data.num_classes,
                                    self.cfg.data.ignore_index, self.device, e.batch_size,
                                    e.encoder_weights)
        return CellResult(fit, counts)

    def best_model(self, fit: SegmenterFit) -> torch.nn.Module:
        """A copy of the model holding the selected weights of ``fit``."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(fit.state_dict)
        return model.eval()

    def state_dict(self) -> dict:
        return self.loop.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loop.load_state_dict(state)


def train_cell(cfg: Config, cell: Cell, real: TensorSet | WholeSet, synthetic: TensorSet, *,
               device: torch.device,
               on_validation: Optional[Callable[[dict[str, float]], None]] = None,
               ) -> tuple[torch.nn.Module, SegmenterFit]:
    """Train the cell's segmenter for ``evaluate.steps`` steps in one go; returns the model
    (best validation weights loaded) and its fit (see :class:`CellRun`)."""
    run = CellRun(cfg, cell, real, synthetic, device=device, on_validation=on_validation)
    run.advance(cfg.evaluate.steps)
    fit = run.finish().fit
    run.model.load_state_dict(fit.state_dict)
    return run.model, fit
