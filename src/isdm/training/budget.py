"""What a training run costs, said before it starts.

For a run that has done ``step`` optimiser steps in ``epoch`` epochs (0 and 0 unless resumed)::

    steps_per_epoch = len(loader)                    this rank's batches (batches.make_loader)
    steps           = min(max_steps - step, (max_epochs - epoch) x steps_per_epoch)
                      (a cap of 0 is no cap; patience may stop the run earlier)
    images per step = batch_size x world_size
    epochs          = steps / steps_per_epoch        what the steps mean on this dataset

A ``max_steps`` budget is the same work on every dataset; a ``max_epochs`` budget grows with the
dataset (1000 steps on the 40 embedded images are 200 epochs, 35.7 on 226 images).
:class:`StepTimer` then estimates the run's duration from its first steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from isdm.config import TrainConfig

__all__ = ["Budget", "plan", "StepTimer", "duration"]


@dataclass(frozen=True)
class Budget:
    """The most optimiser steps a run takes and how they arise (see the module docstring)."""

    action: str  # "train" or "finetune": the config section of the caps
    steps: int  # steps this run takes at most
    source: str  # the cap(s) behind ``steps``, e.g. "train.max_steps=1000"
    steps_per_epoch: int
    batch_size: int
    world_size: int
    num_images: int  # training images (all ranks together)
    epoch: int = 0  # epochs done before this run (resume)

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.world_size

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def last_epoch(self) -> int:
        """The number of the epoch in which the budget ends (counting the resumed ones)."""
        return self.epoch + math.ceil(self.epochs)

    def line(self) -> str:
        """``train budget: 1000 steps (train.max_steps=1000) of 8 images (batch_size 8 x 1
        process): 200 epochs of the 40 training images at 5 steps per epoch``."""
        processes = f"{self.world_size} process{'es' if self.world_size > 1 else ''}"
        epochs = f"{self.epochs:g}" if self.epochs.is_integer() else f"{self.epochs:.1f}"
        return (f"{self.action} budget: {self.steps} steps ({self.source}) of "
                f"{self.images_per_step} images (batch_size {self.batch_size} x {processes}): "
                f"{epochs} epochs of the {self.num_images} training images at "
                f"{self.steps_per_epoch} steps per epoch")

    def tags(self) -> dict[str, Any]:
        """The budget as MLflow tags."""
        return {"isdm.budget.steps": self.steps, "isdm.budget.source": self.source,
                "isdm.budget.images_per_step": self.images_per_step,
                "isdm.budget.steps_per_epoch": self.steps_per_epoch,
                "isdm.budget.epochs": round(self.epochs, 3)}


def plan(tcfg: TrainConfig, action: str, *, num_images: int, steps_per_epoch: int,
         world_size: int, step: int = 0, epoch: int = 0) -> Budget:
    """The budget of a run of section ``tcfg`` that starts after ``step`` steps / ``epoch``
    epochs."""
    key = f"{action}."
    by_steps = max(tcfg.max_steps - step, 0) if tcfg.max_steps > 0 else None
    by_epochs = max(tcfg.max_epochs - epoch, 0) * steps_per_epoch if tcfg.max_epochs > 0 else None
    steps_text = f"{key}max_steps={tcfg.max_steps}"
    epochs_text = f"{key}max_epochs={tcfg.max_epochs} x {steps_per_epoch} steps per epoch"
    if by_epochs is None or (by_steps is not None and by_steps <= by_epochs):
        steps = by_steps or 0
        source = steps_text + (f", before {epochs_text}" if by_epochs is not None else "")
    else:
        steps = by_epochs
        source = epochs_text + (f", before {steps_text}" if by_steps is not None else "")
    if step:
        source += f"; resumed at step {step}"
    if tcfg.patience > 0:
        source += f"; {key}patience={tcfg.patience} may stop it earlier"
    return Budget(action, steps, source, steps_per_epoch, tcfg.batch_size, world_size,
                  num_images, epoch)


def duration(seconds: float) -> str:
    """``45 s``, ``8.4 min`` or ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class StepTimer:
    """Estimates a run's duration once, after step ``at`` of the run: the time so far plus the
    remaining steps at the mean time of steps ``2..at`` (step 1 pays for allocation and warm-up,
    so it is not a sample). Checkpoint writes and validation at epoch ends are not in it."""

    def __init__(self, budget: Budget, at: int = 3,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if at < 2:
            raise ValueError(f"at={at}: the estimate needs a step after the first, use >= 2")
        self.budget, self.at, self.clock = budget, at, clock
        self.start = clock()
        self.done = 0
        self.after_first = self.per_step = self.total = 0.0

    def tick(self) -> Optional[str]:
        """Call after every step; returns the estimate's line once (after step ``at``)."""
        self.done += 1
        if self.done == 1:
            self.after_first = self.clock()
        if self.done != self.at:
            return None
        now = self.clock()
        self.per_step = (now - self.after_first) / (self.at - 1)
        self.total = now - self.start + (self.budget.steps - self.at) * self.per_step
        return (f"{self.budget.action}: {self.per_step:.3g} s per step (steps 2-{self.at}): the "
                f"{self.budget.steps} steps take about {duration(self.total)} (without epoch-end "
                "checkpoints)")

    def tags(self) -> dict[str, Any]:
        """The estimate as MLflow tags (after :meth:`tick` returned its line)."""
        return {"isdm.budget.seconds_per_step": round(self.per_step, 4),
                "isdm.budget.estimated_s": round(self.total, 1)}
