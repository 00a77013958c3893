"""Whole real images for a segmenter trained on crops (``data.crop: true``).

With ``data.crop`` the SDM learns ``data.image_size`` crops of the images scaled by
``data.scale``, so its samples are crops too. The downstream segmenter then sees the same
geometry: it trains on random crops of ``evaluate.image_size`` (= ``data.image_size``) of the
real train images at ``data.scale`` beside the synthetic images used whole, and predicts whole
validation and test images by sliding windows. Metrics are never computed on crops.

- :class:`WholeSet`: every image of a split decoded once, scaled by ``data.scale`` and padded
  up to at least one window where it is smaller (:func:`isdm.data.transforms.fit_placement`:
  mid-grey image, exactly 0 in the tensors; ``ignore_index`` label), kept as uint8 with the
  defect pixels of its label, plus its mask at NATIVE size for the metrics.
- :class:`CropMix`: a training mix, real images first, then synthetic ones. Each time the batch
  stream draws a real image, a fresh crop of it is cut, centred on a defect pixel with
  probability ``data.crop_defect_prob`` (:func:`isdm.data.crops.crop_origin`), from the
  generator ``seeds.generator(Stream.EVAL_CROP, seed, step, slot)``: a pure function of the
  cell's seed, the optimiser step and the position in the batch.
- :meth:`WholeSet.counts`: per image, the window logits averaged over the scaled canvas
  (:func:`isdm.evaluation.windows.sliding_logits`), the padding cut off, the logits resized
  (bilinear) to the native size when ``data.scale`` != 1, the arg-max compared with the native
  mask. So validation and test mIoU are on the real images at their own resolution, comparable
  across ``data.scale`` settings (at scale 1 the resize is skipped: no interpolation at all).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from isdm.config import DataConfig
from isdm.data import crops, transforms
from isdm.data.dataset import Arrays, SegmentationFolder
from isdm.data.transforms import Placement
from isdm.errors import EvaluationError
from isdm.evaluation.metrics import image_counts
from isdm.evaluation.windows import LogitsFn, sliding_logits, window_stride
from isdm.seeds import Stream, generator

__all__ = ["WholeSet", "CropMix", "load_whole"]


@dataclass
class WholeSet:
    """Whole images of one split (see the module docstring). Per image: ``arrays`` (uint8 image
    ``[H', W', 3]`` and ids ``[H', W']`` at ``data.scale``, padded to at least ``window``; valid
    map or None; defect pixels), ``placements`` (native -> scaled canvas) and ``targets``
    (uint8 native ids ``[H, W]``). ``window`` / ``stride``: ``(h, w)`` of the crops and of the
    sliding windows; ``defect_prob``: ``data.crop_defect_prob``."""

    keys: list[str]
    arrays: list[Arrays]
    placements: list[Placement]
    targets: list[np.ndarray]
    window: tuple[int, int]
    stride: tuple[int, int]
    defect_prob: float

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keys: Sequence[str]) -> "WholeSet":
        pos = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise KeyError(f"keys not in this set: {missing[:5]}")
        idx = [pos[k] for k in keys]
        return dataclasses.replace(self, keys=list(keys),
                                   arrays=[self.arrays[i] for i in idx],
                                   placements=[self.placements[i] for i in idx],
                                   targets=[self.targets[i] for i in idx])

    def num_windows(self) -> int:
        """Sliding windows of one pass over the set (the forward passes of a validation)."""
        return sum(len(crops.sliding_windows(a.image.shape[0], a.image.shape[1], self.window,
                                             self.stride)) for a in self.arrays)

    def canvas(self, index: int) -> torch.Tensor:
        """Image ``index`` at ``data.scale`` as float32 ``[3, H', W']`` in [-1, 1], padding 0."""
        a = self.arrays[index]
        return _tensor(a.image, a.valid)

    def crop(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random ``window`` crop of image ``index`` (:func:`isdm.data.crops.crop_origin`):
        float32 ``[3, h, w]`` (padding 0) and int64 ids ``[h, w]`` (padding ``ignore_index``)."""
        a = self.arrays[index]
        h, w = self.window
        top, left = crops.crop_origin(a.ids.shape, self.window, rng, self.defect_prob, a.pixels)
        win = (slice(top, top + h), slice(left, left + w))
        valid = None if a.valid is None else a.valid[win]
        return _tensor(a.image[win], valid), torch.from_numpy(a.ids[win].astype(np.int64))

    def counts(self, logits_fn: LogitsFn, num_classes: int, ignore_index: Optional[int],
               batch_size: int) -> np.ndarray:
        """Per-image ``(tp, fp, fn)`` counts ``[N, C, 3]`` of the sliding-window prediction at
        native size (see the module docstring)."""
        out = [np.zeros((0, num_classes, 3), dtype=np.int64)]
        for i, target in enumerate(self.targets):
            z = sliding_logits(logits_fn, self.canvas(i), self.window, self.stride, batch_size)
            (left, top), (cw, ch) = self.placements[i].offset, self.placements[i].content
            z = z[:, top:top + ch, left:left + cw]
            if tuple(z.shape[-2:]) != target.shape:
                z = F.interpolate(z[None], size=target.shape, mode="bilinear",
                                  align_corners=False)[0]
            out.append(image_counts(z.argmax(dim=0).numpy()[None], target[None], num_classes,
                                    ignore_index))
        return np.concatenate(out)


