"""Non-finite numbers: found in tensors, refused in losses.

- :func:`nonfinite` lists the non-finite floating-point tensors of a state dict (or of any
  nested structure of them): :func:`isdm.training.checkpoint.save` refuses to write such
  weights and :func:`~isdm.training.checkpoint.load` to return them.
- :func:`check_losses` stops a segmenter's training (evaluation cells, the curation scorer,
  tuning trials) when a step's loss was NaN / inf, naming the first such step: called at each
  validation with the losses since the previous one (one host sync per validation, none per
  step); :func:`check_loss` checks one loss.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch

from isdm.errors import NumericalError

__all__ = ["nonfinite", "check_loss", "check_losses"]


def _tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}.{i}")


def nonfinite(tree: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in ``tree`` holding NaN or inf."""
    return [name for name, t in _tensors(tree, prefix)
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


_SEGMENTER_FIX = ("lower the segmenter's learning rate (evaluate.lr; curate and tune train with "
                  "the evaluate recipe too), or use evaluate.precision=fp32")


def check_loss(loss: torch.Tensor | float, step: int, what: str,
               fix: str = _SEGMENTER_FIX) -> None:
    """Raise NumericalError when a segmenter's ``loss`` at ``step`` is NaN or inf.

    Args:
        what: the run, e.g. ``"segmenter FPN (seed 0)"``.
        fix: what to change (default: the segmenter recipe's lr and precision).
    """
    value = float(loss)
    if not math.isfinite(value):
        raise NumericalError(f"{what} stopped at step {step}: its loss is {value} (not a finite "
                             f"number), so its scores would be meaningless; {fix}")


def check_losses(losses: list[torch.Tensor], last_step: int, what: str,
                 fix: str = _SEGMENTER_FIX) -> None:
    """Raise NumericalError when any of ``losses`` (0-dim tensors of the steps
    ``last_step - len(losses) + 1 .. last_step``, on any device) is NaN or inf, naming the
    first such step."""
    if not losses:
        return
    values = torch.stack([t.detach().float() for t in losses])
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        check_loss(values[i], last_step - len(losses) + 1 + i, what, fix)
