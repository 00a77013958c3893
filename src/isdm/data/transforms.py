"""Loading and resizing images and masks with identical geometry, and the joint random flip.

- Images: RGB (gray / palette / RGBA converted), resized bicubic (PIL's bicubic filter scales its
  support when shrinking, so large images are anti-aliased without the original's BOX pre-pass).
- Masks: decoded to class ids first (:func:`isdm.data.masks.decode_mask`), then resized with
  nearest neighbour, so no interpolated, invalid ids appear.
- ``keep_aspect=False`` (the original tool): the whole image is squeezed to ``size x size``.
  ``keep_aspect=True``: the short side is resized to ``size`` and the centre ``size x size`` is
  cropped; both are one PIL resize of a source box, so image and mask see the same box.
- Pixel values: ``x = uint8 / 127.5 - 1`` in [-1, 1], float32 ``[3, H, W]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

from isdm.data.masks import MaskValueError, decode_mask, read_mask_array
from isdm.errors import DatasetError

__all__ = ["source_box", "resize_image", "resize_ids", "load_image", "load_mask",
           "to_tensor_image", "random_hflip"]


def source_box(width: int, height: int, keep_aspect: bool) -> tuple[float, float, float, float]:
    """The region of a ``width x height`` source mapped onto the square output.

    The whole image, or with ``keep_aspect`` the centred square of side ``min(width, height)``
    (= resize short side to ``size`` + centre crop).
    """
    if not keep_aspect:
        return (0.0, 0.0, float(width), float(height))
    side = min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left, top, left + side, top + side)


def resize_image(img: "Image.Image", size: int, keep_aspect: bool = False) -> "Image.Image":
    """PIL image -> RGB PIL image ``size x size`` (bicubic)."""
    from PIL import Image

    img = img.convert("RGB")
    box = source_box(img.width, img.height, keep_aspect)
    if img.size == (size, size) and box == (0.0, 0.0, float(size), float(size)):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box)


def resize_ids(ids: np.ndarray, size: int, keep_aspect: bool = False) -> np.ndarray:
    """uint8 class ids ``[H, W]`` -> ``[size, size]`` (nearest neighbour, same box as images)."""
    from PIL import Image

    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    h, w = ids.shape
    box = source_box(w, h, keep_aspect)
    if (w, h) == (size, size) and box == (0.0, 0.0, float(size), float(size)):
        return ids
    img = Image.fromarray(ids)
    return np.asarray(img.resize((size, size), Image.Resampling.NEAREST, box=box))


def load_image(path: str | Path, size: Optional[int], keep_aspect: bool = False) -> "Image.Image":
    """Read an image file as RGB PIL, resized to ``size x size`` (None: original size)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB")
    return rgb if size is None else resize_image(rgb, size, keep_aspect)


def load_mask(
    path: str | Path,
    mode: str,
    num_classes: int,
    ignore_index: Optional[int],
    size: Optional[int],
    keep_aspect: bool = False,
) -> np.ndarray:
    """Read a mask file as uint8 class ids ``[size, size]`` (None: original size).

    Raises:
        ValueError (:class:`isdm.data.masks.MaskValueError` for invalid ids) naming the file.
    """
    try:
        ids = decode_mask(read_mask_array(path), mode, num_classes, ignore_index)
    except MaskValueError as e:
        raise MaskValueError(f"{path}: {e}", e.values) from None
    except ValueError as e:
        raise DatasetError([f"{path}: {e}"]) from None
    return ids if size is None else resize_ids(ids, size, keep_aspect)


def to_tensor_image(rgb: "np.ndarray | Image.Image") -> "torch.Tensor":
    """uint8 ``[H, W, 3]`` (or RGB PIL) -> float32 ``[3, H, W]`` in [-1, 1] (``x/127.5 - 1``)."""
    import torch

    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


def random_hflip(image: "torch.Tensor", label: "torch.Tensor",
                 generator: "Optional[torch.Generator]" = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """Flip image ``[3, H, W]`` and label ``[H, W]`` left-right together with probability 1/2.

    One ``torch.rand(1)`` is drawn from ``generator`` (None: torch's default generator, which a
    training run seeds and checkpoints, and which DataLoader workers seed per worker).
    """
    import torch

    if float(torch.rand(1, generator=generator)) < 0.5:
        return image.flip(-1), label.flip(-1)
    return image, label
