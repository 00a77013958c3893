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
2. :func:`train_cell` (concat -> build -> train): concatenate the drawn real and synthetic
   images (with ``data.crop``: a :class:`~isdm.evaluation.wholes.CropMix` that cuts a fresh
   crop of a real image each time it is drawn), build the smp model with init seeded by the
   cell's seed and train it with the recipe (:func:`isdm.evaluation.segmenter.train_segmenter`:
   ``evaluate.steps`` optimiser steps whatever the mix's size); the model comes back holding
   the weights of its best validation (whole validation images by sliding windows with
   ``data.crop``).

The test split is never read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from isdm.config import Config
from isdm.errors import EvaluationError
from isdm.evaluation.mixes import MixPlan, mix_label, plan_mix
from isdm.evaluation.segmenter import (
    SegmenterFit,
    TensorSet,
    build_segmenter,
    train_segmenter,
)
from isdm.evaluation.wholes import CropMix, WholeSet

__all__ = ["Cell", "split_validation", "plan_cell", "train_cell"]


@dataclass(frozen=True)
class Cell:
    """One (architecture, mix, seed) cell and the keys it trains and selects on; ``synthetic_set``
    names the synthetic folder its synthetic keys come from ('' for a mix without any)."""

    arch: str
    plan: MixPlan
    synthetic_set: str = ""

    @property
    def mix(self) -> str:
        return self.plan.mix.code

    @property
    def label(self) -> str:
        """The mix as reports name it: ``RALLFALL[curated]``, or ``RALLF000`` without a set."""
        return mix_label(self.mix, self.synthetic_set)

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
              synthetic_keys: Sequence[str], synthetic_set: str = "") -> Cell:
    """Split the real train keys and draw the training keys of ``mix`` for ``seed``
    (``synthetic_keys``: those of the set named ``synthetic_set``).

    Raises:
        EvaluationError: no validation image, or a mix asking for more images than there are.
    """
    val_keys, pool = split_validation(real_keys, cfg.evaluate.val_fraction, seed)
    plan = plan_mix(mix, pool, val_keys, synthetic_keys, seed)
    return Cell(arch, plan, synthetic_set if plan.mix.uses_synthetic else "")


def train_cell(cfg: Config, cell: Cell, real: TensorSet | WholeSet, synthetic: TensorSet, *,
               device: torch.device,
               on_validation: Optional[Callable[[dict[str, float]], None]] = None,
               ) -> tuple[torch.nn.Module, SegmenterFit]:
    """Train the cell's segmenter; returns the model (best validation weights loaded) and its fit.

    Args:
        real: the real TRAIN images (training and validation keys) at ``evaluate.image_size``,
            or whole with ``data.crop`` (:func:`isdm.evaluation.loading.load_split`).
        synthetic: the images of the cell's synthetic set (may be empty for mixes without ``F``).
        on_validation: receives each validation's ``{"step", "epoch", "train_loss",
            "val_miou", "val_miou_nobg", "seconds"}`` (``epoch`` derived: images shown /
            training images).
    """
    e, plan = cfg.evaluate, cell.plan
    if isinstance(real, WholeSet):  # data.crop: fresh crops of whole real images every step
        train = CropMix(real.subset(plan.real_keys), synthetic.subset(plan.synthetic_keys),
                        cell.seed)
    else:
        train = TensorSet.concat([real.subset(plan.real_keys),
                                  synthetic.subset(plan.synthetic_keys)])
    val = real.subset(plan.val_keys)
    model = build_segmenter(cell.arch, e.encoder, e.encoder_weights, cfg.data.num_classes,
                            cell.seed)
    fit = train_segmenter(model, train, val, e, num_classes=cfg.data.num_classes,
                          ignore_index=cfg.data.ignore_index, seed=cell.seed, device=device,
                          on_validation=on_validation)
    return model, fit
