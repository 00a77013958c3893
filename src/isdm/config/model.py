"""The ``model`` section: SDM UNet sizes, the named presets, and the UNet's size rules.

Presets mean what they say. ``preset`` names a network of :data:`MODEL_PRESETS`:

- A preset sets every SIZE key (all keys but ``preset`` and the training knobs ``dropout`` and
  ``use_checkpoint``, which do not change the weights). A size key given with another value
  than the preset's is an error that names both values; repeating the preset's value is fine
  (a stored config, resolved, names the preset and all its sizes; ``params.yaml`` gives only
  the preset, so switching presets is one change).
- ``dropout`` / ``use_checkpoint`` take the preset's value unless given.
- ``preset: ''`` = no preset: every key not given takes the ``default`` preset's value.
- ``preset`` not given: the same as ``''``, and the resolved ``preset`` is ``default`` when
  the sizes equal that preset (else ``''``). So ``ModelConfig() == ModelConfig(preset="default")``
  and a resolved config never names a preset its sizes contradict.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

from isdm.config.checks import (
    GREATER_0,
    Problem,
    Rule,
    Section,
    SectionError,
    at_least,
    each,
    in_range,
    show,
)
from isdm.errors import ConfigError

__all__ = ["ModelConfig", "MODEL_PRESETS", "default_channel_mult", "preset_clashes",
           "unet_problems"]

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: 0.52 M params, 0.48 GFLOP per 32 px image; attention only in the middle block,
    # so it builds at any even image size
    "tiny": dict(
        num_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_resolutions=(),
        num_head_channels=32, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
        spade_hidden=16, dropout=0.0, use_checkpoint=False,
    ),
    # the embedded pipeline: 2.86 M params, 2.52 GFLOP per 64 px image (35% in SPADE), ~0.5 s
    # per batch-8 training step on 2 CPU cores; needs image_size divisible by 8. SPADE hidden 16
    # (not 32) is 1.2x faster to train and still plenty for 5 classes
    "default": dict(
        num_channels=32, channel_mult=(1, 1, 2, 3), num_res_blocks=1, attention_resolutions=(16,),
        num_head_channels=32, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
        spade_hidden=16, dropout=0.0, use_checkpoint=False,
    ),
    # the original ISDM 256 px configuration (~652 M parameters): GPU only
    "original": dict(
        num_channels=256, channel_mult=(), num_res_blocks=2, attention_resolutions=(32, 16, 8),
        num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
        spade_hidden=128, dropout=0.0, use_checkpoint=True,
    ),
}

#: keys a preset suggests but does not fix: they change training, not the weights
FREE_KEYS = ("dropout", "use_checkpoint")
SIZE_KEYS = tuple(k for k in MODEL_PRESETS["default"] if k not in FREE_KEYS)

# Channel multipliers chosen by image size, as in guided-diffusion / SDM.
_CHANNEL_MULT_BY_SIZE = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2),
}


Size = Union[int, tuple[int, ...]]


def _hw(image_size: Size) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def default_channel_mult(image_size: Size) -> tuple[float, ...]:
    """The guided-diffusion channel multipliers for ``image_size`` (32/64/128/256/512); a
    rectangle ``(H, W)`` takes those of its short side."""
    side = min(_hw(image_size))
    if side in _CHANNEL_MULT_BY_SIZE:
        return _CHANNEL_MULT_BY_SIZE[side]
    raise ConfigError(
        f"model.channel_mult is empty and image_size={show(image_size)} has no default; "
        f"set model.channel_mult explicitly (defaults exist for {sorted(_CHANNEL_MULT_BY_SIZE)})"
    )


class _Unset:
    """Default of every :class:`ModelConfig` field: "not given", replaced on construction."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(x == y for x, y in zip(a, b))
    return a == b


