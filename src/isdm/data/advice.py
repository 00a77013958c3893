"""What ``isdm data check`` advises about the geometry: how big each defect class is after the
configured ``image_size`` / ``resize`` / ``crop``, how far the images' aspect ratios spread, and
a suggested ``data`` setting.

Rules (``MIN_PIXELS`` = 10, about a 3x3 blob, the least a network can learn a shape from):

- A defect class (1..C-1) that the geometry shrinks below ``MIN_PIXELS`` pixels per image
  that contains it is flagged ("raise image_size or use crops"), and so is a class that
  vanishes from images (nearest-neighbour shrinking drops thin defects); a class smaller than
  that at native resolution is only noted.
- ``stretch`` distorts when the median image aspect (W/H) differs from ``image_size``'s by more
  than ``ASPECT_TOLERANCE``; ``crop`` cuts the ends of images wider or taller than the output.
- The suggestion keeps the configured short side, gives the long side the median aspect
  (a multiple of the UNet's down-sampling step) and ``pad`` when the aspects spread beyond the
  tolerance (no pixel is cut). When a class stays below ``MIN_PIXELS`` even in that rectangle
  (pixels grow with the output area) or vanishes, it suggests crops of the configured
  ``image_size`` at the smallest of ``SCALES`` that gives every such class ``MIN_PIXELS``
  (native pixels scale with ``scale**2``).

All numbers come from the train split (what the SDM learns from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from isdm.data.validate import SplitStats

__all__ = ["MIN_PIXELS", "ASPECT_TOLERANCE", "SCALES", "Advice", "advise", "step_of"]

MIN_PIXELS = 10.0
ASPECT_TOLERANCE = 1.1
SCALES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Advice:
    """``lines`` to print; ``suggested``: the advised ``data`` keys (None: keep the config)."""

    lines: list[str]
    suggested: Optional[dict[str, Any]]


def _fmt(px: float) -> str:
    return f"{px:.1f}" if px < 100 else f"{px:.0f}"


def _size_value(size: tuple[int, int]) -> Any:
    return size[0] if size[0] == size[1] else list(size)


def _class_lines(stats: SplitStats, names: list[str], data: Any) -> tuple[list[str], list[int]]:
    """One line per defect class present; the ids of the classes too small after geometry.

    Pixels are per image that contains the class. With crops they are counted on the scaled
    image (a defect-centred crop holds a small defect whole) and the expected share of a crop
    at a uniform position is added."""
    lines, small = [], []
    size = _size_value(data.size)
    crop_share = data.size[0] * data.size[1] * stats.num_pairs / max(stats.placed_area, 1)
    for c in range(1, stats.num_classes):
        images = stats.class_images[c]
        if not images:
            continue
        native = stats.class_pixels[c] / images
        placed = stats.placed_pixels[c] / images
        gone = images - stats.placed_images[c]
        where = (f"at data.scale {data.scale:g}" if data.crop
                 else f"at image_size {size} (resize {data.resize})")
        line = (f"class {c} ({names[c]}): {_fmt(placed)} px per image {where} (native "
                f"{_fmt(native)} px; in {images} of {stats.num_pairs} images)")
        if data.crop:
            line += f", {_fmt(placed * min(crop_share, 1.0))} px in a uniformly placed crop"
        if gone:
            line += f"; vanishes from {gone} of them"
        if native < MIN_PIXELS:
            line += "; small even at native resolution"
        if placed < min(MIN_PIXELS, native) or gone:  # the geometry shrank it too far
            small.append(c)
            line += (": use a larger data.scale" if data.crop
                     else ": raise image_size or use crops (data.crop: true)")
        lines.append(line)
    return lines, small


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _rectangle(side: int, aspect: float, step: int) -> tuple[int, int]:
    """(H, W) with short side ``side`` and W/H close to ``aspect``, long side a multiple of
    ``step``."""
    long = max(step, round(side * max(aspect, 1 / aspect) / step) * step)
    return (side, long) if aspect >= 1 else (long, side)


def _crop_scale(stats: SplitStats, small: list[int]) -> float:
    """The smallest of :data:`SCALES` giving each class in ``small`` ``MIN_PIXELS`` per image
    (native pixels scale with scale**2); 1.0 when none does."""
    need = max(MIN_PIXELS / (stats.class_pixels[c] / stats.class_images[c]) for c in small)
    return next((s for s in SCALES if s * s >= need), 1.0)


def advise(stats: SplitStats, names: list[str], data: Any, step: int) -> Advice:
    """Advice for the train split ``stats`` (scanned with ``placed=True``) under the data
    config ``data``; ``step`` the UNet's down-sampling step (``2**(levels-1)``, at least 8)."""
    if not stats.sizes:
        return Advice([], None)
    lines, small = _class_lines(stats, names, data)
    aspects = [w / h for w, h in stats.sizes]
    lo, mid, hi = min(aspects), _median(aspects), max(aspects)
    h, w = data.size
    lines.append(f"aspect ratio W/H: {lo:.2f} .. {hi:.2f} (median {mid:.2f}); "
                 f"image_size {_size_value((h, w))} is {w / h:.2f}")
    distortion = max(mid * h / w, w / (mid * h))
    if not data.crop and data.resize == "stretch" and distortion > ASPECT_TOLERANCE:
        lines.append(f"resize stretch distorts the median image by x{distortion:.2f}: use a "
                     "rectangular image_size or resize: pad")
    if not data.crop and data.resize == "crop" and max(hi * h / w, w / (lo * h)) > ASPECT_TOLERANCE:
        lines.append("resize crop cuts the ends of the images off (defects there are lost): "
                     "use resize: pad")
    rect = (h, w) if data.crop else _rectangle(min(h, w), mid, step)
    # pixels grow with the output area; a class that vanished stays a problem
    gain = rect[0] * rect[1] / (h * w)
    small = [c for c in small if stats.placed_pixels[c] / stats.class_images[c] * gain < MIN_PIXELS
             or stats.placed_images[c] < stats.class_images[c]]
    if small:
        suggested: dict[str, Any] = {"image_size": _size_value((h, w)), "crop": True,
                                     "scale": _crop_scale(stats, small),
                                     "crop_defect_prob": data.crop_defect_prob}
    elif data.crop:
        return Advice(lines, None)
    else:
        suggested = {"image_size": _size_value(rect),
                     "resize": "pad" if hi / lo > ASPECT_TOLERANCE else "stretch", "crop": False}
    current = {k: getattr(data, k) for k in suggested}
    current["image_size"] = _size_value((h, w))
    if current == suggested:
        return Advice(lines, None)
    text = ", ".join(f"{k}: {_show(v)}" for k, v in suggested.items())
    lines.append(f"suggested: data {{{text}}}")
    return Advice(lines, suggested)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def step_of(levels: int) -> int:
    """The UNet's down-sampling step for ``levels`` channel multipliers, at least 8 (the
    ``data.image_size`` rule)."""
    return max(8, 2 ** max(levels - 1, 0))
