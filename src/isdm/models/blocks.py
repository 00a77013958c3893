"""UNet building blocks: timestep embedding, (SPADE-)ResBlock, attention, up/down-sampling.

Follows guided-diffusion (Dhariwal & Nichol 2021) for the encoder blocks and SDM (Wang et al.
2022) for the mask-conditioned decoder blocks. Feature maps are ``[B, C, h, w]``; ``emb`` is the
timestep embedding ``[B, E]``; ``cond`` a one-hot segmap or a :class:`SpadeCondition`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from isdm.models.fused import GroupNorm
from isdm.models.spade import Cond, SPADEGroupNorm

__all__ = ["timestep_embedding", "ResBlock", "AttentionBlock", "Downsample", "Upsample",
           "TimestepSequential", "zero_module"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (int or float) timesteps ``t`` ``[B]``:
    ``[cos(t w_i), sin(t w_i)]`` with ``w_i = max_period^(-i / (dim/2))`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (output convs: each residual block starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _Checkpointed(nn.Module):
    """Runs ``_forward`` under gradient checkpointing when ``use_checkpoint`` and training."""

    use_checkpoint: bool = False

    def forward(self, *args):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False)
        return self._forward(*args)


class Downsample(nn.Module):
    """Stride-2 conv3x3 (``resblock_updown=False``): ``[B,C,h,w] -> [B,C,h/2,w/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then conv3x3 (``resblock_updown=False``): ``[B,C,h,w] -> [B,C,2h,2w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(_Checkpointed):
    """Residual block with timestep FiLM; SDM's SPADE ResBlock when ``label_channels > 0``.

    Encoder (``label_channels == 0``, guided-diffusion)::
        h = conv3x3(SiLU(GN(x)));  h = GN(h) * (1 + scale(emb)) + shift(emb)
        h = zero_conv3x3(Dropout(SiLU(h)));  return skip(x) + h
    Decoder (SDM): both GNs are SPADE(., m); the FiLM is applied after the second SPADE.
    Without ``use_scale_shift_norm`` the embedding is added before the second norm instead.
    ``up`` / ``down`` resample h (after the first norm) and x by nearest x2 / avg-pool x2.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None,
                 dropout: float = 0.0, use_scale_shift_norm: bool = True, up: bool = False,
                 down: bool = False, label_channels: int = 0, spade_hidden: int = 128) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.spade = label_channels > 0
        self.up, self.down = up, down
        self.use_scale_shift_norm = use_scale_shift_norm

        def norm(c: int) -> nn.Module:
            if self.spade:
                return SPADEGroupNorm(c, label_channels, spade_hidden)
            return GroupNorm(32, c)

        self.in_norm = norm(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                                 else out_channels))
        self.out_norm = norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Identity() if out_channels == channels
                     else nn.Conv2d(channels, out_channels, 1))

    def _norm(self, norm: nn.Module, h: torch.Tensor, cond: Optional[Cond]) -> torch.Tensor:
        return norm(h, cond) if self.spade else norm(h)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def _forward(self, x: torch.Tensor, emb: torch.Tensor,
                 cond: Optional[Cond] = None) -> torch.Tensor:
        h = F.silu(self._norm(self.in_norm, x, cond))
        h, x = self._resample(h), self._resample(x)
        h = self.in_conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self._norm(self.out_norm, h, cond) * (1 + scale) + shift
        else:
            h = self._norm(self.out_norm, h + emb_out, cond)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(_Checkpointed):
    """Multi-head self-attention over the ``h*w`` positions, residual, zero-initialised output.

    ``heads = channels / head_channels``; softmax(q k^T / sqrt(d)) v per head.
    """

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.heads = channels // head_channels
        self.norm = GroupNorm(32, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, hw, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class TimestepSequential(nn.Sequential):
    """A sequence of layers; ResBlocks receive ``(x, emb, cond)``, the others ``x`` only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor,
                cond: Optional[Cond] = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x
