"""One optimisation step of the SDM and its mixed precision.

Mixed precision (``precision``): ``fp32`` (default); ``bf16`` autocast (CPU and CUDA, no loss
scaling); ``fp16`` autocast with ``torch.amp.GradScaler`` loss scaling (CUDA only; on CPU it falls
back to fp32). Only the network's forward runs under autocast (the helper sampling uses too,
:func:`isdm.utils.precision.autocast`); the diffusion loss is fp32.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from isdm.training.ema import EMA
from isdm.utils.precision import autocast

__all__ = ["resolve_precision", "make_model_fn", "optimisation_step"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp16 needs CUDA (GradScaler); on CPU it falls back to fp32."""
    if precision == "fp16" and device.type != "cuda":
        return "fp32"
    return precision


def make_model_fn(net: nn.Module, segmap: torch.Tensor, precision: str
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x_t, t) -> net(x_t, t, segmap)`` under autocast, returned in fp32 (for the loss)."""

    def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(precision, x_t.device):
            out = net(x_t, t, segmap)
        return out.float()

    return fn


def optimisation_step(net: nn.Module, model: nn.Module, diffusion: Any, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, ema: EMA, x0: torch.Tensor, segmap: torch.Tensor,
                      t: torch.Tensor, noise: torch.Tensor, *, precision: str,
                      grad_clip: float, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One AdamW step on the hybrid loss of a batch; returns the (detached) batch-mean loss.

    ``net`` is what runs the forward (``model`` or its DDP wrapper), ``model`` the bare network
    (clipping and EMA act on it). x0/noise: [B,3,H,W]; segmap: [B,C,H,W]; t: [B] int64;
    valid: None or [B,1,H,W], the pixels the loss averages over (padding excluded).
    """

    loss = diffusion.training_losses(make_model_fn(net, segmap, precision), x0, t, noise,
                                     valid=valid)["loss"].mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    ema.update(model)
    return loss.detach()
