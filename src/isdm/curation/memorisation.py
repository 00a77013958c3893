"""Memorisation check: how close is each synthetic image to its nearest REAL train image?

Feature of an image ``[3, H, W]`` in [-1, 1]: its 16 x 16 average-pooled RGB (768 numbers), minus
its own mean, divided by its L2 norm (a flat image gives the zero vector). Two images' distance
is the Euclidean distance of their features, in ``[0, 2]``: 0 for the same picture up to
brightness and contrast. Cheap, and blind to small shifts and textures, so it finds copies of a
training image's layout and tones, not every kind of memorisation.

Calibration: each real train image's distance to its nearest OTHER real train image (leave one
out) shows how close two different real images come. A synthetic image is a near-copy when its
nearest real distance is below the ``q`` quantile of those real-vs-real distances
(``curate.copy_quantile``): closer to a training image than all but a fraction ``q`` of real
images are to their own nearest neighbour.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["FEATURE_SIZE", "features", "nearest", "Memorisation", "check_memorisation"]

FEATURE_SIZE = 16
_CHUNK = 64  # query rows per distance block: memory ~ _CHUNK x N x 768 float64


def features(images: torch.Tensor) -> np.ndarray:
    """float64 ``[N, 3 * 16 * 16]`` features of ``[N, 3, H, W]`` images (module docstring)."""
    if images.shape[0] == 0:
        return np.zeros((0, 3 * FEATURE_SIZE ** 2))
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.double(), FEATURE_SIZE)
    f = pooled.reshape(images.shape[0], -1).numpy()
    f = f - f.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return np.where(norm > 1e-12, f / np.maximum(norm, 1e-12), 0.0)


def nearest(query: np.ndarray, ref: np.ndarray,
            exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(index int64 ``[M]``, distance float64 ``[M]``) of each query row's nearest ``ref`` row;
    ``exclude_self`` (``query is ref``) skips the row itself. Ties go to the lower index."""
    idx, dist = np.zeros(len(query), dtype=np.int64), np.zeros(len(query))
    for start in range(0, len(query), _CHUNK):
        block = query[start:start + _CHUNK]
        d = np.sqrt(((block[:, None, :] - ref[None, :, :]) ** 2).sum(axis=-1))
        if exclude_self:
            d[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        idx[start:start + len(block)] = d.argmin(axis=1)
        dist[start:start + len(block)] = d.min(axis=1)
    return idx, dist


class Memorisation(NamedTuple):
    """Nearest real image (index into the real set) and distance per synthetic image, the
    real-vs-real nearest distances and the near-copy threshold calibrated on them."""

    nearest: np.ndarray
    distance: np.ndarray
    real_distance: np.ndarray
    threshold: float

    @property
    def near_copy(self) -> np.ndarray:
        return self.distance < self.threshold


def check_memorisation(synthetic: torch.Tensor, real: torch.Tensor, quantile: float) -> Memorisation:
    """Nearest real train image of every synthetic image and the near-copy threshold.

    Args:
        synthetic, real: ``[M, 3, H, W]`` and ``[N, 3, H, W]`` images in [-1, 1] (N >= 2).
        quantile: ``q`` of the calibration (module docstring).
    """
    fs, fr = features(synthetic), features(real)
    _, real_dist = nearest(fr, fr, exclude_self=True)
    threshold = float(np.quantile(real_dist, quantile)) if len(real_dist) else 0.0
    idx, dist = nearest(fs, fr)
    return Memorisation(idx, dist, real_dist, threshold)