def preset_clashes(preset: str, values: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value, preset's value)`` for every size key in ``values`` that differs from
    preset ``preset`` (lists and tuples compare element-wise)."""
    fixed = MODEL_PRESETS[preset]
    return [(k, values[k], fixed[k]) for k in SIZE_KEYS
            if k in values and not _same(values[k], fixed[k])]


def _widths(channel_mult: Iterable[float], num_channels: int) -> tuple[list[int], list[int]]:
    """The per-level widths and those SDMUNet refuses (not a whole multiple of 32, >= 32)."""
    mult = list(channel_mult)
    widths = [int(m * num_channels) for m in mult]
    bad = [w for w, m in zip(widths, mult) if w < 32 or w % 32 or w != m * num_channels]
    return widths, bad


@dataclass(frozen=True)
class ModelConfig(Section):
    """SDM UNet sizes. ``attention_resolutions`` are feature-map sizes in pixels (e.g. 16 = 16x16;
    for a rectangular ``data.image_size`` the short side: 16 = 16x24 at ``[64, 96]``).

    ``preset``: see the module docstring. An empty ``channel_mult`` means "chosen by image size"
    (256 -> 1,1,2,2,4,4; 128 -> 1,1,2,3,4; 64 -> 1,2,3,4; 32 -> 1,2,2).
    """

    SECTION = "model"
    RULES = {
        "num_channels": (Rule(lambda v: v >= 32 and v % 32 == 0,
                              "must be a multiple of 32, at least 32 (GroupNorm with 32 groups)"),),
        "channel_mult": (each(GREATER_0),),
        "num_res_blocks": (at_least(1),),
        "attention_resolutions": (each(at_least(1)),),
        "num_head_channels": (at_least(1),),
        "dropout": (in_range(0, 1, open_hi=True),),
        "spade_hidden": (at_least(1),),
    }

    preset: str = _UNSET
    num_channels: int = _UNSET
    channel_mult: tuple[float, ...] = _UNSET
    num_res_blocks: int = _UNSET
    attention_resolutions: tuple[int, ...] = _UNSET
    num_head_channels: int = _UNSET
    dropout: float = _UNSET
    resblock_updown: bool = _UNSET
    use_scale_shift_norm: bool = _UNSET
    learn_sigma: bool = _UNSET
    spade_hidden: int = _UNSET
    use_checkpoint: bool = _UNSET

    def _resolve(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if getattr(self, f.name) is not _UNSET}
        preset = given.pop("preset", None)
        if preset is not None and preset != "" and preset not in MODEL_PRESETS:
            close = difflib.get_close_matches(str(preset), MODEL_PRESETS, n=1, cutoff=0.6)
            raise SectionError(self.SECTION, [Problem("preset", preset, (
                f"unknown preset{f'; did you mean {close[0]!r}?' if close else ''} "
                f"(valid: '', {', '.join(map(repr, MODEL_PRESETS))})"))])
        clashes = preset_clashes(preset, given) if preset else []
        if clashes:
            raise SectionError(self.SECTION, [Problem(k, v, (
                f"contradicts model.preset={preset!r}, which sets {show(p)}: drop the key, use "
                "another preset, or set model.preset: '' to choose every size yourself"))
                for k, v, p in clashes])
        values = {**MODEL_PRESETS[preset or "default"], **given}
        if preset is None:
            preset = "" if preset_clashes("default", values) else "default"
        values["preset"] = preset
        for name, value in values.items():
            if name in ("channel_mult", "attention_resolutions"):
                value = tuple(value)
            object.__setattr__(self, name, value)

    def _problems(self) -> Iterable[Problem]:
        widths, bad = _widths(self.channel_mult, self.num_channels)
        if bad:
            yield Problem("channel_mult", self.channel_mult,
                          f"times num_channels={self.num_channels} gives the widths {widths}; "
                          "each must be a whole multiple of 32, at least 32")


def unet_problems(model: ModelConfig, image_size: Size) -> list[Problem]:
    """The size rules :class:`isdm.models.unet.SDMUNet` enforces, for ``image_size`` images (an
    int: square; ``(H, W)``: a rectangle; keys are dotted): each level of ``channel_mult`` but
    the last halves the feature map, so both sides must be divisible by ``2**(levels-1)``; every
    attention resolution must be one of the feature-map sizes (of the short side, for a
    rectangle) ``min(H, W) / 2**level``; ``num_head_channels`` must divide the width of every
    attention layer (the middle block always has one)."""
    h, w = _hw(image_size)
    side = min(h, w)
    shown = show(image_size)
    mult = tuple(model.channel_mult) or _CHANNEL_MULT_BY_SIZE.get(side)
    if mult is None:
        return [Problem("model.channel_mult", (), (
            f"empty means 'chosen by image size', but data.image_size={shown} has no "
            f"default (defaults exist for {sorted(_CHANNEL_MULT_BY_SIZE)}); give the list"))]
    widths, bad = _widths(mult, model.num_channels)
    if bad:
        return [Problem("model.channel_mult", mult, (
            f"(chosen by image size) times num_channels={model.num_channels} gives the widths "
            f"{widths}; each must be a whole multiple of 32: change model.num_channels"))]
    levels = len(mult)
    step = 2 ** (levels - 1)
    if h % step or w % step:
        fit = [max(step, round(x / step) * step) for x in (h, w)]
        example = fit[0] if isinstance(image_size, int) else show(fit)
        return [Problem("data.image_size", image_size, (
            f"the {levels} levels of model.channel_mult={show(mult)} halve it {levels - 1} "
            f"times: use a multiple of {step} (e.g. {example}) or fewer levels"))]
    reachable = {side // 2 ** level: level for level in range(levels)}
    where = f"{h} px" if h == w else f"{shown} (short side {side})"
    out = [Problem("model.attention_resolutions", model.attention_resolutions, (
        f"{r} is not a feature-map size of a {where} model with {levels} levels "
        f"(those are {sorted(reachable, reverse=True)})"))
        for r in model.attention_resolutions if r not in reachable]
    if out:
        return out[:1]
    attn = sorted({widths[reachable[r]] for r in model.attention_resolutions} | {widths[-1]})
    return [Problem("model.num_head_channels", model.num_head_channels, (
        f"must divide the width {w_} of an attention layer (the middle block always has one)"))
        for w_ in attn if w_ % model.num_head_channels][:1]
