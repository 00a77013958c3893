"""The SDM UNet (Wang et al. 2022, "Semantic Image Synthesis via Diffusion Models").

A guided-diffusion UNet whose encoder sees only the noisy image and whose middle and decoder
blocks are conditioned on the one-hot segmap through SPADE group norms. Predicts eps (and, with
``learn_sigma``, 3 variance-interpolation channels) from ``x_t`` at ORIGINAL timestep ``t``.

Layout (L = len(channel_mult), ch_l = num_channels * channel_mult[l]):
    encoder  conv3x3(3 -> ch_0); per level: num_res_blocks x (ResBlock [+ Attn]),
             then a down-sampling ResBlock (or stride-2 conv) except after the last level
    middle   SPADE-ResBlock, Attn, SPADE-ResBlock
    decoder  per level, deepest first: (num_res_blocks + 1) x (SPADE-ResBlock on
             [h, encoder skip] [+ Attn]), the last one followed by an up-sampling SPADE-ResBlock
             (or nearest x2 + conv) except at level 0
    head     GN -> SiLU -> zero-initialised conv3x3(ch_0 -> 3 or 6)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn as nn

from isdm.models.blocks import (AttentionBlock, Downsample, ResBlock, TimestepSequential,
                                Upsample, timestep_embedding, zero_module)
from isdm.models.spade import Cond, SPADEGroupNorm, SpadeCondition

__all__ = ["SDMUNet", "Encoded"]


class SDMUNet(nn.Module):
    """Semantic diffusion UNet. See the module docstring for the layout.

    Args:
        image_size: side of a square input, or ``(H, W)`` of a rectangular one (each side
            divisible by 2**(L-1)).
        num_classes: channels of the one-hot segmap.
        num_channels: base width; channel_mult: per-level multipliers (ch_l multiple of 32).
        attention_resolutions: feature-map sides (pixels; the short side of a rectangle) that
            get self-attention, e.g. (16, 8).
        num_head_channels: channels per attention head (must divide the width at those levels).
        spade_hidden: hidden width of each SPADE's shared conv.
        use_checkpoint: gradient checkpointing of every block (only active in training mode).
    """

    def __init__(self, image_size: Union[int, tuple[int, int]], num_classes: int,
                 num_channels: int = 64,
                 channel_mult: Sequence[float] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_resolutions: Sequence[int] = (16,), num_head_channels: int = 32,
                 dropout: float = 0.0, resblock_updown: bool = True,
                 use_scale_shift_norm: bool = True, learn_sigma: bool = True,
                 spade_hidden: int = 64, use_checkpoint: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__()
        hw = _hw(image_size)
        widths = _validate(image_size, num_classes, num_channels, channel_mult, num_res_blocks,
                           attention_resolutions, num_head_channels, spade_hidden)
        self.image_size, self.num_classes, self.in_channels = hw, num_classes, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_channels = num_channels
        attn_ds = {min(hw) // r for r in attention_resolutions}
        emb_dim = 4 * num_channels
        res = dict(emb_channels=emb_dim, dropout=dropout, use_scale_shift_norm=use_scale_shift_norm)
        spade = dict(label_channels=num_classes, spade_hidden=spade_hidden)

        # 1. timestep embedding: sinusoid(num_channels) -> Linear -> SiLU -> Linear
        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))

        # 2. encoder on the noisy image only
        ch = widths[0]
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, out_channels=width, **res)]
                ch = width
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_head_channels))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != len(widths) - 1:
                down = ResBlock(ch, down=True, **res) if resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepSequential(down))
                skips.append(ch)
                ds *= 2

        # 3. middle, conditioned on the mask
        self.middle_block = TimestepSequential(
            _sized(ResBlock(ch, **res, **spade), hw, ds),
            AttentionBlock(ch, num_head_channels),
            _sized(ResBlock(ch, **res, **spade), hw, ds))

        # 4. decoder, conditioned on the mask, consuming the encoder skips
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                layers = [_sized(ResBlock(ch + skips.pop(), out_channels=width, **res, **spade),
                                 hw, ds)]
                ch = width
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(_sized(ResBlock(ch, up=True, **res, **spade), hw, ds)
                                  if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        # 5. head
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1)))

        # every SPADE layer knows its name, its key in a SpadeCondition (sizes: see _sized)
        for name, module in self.named_modules():
            if isinstance(module, SPADEGroupNorm):
                module.key = name
        self.use_checkpoint = use_checkpoint

    # ------------------------------------------------------------------ options
    @property
    def use_checkpoint(self) -> bool:
        return self._use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        """Gradient checkpointing of every block; active only in ``train()`` mode with grad."""
        self._use_checkpoint = bool(value)
        for m in self.modules():
            if isinstance(m, (ResBlock, AttentionBlock)):
                m.use_checkpoint = self._use_checkpoint

    def precompute_condition(self, segmap: torch.Tensor) -> SpadeCondition:
        """SPADE ``(gamma, beta)`` of every layer for ``segmap`` ``[B, num_classes, H, W]``.

        Passing the result as ``cond`` to :meth:`forward` gives bit-identical outputs to passing
        ``segmap`` and skips all SPADE convs. Runs under the caller's grad mode.
        """
        self._check_segmap(segmap)
        return SpadeCondition({m.key: m.modulation(segmap, m.size)
                               for m in self.modules() if isinstance(m, SPADEGroupNorm)})

    def _check_segmap(self, segmap: torch.Tensor) -> None:
        if segmap.ndim != 4 or segmap.shape[1] != self.num_classes:
            raise ValueError(
                f"segmap must be a one-hot [B, {self.num_classes}, H, W] tensor, got "
                f"{tuple(segmap.shape)}; build it with isdm.data.masks.one_hot(labels, num_classes)"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, x_t: torch.Tensor, t: Union[torch.Tensor, int, float],
                cond: Cond) -> torch.Tensor:
        """eps (and variance interpolation) ``[B, 6 or 3, H, W]``; ``decode(encode(x_t, t), cond)``.

        Args:
            x_t: noisy images ``[B, 3, H, W]``, ``(H, W)`` = :attr:`image_size`.
            t: ORIGINAL chain indices ``[B]`` (int or float) or one scalar for the whole batch.
            cond: one-hot segmap ``[B, num_classes, H, W]`` (null label = zeros) or a
                :class:`SpadeCondition` from :meth:`precompute_condition`.
        """
        return self.decode(self.encode(x_t, t), cond)

    def encode(self, x_t: torch.Tensor, t: Union[torch.Tensor, int, float]) -> Encoded:
        """The mask-independent half of :meth:`forward`: timestep embedding and encoder.

        Classifier-free guidance runs it once for the conditional and the unconditional pass
        (both see the same ``x_t`` and ``t``); ``decode`` of the result is bit-identical to the
        corresponding part of a full forward.
        """
        b = x_t.shape[0]
        if x_t.ndim != 4 or x_t.shape[1:] != (self.in_channels, *self.image_size):
            raise ValueError(f"x_t must be [B, {self.in_channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}], got {tuple(x_t.shape)}")
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or [B]=[{b}], got {tuple(t.shape)}")
        # 1. time
        emb = self.time_embed(timestep_embedding(t, self.num_channels).to(x_t.dtype))
        # 2. encoder: no mask
        h, skips = x_t, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        return Encoded(emb=emb, skips=skips)

    def decode(self, enc: Encoded, cond: Cond) -> torch.Tensor:
        """The mask-conditioned half of :meth:`forward`: middle, decoder and head."""
        b = len(enc)
        if isinstance(cond, SpadeCondition):
            if len(cond) != b:
                raise ValueError(f"SpadeCondition has batch {len(cond)} but x_t has {b}")
        else:
            self._check_segmap(cond)
            if cond.shape[0] != b:
                raise ValueError(f"segmap has batch {cond.shape[0]} but x_t has {b}")
        emb, skips = enc.emb, list(enc.skips)
        # 3. middle and 4. decoder: SPADE on the mask
        h = self.middle_block(skips[-1], emb, cond)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, cond)
        # 5. head
        return self.out(h)


@dataclass(frozen=True)
class Encoded:
    """What :meth:`SDMUNet.encode` hands to :meth:`SDMUNet.decode`.

    ``emb`` the timestep embedding ``[B, 4 * num_channels]``; ``skips`` every encoder block's
    output, shallowest first (the last one is the middle block's input), each ``[B, C_l, h, w]``.
    """

    emb: torch.Tensor
    skips: list[torch.Tensor]

    def __len__(self) -> int:
        return self.emb.shape[0]

    def repeat(self, n: int) -> "Encoded":
        """The batch repeated ``n`` times (``[e; e; ...]``), for one batched decode of ``n``
        conditions of the same ``x_t``."""
        # cat, not Tensor.repeat: it keeps the channels-last layout of the skips
        return Encoded(emb=torch.cat([self.emb] * n),
                       skips=[torch.cat([s] * n) for s in self.skips])


def _hw(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def _sized(block: ResBlock, hw: tuple[int, int], ds: int) -> ResBlock:
    """Record the feature-map ``(h, w)`` of a SPADE ResBlock's two norms at down-sampling
    factor ``ds`` (the second norm sees the up-sampled map)."""
    h, w = hw[0] // ds, hw[1] // ds
    block.in_norm.size = (h, w)
    block.out_norm.size = (2 * h, 2 * w) if block.up else (h, w)
    return block


def _validate(image_size: Union[int, Sequence[int]], num_classes: int, num_channels: int,
              channel_mult: Sequence[float], num_res_blocks: int,
              attention_resolutions: Sequence[int], num_head_channels: int,
              spade_hidden: int) -> list[int]:
    """Check the sizes; return the per-level widths. Messages say which key to change."""
    hw = _hw(image_size)
    if not channel_mult:
        raise ValueError("model.channel_mult is empty: resolve it with "
                         "isdm.config.default_channel_mult(image_size) before building")
    widths = [int(m * num_channels) for m in channel_mult]
    levels = len(widths)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: need at least 1 segmap channel")
    if num_res_blocks < 1 or spade_hidden < 1:
        raise ValueError("model.num_res_blocks and model.spade_hidden must be >= 1")
    bad = [w for w, m in zip(widths, channel_mult) if w < 32 or w % 32 or w != m * num_channels]
    if bad:
        raise ValueError(
            f"model.num_channels={num_channels} x channel_mult={tuple(channel_mult)} gives widths "
            f"{widths}; each must be a whole multiple of 32 (GroupNorm with 32 groups)")
    shown = f"{hw[0]}" if hw[0] == hw[1] else f"{list(hw)}"
    if hw[0] % 2 ** (levels - 1) or hw[1] % 2 ** (levels - 1):
        raise ValueError(
            f"image_size={shown} is not divisible by 2**(levels-1)={2 ** (levels - 1)} for "
            f"{levels} levels (channel_mult={tuple(channel_mult)}); use fewer levels or another size")
    reachable = {min(hw) // 2 ** level: level for level in range(levels)}
    for r in attention_resolutions:
        if r not in reachable:
            raise ValueError(
                f"model.attention_resolutions contains {r}, but the feature maps (short side) of "
                f"a {shown} px model with {levels} levels are {sorted(reachable, reverse=True)}")
    if num_head_channels < 1:
        raise ValueError(f"model.num_head_channels={num_head_channels}: must be >= 1")
    attn_widths = {widths[reachable[r]] for r in attention_resolutions} | {widths[-1]}
    for w in sorted(attn_widths):
        if w % num_head_channels:
            raise ValueError(
                f"model.num_head_channels={num_head_channels} does not divide the width {w} of an "
                f"attention layer (the middle block always has one); use a divisor of {w}")
    return widths