def _tensor(image: np.ndarray, valid: Optional[np.ndarray]) -> torch.Tensor:
    x = transforms.to_tensor_image(image)
    if valid is None:
        return x
    return x.masked_fill(~torch.from_numpy(np.ascontiguousarray(valid))[None], 0.0)


class CropMix:
    """A training mix of whole real images (a fresh crop per draw) and synthetic images (used
    whole): index ``i < len(real)`` is real image ``i``, the rest synthetic ones, in order.

    Args:
        real: the mix's real images.
        synthetic: the mix's synthetic images, a :class:`isdm.evaluation.segmenter.TensorSet`
            of ``real.window`` images (may be empty).
        seed: the cell's seed (the crops' stream).
    Raises:
        EvaluationError: synthetic images of another size than the crops.
    """

    def __init__(self, real: WholeSet, synthetic: Any, seed: int) -> None:
        if len(synthetic) and tuple(synthetic.images.shape[-2:]) != real.window:
            raise EvaluationError(f"synthetic images of {tuple(synthetic.images.shape[-2:])} "
                                  f"beside real crops of {real.window}: load them at "
                                  "evaluate.image_size")
        self.real, self.synthetic, self.seed = real, synthetic, int(seed)

    def __len__(self) -> int:
        return len(self.real) + len(self.synthetic)

    def batch(self, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, 3, h, w]`` and labels ``[B, h, w]`` of the mix indices ``idx`` at
        optimiser ``step`` (crops from ``Stream.EVAL_CROP`` keyed by ``(step, slot)``)."""
        n = len(self.real)
        xs, ys = [], []
        for slot, i in enumerate(idx.tolist()):
            if i < n:
                x, y = self.real.crop(i, generator(Stream.EVAL_CROP, self.seed, step, slot))
            else:
                x, y = self.synthetic.images[i - n], self.synthetic.labels[i - n]
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)


def load_whole(root: str | Path, split: str, data_cfg: DataConfig, window: tuple[int, int],
               overlap: float) -> WholeSet:
    """Every pair of ``<root>/<split>`` as a :class:`WholeSet` with crops / windows of
    ``window`` ``(h, w)`` overlapping by ``overlap`` (``evaluate.window_overlap``)."""
    cfg = dataclasses.replace(data_cfg, image_size=tuple(window), crop=True, hflip=False)
    ds = SegmentationFolder(root, split, cfg, augment=False, cache=False)
    arrays, placements, targets = [], [], []
    for i, pair in enumerate(ds.pairs):
        native = transforms.load_mask(pair.mask, cfg.dataset_mode, cfg.num_classes,
                                      cfg.ignore_index, None)
        arrays.append(ds.load_arrays(i))
        placements.append(transforms.fit_placement(native.shape[1], native.shape[0], cfg))
        targets.append(native)
    return WholeSet(ds.keys, arrays, placements, targets, tuple(window),
                    window_stride(tuple(window), overlap), cfg.crop_defect_prob)
