"""Group norm for training under bf16/fp16 autocast on CPU.

PyTorch's CPU group-norm kernels run in the input's dtype: for a bf16 channels-last input the
backward is slow and the per-group mean and 1/std are kept in bf16. :func:`group_norm` computes
the statistics, the output and the gradient in float32 instead (gradient returned in the input's
dtype and layout). Float32 inputs, CUDA tensors and no-grad calls take ``F.group_norm``
unchanged, so the default (fp32) network and all sampling compute exactly what they did.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GroupNorm", "group_norm"]

_REDUCED = (torch.bfloat16, torch.float16)


class _GroupNormFast(torch.autograd.Function):
    """``GroupNorm(x)`` of ``x`` ``[B, C, h, w]`` with optional per-channel ``weight``/``bias``
    ``[C]`` (float32): statistics, output and gradients computed by PyTorch's float32 kernels on
    ``x.float()`` (same memory layout), the input's gradient returned in ``x``'s dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        b, c = x.shape[:2]
        hw = x[0, 0].numel()
        out, mean, rstd = torch.native_group_norm(x.float(), weight, bias, b, c, hw, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        b, c = x.shape[:2]
        hw = x[0, 0].numel()
        mask = [ctx.needs_input_grad[0], *[weight is not None and ctx.needs_input_grad[i]
                                           for i in (1, 2)]]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(
            grad.float(), x.float(), mean, rstd, weight, b, c, hw, ctx.groups, mask)
        return None if dx is None else dx.to(x.dtype), dw, db, None, None


def group_norm(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """``GroupNorm(x)`` of ``x`` ``[B, C, h, w]``: :class:`_GroupNormFast` (float32 output) for
    a bf16/fp16 CPU input while training, else ``F.group_norm`` (bit for bit PyTorch's)."""
    if (x.device.type == "cpu" and x.dtype in _REDUCED and torch.is_grad_enabled()
            and (x.requires_grad or (weight is not None and weight.requires_grad))):
        return _GroupNormFast.apply(x, weight, bias, groups, eps)
    return F.group_norm(x, groups, weight, bias, eps)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) computed by :func:`group_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
