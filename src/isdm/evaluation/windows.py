"""Sliding-window prediction: the logits of a whole image from a segmenter trained on crops.

The windows are :func:`isdm.data.crops.sliding_windows` of the segmenter's crop size: they
start every ``stride`` pixels and the last one of a row / column is shifted inside the image
(aligned with its bottom / right edge) instead of running over it, so no window is padded and
every pixel is in at least one window. An image smaller than a window is padded by the caller
first (:func:`isdm.data.transforms.fit_placement`). Where windows overlap, their logits are
averaged (every window weighs the same):

    logits[c, y, x] = mean over windows w containing (y, x) of f(window w)[c, y - top_w, x - left_w]

so an image of exactly one window gets ``f(image)``, bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch

from isdm.data.crops import sliding_windows

__all__ = ["window_stride", "sliding_logits"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def window_stride(window: tuple[int, int], overlap: float) -> tuple[int, int]:
    """Stride per side for windows that overlap by ``overlap`` of a window (``evaluate.
    window_overlap``): ``max(1, round(side * (1 - overlap)))``.

    >>> window_stride((64, 96), 0.25)
    (48, 72)
    """
    h, w = (max(1, round(side * (1.0 - overlap))) for side in window)
    return (h, w)


def sliding_logits(logits_fn: LogitsFn, image: torch.Tensor, window: tuple[int, int],
                   stride: tuple[int, int], batch_size: int) -> torch.Tensor:
    """Averaged window logits of one image.

    Args:
        logits_fn: ``[B, 3, h, w]`` -> ``[B, C, h, w]`` float logits (the segmenter, eval mode).
        image: ``[3, H, W]`` with ``H >= h`` and ``W >= w``; ``window`` = ``(h, w)``.
        batch_size: windows per ``logits_fn`` call.
    Returns:
        float32 ``[C, H, W]`` on the CPU (see the module docstring).
    """
    h, w = window
    origins = sliding_windows(image.shape[-2], image.shape[-1], window, stride)
    total = hits = None
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        out = logits_fn(torch.stack([image[:, t:t + h, l:l + w] for t, l in chunk])).float().cpu()
        if total is None:
            total = torch.zeros(out.shape[1], *image.shape[-2:])
            hits = torch.zeros(1, *image.shape[-2:])
        for (t, l), z in zip(chunk, out):
            total[:, t:t + h, l:l + w] += z
            hits[:, t:t + h, l:l + w] += 1
    return total / hits
