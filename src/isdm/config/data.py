"""The ``data`` section: dataset layout, classes and the geometry that brings images to the
network (``image_size`` int or ``[H, W]``, ``resize``, random ``crop`` s of scaled images).

Each field's valid range is in ``RULES`` (see :mod:`isdm.config.checks`); rules that tie
several fields together are in ``_problems``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Union

from isdm.config.checks import PROBABILITY, TEXT, Problem, Rule, Section, in_range
from isdm.errors import ConfigError

__all__ = ["DataConfig", "image_hw", "square_as_int", "canonical_dataset_mode"]

_MODE_ALIASES = {
    "binary": "binary",
    "lemon-binary": "binary",
    "multi-class": "multi-class",
    "multiclass": "multi-class",
    "lemon-multi-class": "multi-class",
}


def canonical_dataset_mode(mode: str) -> str:
    """Map ``lemon-binary`` / ``lemon-multi-class`` aliases onto ``binary`` / ``multi-class``."""
    try:
        return _MODE_ALIASES[mode]
    except KeyError:
        raise ConfigError(
            f"data.dataset_mode: unknown mode {mode!r}; use one of 'binary', 'multi-class' "
            "(aliases 'lemon-binary', 'lemon-multi-class')"
        ) from None


def _side(v: int) -> bool:
    return isinstance(v, int) and v >= 8 and v % 8 == 0


def square_as_int(section: Section) -> None:
    """``image_size: [64, 64]`` is the square ``64``: one spelling per size, so checkpoints and
    configs compare equal however the square was written."""
    v = section.image_size
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1] and isinstance(v[0], int):
        object.__setattr__(section, "image_size", v[0])


def image_hw(image_size: Union[int, tuple[int, ...]]) -> tuple[int, int]:
    """``64 -> (64, 64)``, ``(48, 96) -> (48, 96)``: an ``image_size`` as (height, width)."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


@dataclass(frozen=True)
class DataConfig(Section):
    """Dataset layout ``<root>/{train,test}/{images,masks}`` and preprocessing.

    Binary masks: any value > 0 is the defect class 1 (so {0,1} and {0,255} both work).
    Multi-class masks: 8-bit gray or palette PNG holding class ids ``0..num_classes-1``;
    ``ignore_index`` pixels are excluded from losses and metrics.

    Geometry (:mod:`isdm.data.transforms`): ``image_size`` is the network's input, an int
    (square) or ``[H, W]`` (:attr:`size`). Without ``crop`` every image is brought to it by
    ``resize``: ``stretch`` (squash the whole image), ``crop`` (resize the short side, cut the
    centre) or ``pad`` (resize the long side, letterbox: mid-grey image, ``ignore_index`` mask,
    padding excluded from every loss and metric; needs ``ignore_index``). With ``crop: true``
    images are scaled by ``scale`` (1.0 = native pixels, aspect kept) and every training item is
    a random ``image_size`` crop, centred on a pixel of a defect class (1..C-1) present in the
    image with probability ``crop_defect_prob``.
    """

    SECTION = "data"
    RULES = {
        "root": (TEXT,),
        "num_classes": (in_range(2, 255),),
        "image_size": (Rule(lambda v: _side(v) if isinstance(v, int) else
                            len(v) == 2 and all(_side(x) for x in v),
                            "must be a multiple of 8, at least 8, or [H, W] of such"),),
        "scale": (in_range(0, 16, open_lo=True),),
        "crop_defect_prob": (PROBABILITY,),
    }

    root: str = "data/synth"
    dataset_mode: str = "multi-class"
    num_classes: int = 5
    ignore_index: Optional[int] = 255
    image_size: Union[int, tuple[int, ...]] = 64
    resize: Literal["stretch", "crop", "pad"] = "stretch"
    crop: bool = False
    scale: float = 1.0
    crop_defect_prob: float = 0.5
    hflip: bool = True

    @property
    def size(self) -> tuple[int, int]:
        """``image_size`` as ``(H, W)``."""
        return image_hw(self.image_size)

    @property
    def pads(self) -> bool:
        """Whether items may hold padding (``pad`` letterboxing, or crops of an image smaller
        than ``image_size``), so they carry a ``valid`` map."""
        return self.crop or self.resize == "pad"

    def _resolve(self) -> None:
        if self.dataset_mode in _MODE_ALIASES:
            object.__setattr__(self, "dataset_mode", _MODE_ALIASES[self.dataset_mode])
        square_as_int(self)

    def _problems(self) -> Iterable[Problem]:
        if self.dataset_mode not in _MODE_ALIASES:
            yield Problem("dataset_mode", self.dataset_mode, "must be 'binary' or 'multi-class' "
                          "(aliases 'lemon-binary', 'lemon-multi-class')")
        if self.dataset_mode == "binary" and self.num_classes != 2:
            yield Problem("num_classes", self.num_classes, "data.dataset_mode='binary' needs 2; "
                          "set data.num_classes=2 or dataset_mode='multi-class'")
        # (num_classes > 255 is its own problem: no ignore_index could fit, so no hint here)
        if (self.ignore_index is not None and self.num_classes <= 255
                and not self.num_classes <= self.ignore_index <= 255):
            yield Problem("ignore_index", self.ignore_index,
                          f"must be in {self.num_classes}..255 (uint8 label maps, not a class id "
                          f"0..{self.num_classes - 1}) or null; use 255")
        if self.ignore_index is None and self.pads:
            what = "data.crop=true (an image smaller than the crop is padded)" if self.crop \
                else "data.resize='pad'"
            yield Problem("ignore_index", None, f"{what} marks padding with ignore_index in the "
                          "masks: set data.ignore_index=255 (a value no class uses)")
