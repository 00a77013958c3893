"""Loading and resizing images and masks with identical geometry, and the joint random flip.

- Images: RGB (gray / palette / RGBA converted), resized bicubic (PIL's bicubic filter scales its
  support when shrinking, so large images are anti-aliased without the original's BOX pre-pass).
- Masks: decoded to class ids first (:func:`isdm.data.masks.decode_mask`), then resized with
  nearest neighbour, so no interpolated, invalid ids appear.
- Geometry (:class:`Placement`): a region ``box`` of the source is resized to ``content`` and
  put at ``offset`` of an ``out`` canvas; image and mask use the same placement. For an output
  of ``size`` (int = square, or ``(H, W)``), ``resize``:

  - ``stretch`` (the original tool): the whole image is squeezed to the output;
  - ``crop``: the short side is fitted and the centre cut out (defects at the edges are lost);
  - ``pad``: the long side is fitted and the rest letterboxed, centred: image pixels
    :data:`PAD_GRAY`, mask pixels the fill id (``ignore_index``), so no pixel is cut.

  With ``data.crop`` the image is instead scaled by ``data.scale`` (aspect kept) and padded
  the same way up to at least ``data.image_size`` where it is smaller (random crops are then
  cut by :mod:`isdm.data.crops`). :func:`fit_placement` is that choice for a
  :class:`~isdm.config.DataConfig`; padded pixels are ``False`` in :func:`valid_map`.
- Pixel values: ``x = uint8 / 127.5 - 1`` in [-1, 1], float32 ``[3, H, W]`` (the dataset sets
  padding to exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from isdm.config import DataConfig

from isdm.data.masks import MaskValueError, decode_mask, read_mask_array
from isdm.errors import DatasetError

__all__ = ["PAD_GRAY", "Placement", "as_hw", "placement", "fit_placement", "place_image",
           "place_ids", "valid_map", "resize_image", "resize_ids", "load_image", "load_mask",
           "to_tensor_image", "random_hflip"]

PAD_GRAY = 128  # uint8 image value of padding (the dataset's tensors hold exactly 0 there)

Size = Union[int, Sequence[int]]


def as_hw(size: Size) -> tuple[int, int]:
    """``64 -> (64, 64)``; ``(48, 96) -> (48, 96)``."""
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    h, w = size
    return (int(h), int(w))


@dataclass(frozen=True)
class Placement:
    """Source region ``box`` (left, top, right, bottom; floats) -> ``content`` (w, h) pixels at
    ``offset`` (left, top) of an ``out`` (w, h) canvas."""

    box: tuple[float, float, float, float]
    content: tuple[int, int]
    offset: tuple[int, int]
    out: tuple[int, int]

    @property
    def padded(self) -> bool:
        return self.content != self.out


def _centred(content: tuple[int, int], out: tuple[int, int], width: int,
             height: int) -> Placement:
    offset = ((out[0] - content[0]) // 2, (out[1] - content[1]) // 2)
    return Placement((0.0, 0.0, float(width), float(height)), content, offset, out)


def placement(width: int, height: int, size: Size, resize: str = "stretch") -> Placement:
    """Where a ``width x height`` source goes in an output of ``size`` under ``resize``."""
    h, w = as_hw(size)
    wider = width * h >= height * w  # the source is at least as wide as the output's aspect
    if resize == "stretch":
        return Placement((0.0, 0.0, float(width), float(height)), (w, h), (0, 0), (w, h))
    if resize == "crop":
        # the largest centred region of the output's aspect (a square: min(width, height))
        rw, rh = (height * w / h, float(height)) if wider else (float(width), width * h / w)
        left, top = (width - rw) / 2.0, (height - rh) / 2.0
        return Placement((left, top, left + rw, top + rh), (w, h), (0, 0), (w, h))
    if resize == "pad":
        content = ((w, max(1, min(h, round(height * w / width)))) if wider
                   else (max(1, min(w, round(width * h / height))), h))
        return _centred(content, (w, h), width, height)
    raise ValueError(f"resize={resize!r}: use 'stretch', 'crop' or 'pad'")


def fit_placement(width: int, height: int, cfg: "DataConfig") -> Placement:
    """The placement a data config gives a ``width x height`` source: ``cfg.resize`` to
    ``cfg.image_size``, or with ``cfg.crop`` scaled by ``cfg.scale`` and padded up to at least
    ``cfg.image_size``."""
    if not cfg.crop:
        return placement(width, height, cfg.image_size, cfg.resize)
    h, w = as_hw(cfg.image_size)
    content = (max(1, round(width * cfg.scale)), max(1, round(height * cfg.scale)))
    return _centred(content, (max(content[0], w), max(content[1], h)), width, height)


def _resized(img: "Image.Image", p: Placement, resample: int) -> "Image.Image":
    if img.size == p.content and p.box == (0.0, 0.0, float(img.width), float(img.height)):
        return img
    return img.resize(p.content, resample, box=p.box)


def place_image(img: "Image.Image", p: Placement) -> "Image.Image":
    """PIL image -> RGB PIL image of ``p.out`` (bicubic; padding :data:`PAD_GRAY`)."""
    from PIL import Image

    out = _resized(img.convert("RGB"), p, Image.Resampling.BICUBIC)
    if not p.padded:
        return out
    canvas = Image.new("RGB", p.out, (PAD_GRAY,) * 3)
    canvas.paste(out, p.offset)
    return canvas


def place_ids(ids: np.ndarray, p: Placement, fill: Optional[int] = None) -> np.ndarray:
    """uint8 class ids ``[H, W]`` -> ``p.out`` (nearest neighbour; padding ``fill``).

    Raises:
        ValueError: padding is needed but ``fill`` is None (no ``ignore_index`` to mark it).
    """
    from PIL import Image

    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    same = (ids.shape[1], ids.shape[0]) == p.content and p.box == (0.0, 0.0) + p.content
    out = ids if same else np.asarray(Image.fromarray(ids).resize(
        p.content, Image.Resampling.NEAREST, box=p.box))
    if not p.padded:
        return out
    if fill is None:
        raise ValueError("padding needs an id to mark it: set data.ignore_index (e.g. 255)")
    canvas = np.full((p.out[1], p.out[0]), fill, dtype=np.uint8)
    left, top = p.offset
    canvas[top:top + out.shape[0], left:left + out.shape[1]] = out
    return canvas


def valid_map(p: Placement) -> Optional[np.ndarray]:
    """bool ``[H, W]`` of ``p.out``: True where the source lands, False on padding; None when
    nothing is padded."""
    if not p.padded:
        return None
    valid = np.zeros((p.out[1], p.out[0]), dtype=bool)
    left, top = p.offset
    valid[top:top + p.content[1], left:left + p.content[0]] = True
    return valid


def resize_image(img: "Image.Image", size: Size, resize: str = "stretch") -> "Image.Image":
    """PIL image -> RGB PIL image of ``size`` (bicubic) under ``resize``."""
    return place_image(img, placement(img.width, img.height, size, resize))


def resize_ids(ids: np.ndarray, size: Size, resize: str = "stretch",
               fill: Optional[int] = None) -> np.ndarray:
    """uint8 class ids ``[H, W]`` -> ``size`` (nearest neighbour, same geometry as images;
    ``pad`` marks the letterbox with ``fill``)."""
    h, w = ids.shape
    return place_ids(ids, placement(w, h, size, resize), fill)


def load_image(path: str | Path, size: Optional[Size], resize: str = "stretch") -> "Image.Image":
    """Read an image file as RGB PIL, resized to ``size`` (None: original size)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB")
    return rgb if size is None else resize_image(rgb, size, resize)


