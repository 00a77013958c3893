"""Seeded mask augmentation that creates new layouts from existing label maps.

Operates on uint8 class-id maps ``[H, W]`` (0 = background, ``ignore_index`` = unlabeled) and,
optionally, on the real image ``[H, W, 3]`` uint8 that belongs to the mask, so that ``images/``
of the sampling output still shows a (composited) real image matching the new layout.

Operations, each applied with its :class:`isdm.config.AugmentConfig` probability, in this order:

1. ``copy_paste``: one defect instance (an 8-connected component of one non-background,
   non-ignored class) of a donor mask is pasted at a random position; its pixels overwrite the
   target's (the donor's image pixels are pasted too).
2. ``hflip`` / ``vflip``: mirror left-right / top-bottom.
3. ``rot90``: rotate by k*90 degrees, k in {1, 2, 3} (only k=2 for non-square maps).
4. ``translate``: shift by up to ``max_shift`` of the size in each axis; uncovered mask pixels
   become background (0), uncovered image pixels repeat the nearest edge.

All random numbers are drawn up front in a fixed order from ``numpy.random.default_rng(seed)``,
so the result is a pure function of (mask, donors, seed, config). ``ignore_index`` pixels are
moved along with the geometry and are never treated as (part of) a defect instance.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from isdm.config import AugmentConfig

__all__ = ["AugmentResult", "augment_mask", "connected_instances", "paste_instance", "translate"]


@dataclass(frozen=True)
class AugmentResult:
    """An augmented layout: ``mask`` uint8 [H, W], ``image`` uint8 [H, W, 3] or None, and the
    applied operations as short strings (``"hflip"``, ``"rot90x3"``, ``"translate(2,-5)"``,
    ``"paste(donor=4,class=2,at=(3,7))"``) for the manifest."""

    mask: np.ndarray
    image: Optional[np.ndarray]
    ops: tuple[str, ...]


def connected_instances(mask: np.ndarray, ignore_index: Optional[int] = 255) -> list[np.ndarray]:
    """8-connected components of each non-background class, as ``[n, 2]`` (row, col) arrays.

    Background (0) and ``ignore_index`` pixels are never part of an instance. Components are
    ordered by class id, then by their first pixel in row-major order (deterministic).
    """
    mask = np.asarray(mask)
    h, w = mask.shape
    fg = (mask != 0)
    if ignore_index is not None:
        fg &= mask != ignore_index
    seen = np.zeros_like(fg)
    comps: list[tuple[int, int, np.ndarray]] = []
    for r0, c0 in zip(*np.nonzero(fg)):
        if seen[r0, c0]:
            continue
        cls = mask[r0, c0]
        seen[r0, c0] = True
        queue, pixels = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and not seen[rr, cc] and fg[rr, cc] \
                            and mask[rr, cc] == cls:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        comps.append((int(cls), r0 * w + c0, np.array(pixels, dtype=np.int64)))
    comps.sort(key=lambda x: (x[0], x[1]))
    return [p for _, _, p in comps]


def paste_instance(mask: np.ndarray, image: Optional[np.ndarray], pixels: np.ndarray,
                   cls: int, offset: tuple[int, int],
                   donor_image: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Copy of ``mask`` with ``pixels`` ([n, 2] donor coordinates) shifted by ``offset`` set to
    ``cls``; the image gets the donor image's pixels there (when both images are given).
    Pixels shifted outside the map are dropped."""
    out = mask.copy()
    rows, cols = pixels[:, 0] + offset[0], pixels[:, 1] + offset[1]
    keep = (rows >= 0) & (rows < mask.shape[0]) & (cols >= 0) & (cols < mask.shape[1])
    out[rows[keep], cols[keep]] = cls
    out_img = image
    if image is not None and donor_image is not None:
        out_img = image.copy()
        out_img[rows[keep], cols[keep]] = donor_image[pixels[keep, 0], pixels[keep, 1]]
    return out, out_img


