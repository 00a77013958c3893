"""The original tool's state-dict layout (SDM on guided-diffusion) mapped onto :class:`SDMUNet`.

The original ISDM tool saved bare ``state_dict`` files of SDM's ``UNetModel``. The network is
the same as :class:`SDMUNet` (same blocks in the same order, so ``time_embed``,
``input_blocks.N.k``, ``middle_block.k``, ``output_blocks.N.k`` and ``out`` index the same
layers); inside a block the names and a few layouts differ::

    original (guided-diffusion / SDM)                 isdm
    encoder ResBlock  in_layers.0 (GN), in_layers.2   in_norm, in_conv
                      out_layers.0 (GN), out_layers.3 out_norm, out_conv
    SDMResBlock       in_layers.1, out_layers.2       in_conv, out_conv
    both              skip_connection, emb_layers.1   skip, emb_layers.1
    SPADEGroupNorm    mlp_shared.0                    shared
                      mlp_gamma, mlp_beta [C, h,3,3]  gamma_beta [2C, h, 3, 3] (gamma rows first)
    AttentionBlock    qkv, proj_out: Conv1d [O, C, 1] qkv, proj: Conv2d [O, C, 1, 1]
                      qkv rows [heads, (q,k,v), d]    qkv rows [(q,k,v), heads, d]
    Downsample / Upsample   op / conv                 conv / conv

The qkv row order is guided-diffusion's ``QKVAttentionLegacy`` (``use_new_attention_order``
false, the original's default); with ``use_new_attention_order`` true the rows already are
``[(q,k,v), heads, d]``. Both scale ``q k^T`` by ``1/sqrt(d)`` like isdm's attention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from isdm.models.blocks import AttentionBlock, Downsample, ResBlock
from isdm.models.spade import SPADEGroupNorm
from isdm.models.unet import SDMUNet

__all__ = ["KeyProblems", "from_original", "original_sizes"]

# isdm sub-module -> original sub-module, inside a ResBlock (the SPADE norms keep their names)
_ENCODER_RES = {"in_norm": "in_layers.0", "in_conv": "in_layers.2", "out_norm": "out_layers.0",
                "out_conv": "out_layers.3", "skip": "skip_connection"}
_SPADE_RES = {"in_conv": "in_layers.1", "out_conv": "out_layers.2", "skip": "skip_connection"}


@dataclass
class KeyProblems:
    """Why an original state dict does not fit a network: ``missing`` original keys the network
    needs, ``unexpected`` original keys with no place in it, ``shapes`` (``"key: checkpoint
    [...], isdm [...]"``)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def _sources(model: SDMUNet) -> dict[str, tuple[str, ...]]:
    """isdm state-dict key -> the original keys it is made of (two for a SPADE gamma_beta)."""
    renamed: dict[str, tuple[str, ...]] = {}  # isdm module path -> original module path(s)
    for name, module in model.named_modules():
        if isinstance(module, ResBlock):
            for mine, theirs in (_SPADE_RES if module.spade else _ENCODER_RES).items():
                renamed[f"{name}.{mine}"] = (f"{name}.{theirs}",)
        elif isinstance(module, SPADEGroupNorm):
            renamed[f"{name}.shared"] = (f"{name}.mlp_shared.0",)
            renamed[f"{name}.gamma_beta"] = (f"{name}.mlp_gamma", f"{name}.mlp_beta")
        elif isinstance(module, AttentionBlock):
            renamed[f"{name}.proj"] = (f"{name}.proj_out",)
        elif isinstance(module, Downsample):
            renamed[f"{name}.conv"] = (f"{name}.op",)
    out = {}
    for key in model.state_dict():
        path, _, leaf = key.rpartition(".")
        out[key] = tuple(f"{p}.{leaf}" for p in renamed.get(path, (path,)))
    return out


def _split_heads_last(t: torch.Tensor, heads: int) -> torch.Tensor:
    """qkv rows ``[heads, 3, d]`` (legacy order) -> ``[3, heads, d]``; ``t`` is ``[3C, ...]``."""
    rest = t.shape[1:]
    return t.reshape(heads, 3, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def from_original(state: Mapping[str, torch.Tensor], model: SDMUNet,
                  legacy_attention: bool = True) -> tuple[dict[str, torch.Tensor], KeyProblems]:
    """The original state dict ``state`` as a float32 state dict of ``model``.

    Args:
        state: the original's ``state_dict`` (``model*.pt`` / ``ema_*.pt``), any float dtype.
        model: the isdm network of the same configuration (its attention head counts must be
            the original's: they fix the qkv row order).
        legacy_attention: the original's ``use_new_attention_order`` was false.

    Returns:
        ``(state_dict, problems)``; the state dict is complete only when ``problems`` is empty.
    """
    heads = {name: m.heads for name, m in model.named_modules() if isinstance(m, AttentionBlock)}
    target = model.state_dict()
    converted, problems, used = {}, KeyProblems(), set()
    for key, sources in _sources(model).items():
        absent = [s for s in sources if s not in state]
        problems.missing += absent
        used.update(sources)
        if absent:
            continue
        t = torch.cat([state[s] for s in sources]).float()
        if t.ndim == 3 and target[key].ndim == 4:  # Conv1d -> 1x1 Conv2d
            t = t.unsqueeze(-1)
        if t.shape != target[key].shape:
            problems.shapes.append(f"{' + '.join(sources)}: checkpoint {list(t.shape)}, "
                                   f"isdm {list(target[key].shape)}")
            continue
        path, _, leaf = key.rpartition(".")
        if legacy_attention and path.endswith(".qkv"):
            t = _split_heads_last(t, heads[path.rpartition(".")[0]])
        converted[key] = t.contiguous()
    problems.unexpected = sorted(k for k in state if k not in used)
    return converted, problems


def _first(state: Mapping[str, torch.Tensor], pattern: str) -> torch.Tensor | None:
    rx = re.compile(pattern)
    return next((v for k, v in state.items() if rx.fullmatch(k)), None)


def original_sizes(state: Mapping[str, torch.Tensor], image_size: int) -> dict[str, Any]:
    """The isdm config values an original state dict was built with, read from its shapes.

    Keys are dotted isdm config keys (``model.num_channels``, ``model.channel_mult``,
    ``model.num_res_blocks``, ``model.attention_resolutions``, ``model.learn_sigma``,
    ``model.resblock_updown``, ``model.use_scale_shift_norm``, ``model.spade_hidden``,
    ``data.num_classes``); a value that cannot be read (odd or partial state dict) is left out.
    ``image_size`` turns attention levels into feature-map sizes.
    """
    sizes: dict[str, Any] = {}
    embed, head = state.get("time_embed.0.weight"), state.get("out.2.weight")
    if embed is not None and embed.ndim == 2:
        sizes["model.num_channels"] = int(embed.shape[1])
    if head is not None and head.ndim == 4:
        sizes["model.learn_sigma"] = int(head.shape[0]) == 6
    shared = _first(state, r"middle_block\.0\.in_norm\.mlp_shared\.0\.weight")
    if shared is not None and shared.ndim == 4:
        sizes["data.num_classes"], sizes["model.spade_hidden"] = int(shared.shape[1]), int(shared.shape[0])
    emb, conv = state.get("middle_block.0.emb_layers.1.weight"), state.get("middle_block.0.out_layers.2.weight")
    if emb is not None and conv is not None:
        sizes["model.use_scale_shift_norm"] = int(emb.shape[0]) == 2 * int(conv.shape[0])
    sizes.update(_decoder_sizes(state, image_size, sizes.get("model.num_channels")))
    return sizes


def _decoder_sizes(state: Mapping[str, torch.Tensor], image_size: int,
                   num_channels: int | None) -> dict[str, Any]:
    """Levels, widths, attention and up-sampling kind from the ``output_blocks`` keys."""
    layers: dict[int, set[int]] = {}
    for key in state:
        m = re.match(r"output_blocks\.(\d+)\.(\d+)\.", key)
        if m:
            layers.setdefault(int(m[1]), set()).add(int(m[2]))
    if not layers or sorted(layers) != list(range(len(layers))):
        return {}
    attention = {i for i in layers if f"output_blocks.{i}.1.qkv.weight" in state}
    ups = [i for i, js in layers.items() if max(js) == (2 if i in attention else 1)]
    levels = len(ups) + 1
    if len(layers) % levels:
        return {}
    per_level = len(layers) // levels
    sizes: dict[str, Any] = {"model.num_res_blocks": per_level - 1}
    if ups:
        sizes["model.resblock_updown"] = any(
            k.startswith(f"output_blocks.{ups[0]}.{max(layers[ups[0]])}.in_norm.") for k in state)
    attn_levels = sorted({levels - 1 - i // per_level for i in attention})
    sizes["model.attention_resolutions"] = [image_size // 2 ** lv for lv in attn_levels]
    widths = [state.get(f"output_blocks.{(levels - 1 - lv) * per_level}.0.out_layers.2.weight")
              for lv in range(levels)]
    if num_channels and all(w is not None for w in widths):
        sizes["model.channel_mult"] = [int(w.shape[0]) / num_channels for w in widths]
    return sizes
