"""Crops of large images: random training crops (defect-centred with a set probability) and the
window grid that covers a whole image for sliding-window prediction.

A defect class is any class id except background 0 and ``ignore_index``. A defect-centred crop
chooses a class uniformly among the defect classes present in the label map, then one of its
pixels uniformly, and centres the crop there (shifted inside the image at the borders), so a
class of a few pixels is drawn as often as a class covering half the image: without it, rare
classes almost never appear in a crop.

Every draw comes from the ``numpy.random.Generator`` passed in, in a fixed order (see
:func:`crop_origin`), so a crop is a pure function of the label map and the generator's seed.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["defect_pixels", "crop_origin", "random_crop", "sliding_windows"]

Size = Union[int, Sequence[int]]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    h, w = size
    return (int(h), int(w))


def defect_pixels(label: np.ndarray, ignore_index: Optional[int] = 255) -> dict[int, np.ndarray]:
    """``{class id: flat indices (row-major) of its pixels}`` for every defect class present in
    ``label`` (uint8 ``[H, W]``), in increasing class order; int32 below 2**31 pixels (these
    lists are cached per training image)."""
    flat = np.asarray(label).reshape(-1)
    counts = np.bincount(flat, minlength=256)
    classes = [c for c in np.flatnonzero(counts) if c != 0 and c != ignore_index]
    dtype = np.int32 if flat.size < 2**31 else np.int64
    return {int(c): np.flatnonzero(flat == c).astype(dtype) for c in classes}


def crop_origin(shape: tuple[int, int], size: Size, rng: np.random.Generator, defect_prob: float,
                pixels: Mapping[int, np.ndarray]) -> tuple[int, int]:
    """``(top, left)`` of a crop of ``size`` inside a map of ``shape`` ``(H, W)``.

    Draws, in order: ``u = rng.random()``; if ``u < defect_prob`` and ``pixels`` (from
    :func:`defect_pixels`) is not empty, a class index ``rng.integers(n_classes)`` and a pixel
    index ``rng.integers(n_pixels)``, and the crop is centred on that pixel (``top = row -
    h // 2``, clipped to the map); otherwise ``top = rng.integers(H - h + 1)`` and ``left =
    rng.integers(W - w + 1)`` (uniform over every position).

    Raises:
        ValueError: the crop is larger than the map (pad it first).
    """
    big_h, big_w = shape
    h, w = _hw(size)
    if h > big_h or w > big_w:
        raise ValueError(f"a {h}x{w} crop does not fit a {big_h}x{big_w} map; pad it first")
    u = rng.random()
    if u < defect_prob and pixels:
        classes = list(pixels)
        members = pixels[classes[int(rng.integers(len(classes)))]]
        row, col = divmod(int(members[int(rng.integers(len(members)))]), big_w)
        return (min(max(row - h // 2, 0), big_h - h), min(max(col - w // 2, 0), big_w - w))
    return (int(rng.integers(big_h - h + 1)), int(rng.integers(big_w - w + 1)))


def random_crop(image: np.ndarray, label: np.ndarray, size: Size, rng: np.random.Generator,
                defect_prob: float, ignore_index: Optional[int] = 255
                ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A random ``size`` crop of ``image`` (``[H, W, ...]``) and ``label`` (uint8 ``[H, W]``),
    centred on a defect pixel with probability ``defect_prob`` (:func:`crop_origin`).

    Returns:
        ``(image crop, label crop, (top, left))`` (views of the inputs).
    """
    h, w = _hw(size)
    top, left = crop_origin(label.shape, (h, w), rng, defect_prob,
                            defect_pixels(label, ignore_index))
    return image[top:top + h, left:left + w], label[top:top + h, left:left + w], (top, left)


def sliding_windows(height: int, width: int, window: Size,
                    stride: Optional[Size] = None) -> list[tuple[int, int]]:
    """``(top, left)`` of windows of ``window`` that together cover a ``height x width`` image.

    Windows start every ``stride`` pixels (default: ``window``, no overlap) and a last one is
    aligned with the bottom / right edge when the steps do not end there, so every pixel is in
    at least one window and no window leaves the image. Row-major order.

    Raises:
        ValueError: the window is larger than the image (pad it first) or a stride is < 1.
    """
    wh, ww = _hw(window)
    sh, sw = _hw(stride if stride is not None else (wh, ww))
    if wh > height or ww > width:
        raise ValueError(f"a {wh}x{ww} window does not fit a {height}x{width} image; pad it first")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride {(sh, sw)}: must be >= 1")

    def starts(total: int, win: int, step: int) -> list[int]:
        out = list(range(0, total - win + 1, step))
        return out if out[-1] == total - win else out + [total - win]

    return [(top, left) for top in starts(height, wh, sh) for left in starts(width, ww, sw)]
