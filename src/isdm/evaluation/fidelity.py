"""Label fidelity of synthetic samples (the SDM paper's semantic-alignment metric).

A segmenter trained on REAL images only (the ``RALLF000`` model) segments each generated image of
``samples/``; its prediction is compared with the mask the image was conditioned on
(``labels/``). High mIoU means the generator drew what the mask asked for. No pretrained weights
are needed, unlike FID; the number is only as good as the real-only segmenter, so read it next to
that model's real-test mIoU (its ceiling).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from isdm.errors import EvaluationError
from isdm.evaluation.metrics import summarize
from isdm.evaluation.segmenter import TensorSet, predict_counts

__all__ = ["label_fidelity"]


def label_fidelity(model: torch.nn.Module, synthetic: TensorSet, *, num_classes: int,
                   ignore_index: Optional[int], device: torch.device, batch_size: int,
                   encoder_weights: Optional[str] = None) -> tuple[dict[str, float], np.ndarray]:
    """mIoU (and every other :func:`metrics.summarize` key) of ``model`` on synthetic pairs.

    Args:
        synthetic: generated images ``[N, 3, H, W]`` in [-1, 1] with their conditioning masks.
    Returns:
        (metrics with ``n_images`` added, per-image counts ``[N, C, 3]``).
    """
    if len(synthetic) == 0:
        raise EvaluationError("label fidelity needs at least one synthetic sample (samples/ is empty)")
    counts = predict_counts(model, synthetic, num_classes, ignore_index, device, batch_size,
                            encoder_weights)
    metrics = summarize(counts)
    metrics["n_images"] = float(len(synthetic))
    return metrics, counts