def load_mask(
    path: str | Path,
    mode: str,
    num_classes: int,
    ignore_index: Optional[int],
    size: Optional[Size],
    resize: str = "stretch",
) -> np.ndarray:
    """Read a mask file as uint8 class ids of ``size`` (None: original size); ``pad`` fills
    the letterbox with ``ignore_index``.

    Raises:
        ValueError (:class:`isdm.data.masks.MaskValueError` for invalid ids) naming the file.
    """
    try:
        ids = decode_mask(read_mask_array(path), mode, num_classes, ignore_index)
    except MaskValueError as e:
        raise MaskValueError(f"{path}: {e}", e.values) from None
    except ValueError as e:
        raise DatasetError([f"{path}: {e}"]) from None
    return ids if size is None else resize_ids(ids, size, resize, ignore_index)


def to_tensor_image(rgb: "np.ndarray | Image.Image") -> "torch.Tensor":
    """uint8 ``[H, W, 3]`` (or RGB PIL) -> float32 ``[3, H, W]`` in [-1, 1] (``x/127.5 - 1``)."""
    import torch

    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


def random_hflip(*tensors: "torch.Tensor",
                 generator: "Optional[torch.Generator]" = None) -> "tuple[torch.Tensor, ...]":
    """Flip ``tensors`` (image ``[3, H, W]``, label ``[H, W]``, valid ``[1, H, W]``, ...)
    left-right together with probability 1/2.

    One ``torch.rand(1)`` is drawn from ``generator`` (None: torch's default generator, which a
    training run seeds and checkpoints, and which DataLoader workers seed per worker).
    """
    import torch

    if float(torch.rand(1, generator=generator)) < 0.5:
        return tuple(t.flip(-1) for t in tensors)
    return tensors