def translate(array: np.ndarray, dy: int, dx: int, fill: Optional[int]) -> np.ndarray:
    """Shift ``array`` ([H, W] or [H, W, C]) by (dy, dx) pixels (positive = down / right).

    Uncovered pixels get ``fill``, or repeat the nearest edge pixel when ``fill`` is None.
    """
    h, w = array.shape[:2]
    dy, dx = int(np.clip(dy, -h, h)), int(np.clip(dx, -w, w))
    pad = [(max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))] + [(0, 0)] * (array.ndim - 2)
    if fill is None:
        padded = np.pad(array, pad, mode="edge") if h > 0 and w > 0 else array
    else:
        padded = np.pad(array, pad, mode="constant", constant_values=fill)
    r0, c0 = max(-dy, 0), max(-dx, 0)
    return np.ascontiguousarray(padded[r0:r0 + h, c0:c0 + w])


def augment_mask(
    mask: np.ndarray,
    seed: int,
    cfg: AugmentConfig,
    donors: Sequence[np.ndarray] = (),
    *,
    image: Optional[np.ndarray] = None,
    donor_images: Optional[Sequence[Optional[np.ndarray]]] = None,
    ignore_index: Optional[int] = 255,
    donor_instances: Optional[Callable[[int], list[np.ndarray]]] = None,
) -> AugmentResult:
    """Augment one label map (and its image) with the operations of :class:`AugmentConfig`.

    Args:
        mask: uint8 [H, W] class ids.
        seed: the augmentation seed; same seed, same result.
        cfg: probabilities ``hflip``, ``vflip``, ``rot90``, ``translate``, ``copy_paste`` and the
            translation range ``max_shift`` (fraction of the size).
        donors: masks to copy defect instances from (may include ``mask`` itself); the donor is
            drawn uniformly. No donors, or a donor without instances, skips copy-paste.
        image: optional uint8 [H, W, 3] real image of ``mask``, transformed alongside.
        donor_images: optional images of ``donors`` (same order), pasted with the instance.
        ignore_index: unlabeled id, moved with the geometry, never part of an instance.
        donor_instances: optional cache ``j -> connected_instances(donors[j])``.

    Returns:
        :class:`AugmentResult` with new arrays (inputs are not modified).
    """
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    # 1. every random number, in a fixed order, whether or not its operation runs
    u = rng.random(5)
    donor_idx = int(rng.integers(max(len(donors), 1)))
    inst_u, pos_u = rng.random(), rng.random(2)
    rot_k = int(rng.integers(1, 4)) if h == w else 2
    shift = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2)

    out, img, ops = mask.copy(), None if image is None else image.copy(), []
    # 2. copy-paste a defect instance of a donor
    if u[0] < cfg.copy_paste and donors:
        instances = donor_instances(donor_idx) if donor_instances is not None \
            else connected_instances(donors[donor_idx], ignore_index)
        if instances:
            pix = instances[min(int(inst_u * len(instances)), len(instances) - 1)]
            cls = int(donors[donor_idx][pix[0, 0], pix[0, 1]])
            lo, hi = pix.min(0), pix.max(0)
            extent = hi - lo + 1
            # top-left of the pasted bounding box, anywhere it fits entirely
            top = int(pos_u[0] * max(h - extent[0] + 1, 1))
            left = int(pos_u[1] * max(w - extent[1] + 1, 1))
            offset = (top - int(lo[0]), left - int(lo[1]))
            d_img = donor_images[donor_idx] if donor_images is not None else None
            out, img = paste_instance(out, img, pix, cls, offset, d_img)
            ops.append(f"paste(donor={donor_idx},class={cls},at=({top},{left}))")
    # 3. geometry
    if u[1] < cfg.hflip:
        out, img = out[:, ::-1], None if img is None else img[:, ::-1]
        ops.append("hflip")
    if u[2] < cfg.vflip:
        out, img = out[::-1], None if img is None else img[::-1]
        ops.append("vflip")
    if u[3] < cfg.rot90:
        out = np.rot90(out, rot_k)
        img = None if img is None else np.rot90(img, rot_k, axes=(0, 1))
        ops.append(f"rot90x{rot_k}")
    if u[4] < cfg.translate:
        dy, dx = int(round(shift[0] * h)), int(round(shift[1] * w))
        if dy or dx:
            out = translate(out, dy, dx, fill=0)
            img = None if img is None else translate(img, dy, dx, fill=None)
            ops.append(f"translate({dy},{dx})")
    out = np.ascontiguousarray(out, dtype=np.uint8)
    img = None if img is None else np.ascontiguousarray(img, dtype=np.uint8)
    return AugmentResult(mask=out, image=img, ops=tuple(ops))
