"""Numerical health of a training run: a non-finite or exploding loss stops it.

:class:`LossWatch` checks every optimiser step's loss: NaN / inf, or more than
``max_loss_ratio`` times the run's first loss (a divergence: ``train.lr=1e8`` reaches 1e18 at
its second step), raises :class:`~isdm.errors.NumericalError` naming the step, the likely
cause (learning rate, precision, no gradient clipping) and the last finite checkpoint on disk.
The run stops before anything of that step is written. Non-finite weights are never saved or
loaded (:mod:`isdm.training.checkpoint`, with :func:`isdm.utils.numerics.nonfinite`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from isdm.errors import NumericalError

__all__ = ["LossWatch"]


class LossWatch:
    """Stops a training run at its first non-finite or exploding step loss.

    Args:
        action: ``train`` or ``finetune`` (the config section named in the message).
        tcfg: its :class:`isdm.config.TrainConfig` (lr, precision, grad_clip, max_loss_ratio).
        precision: the precision actually used (fp16 falls back to fp32 on CPU).
        out_dir: where the run's checkpoints are (the message names the last finite one).
    """

    def __init__(self, action: str, tcfg: Any, precision: str, out_dir: Path) -> None:
        self.action, self.tcfg, self.precision, self.out_dir = action, tcfg, precision, out_dir
        self.first: Optional[float] = None

    def check(self, loss: float, step: int, epoch: int) -> None:
        """Raises NumericalError when ``loss`` (step ``step``, 1-based) is non-finite or
        exceeds ``max_loss_ratio`` x the first loss of this run."""
        ratio = self.tcfg.max_loss_ratio
        if math.isfinite(loss):
            if self.first is None:
                self.first = abs(loss)
            if not (ratio > 0 and self.first > 0 and abs(loss) > ratio * self.first):
                return
            what = (f"the loss exploded to {loss:.4g}, more than {self.action}.max_loss_ratio="
                    f"{ratio:g} x the run's first loss ({self.first:.4g})")
        else:
            what = f"the loss is {loss} (not a finite number)"
        raise NumericalError(
            f"{self.action} stopped at step {step} (epoch {epoch + 1}): {what}. "
            f"{self._causes()} {self._kept()}")

    def _causes(self) -> str:
        from isdm.config.schema import FINETUNE_DEFAULTS, TrainConfig

        t, section = self.tcfg, self.action
        default = FINETUNE_DEFAULTS["lr"] if section == "finetune" else TrainConfig().lr
        lower = default if t.lr > default else t.lr / 10
        causes = [f"the learning rate {section}.lr={t.lr:g} is the likely cause: lower it, "
                  f"e.g. --set {section}.lr={lower:g} (the default is {default:g})"]
        if self.precision != "fp32":
            causes.append(f"{section}.precision={self.precision} can overflow: try --set "
                          f"{section}.precision=fp32")
        if t.grad_clip <= 0:
            causes.append(f"gradient clipping is off: --set {section}.grad_clip=1.0")
        text = "; ".join(causes)
        return text[0].upper() + text[1:] + "."

    def _kept(self) -> str:
        """Which checkpoints on disk are this run's last finite ones."""
        from isdm.training.checkpoint import peek

        found = [f"{self.out_dir / n} ({peek(self.out_dir / n)[0]})" for n in ("last.pt", "best.pt")
                 if (self.out_dir / n).is_file()]
        if not found:
            return "No checkpoint with these weights was written."
        return ("Nothing of this step was written; the last finite checkpoints are "
                f"{' and '.join(found)}.")
