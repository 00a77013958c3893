"""The downstream segmenter: the smp model, its batches, augmentation, loss, optimiser and
predictions (the loop that trains it is :mod:`isdm.evaluation.loop`).

Recipe (all from :class:`isdm.config.EvaluateConfig`): Adam(lr) (fused where torch has the
kernel: CPU and CUDA) for exactly ``steps`` optimiser steps, whatever the size of the training
mix, on batches of ``batch_size`` images taken from a seeded stream (:class:`BatchStream`:
seeded permutations of the mix's images, one after the other, cut every ``batch_size``; one
permutation = one pass = one "epoch", a derived number only); loss ``dice`` (smp
``DiceLoss(mode="multiclass", ignore_index)``, the original's) or ``dice_ce`` (Dice +
cross-entropy, both ignoring ``ignore_index``); optional augmentation (joint per-sample
horizontal/vertical flips plus light brightness/contrast jitter, on the whole batch on its
device); the permutations and the augmentation draw from one CPU ``torch.Generator`` seeded
with the cell's seed. The forward pass runs under ``precision`` autocast
(:func:`isdm.utils.precision.autocast`); the loss, the optimiser and every prediction stay
float32. Validation every ``val_every`` steps (0 = :func:`validation_interval`: as often as
keeps validation under :data:`VAL_SHARE` of the training's forward passes).

Inputs are the data layer's ``[-1, 1]`` images. With ``encoder_weights`` (e.g. ``imagenet``) they
are mapped to the ImageNet mean/std the encoder was trained with (once, not twice as upstream).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from isdm.errors import EvaluationError
from isdm.evaluation.metrics import image_counts
from isdm.evaluation.wholes import WholeSet

__all__ = ["TensorSet", "build_segmenter", "predict_counts", "predict_labels", "augment_batch",
           "BatchStream", "batch_stream", "validation_steps", "validation_interval",
           "validation_share", "loss_function", "make_optimizer", "normalize", "VAL_SHARE",
           "precision_warning"]

# auto validation (val_every 0): validation forward passes at most this share of the training's
VAL_SHARE = 0.1
# a training image costs about three forward passes (forward + backward), a validated one one
TRAIN_PASSES = 3

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TensorSet:
    """Images ``[N, 3, H, W]`` float32 in [-1, 1], labels ``[N, H, W]`` int64, and their keys."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, idx: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at the indices ``idx`` (the same at every ``step``)."""
        return self.images[idx], self.labels[idx]

    def to(self, device: torch.device) -> "TensorSet":
        """The same set with its tensors on ``device`` (a CUDA cell keeps its mix there)."""
        return TensorSet(self.images.to(device), self.labels.to(device), self.keys)

    def subset(self, keys: list[str] | tuple[str, ...]) -> "TensorSet":
        pos = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise KeyError(f"keys not in this set: {missing[:5]}")
        idx = torch.tensor([pos[k] for k in keys], dtype=torch.long)
        return TensorSet(self.images[idx], self.labels[idx], list(keys))

    @staticmethod
    def concat(sets: list["TensorSet"]) -> "TensorSet":
        sets = [s for s in sets if len(s)]
        return TensorSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
                         [k for s in sets for k in s.keys])


def build_segmenter(arch: str, encoder: str, encoder_weights: Optional[str], num_classes: int,
                    seed: int) -> torch.nn.Module:
    """``smp.create_model(arch, encoder, encoder_weights, classes=num_classes)`` with seeded init.

    The global torch RNG is forked, so building a model does not disturb the caller's stream.

    Raises:
        EvaluationError: unknown architecture or encoder, or pretrained weights that cannot be
            fetched (offline: ``HF_HUB_OFFLINE=1`` makes that immediate instead of retrying).
    """
    import segmentation_models_pytorch as smp

    valid = smp.MODEL_ARCHITECTURES_MAPPING
    if arch.lower() not in valid:
        names = [m.__name__ for m in valid.values()]
        raise EvaluationError(f"evaluate.architectures: unknown smp architecture {arch!r}; "
                             f"valid: {', '.join(names)}")
    if encoder not in smp.encoders.get_encoder_names() and not encoder.startswith("tu-"):
        raise EvaluationError(f"evaluate.encoder: unknown encoder {encoder!r} "
                             "(e.g. resnet18, resnet34, mobilenet_v2, efficientnet-b0)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights,
                                    in_channels=3, classes=num_classes)
        except (OSError, ConnectionError, RuntimeError) as e:
            if not encoder_weights:
                raise
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            raise EvaluationError(
                f"cannot load encoder_weights={encoder_weights!r} for {encoder} "
                f"({'offline: HF_HUB_OFFLINE=1 and ' if offline else ''}not in the local cache: "
                f"{type(e).__name__}). Set evaluate.encoder_weights=null to train from scratch, "
                "or download the weights once with network access.") from None


def normalize(images: torch.Tensor, encoder_weights: Optional[str]) -> torch.Tensor:
    """[-1, 1] images -> model input: unchanged, or ImageNet-normalised for pretrained encoders."""
    if not encoder_weights:
        return images
    mean = images.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return ((images + 1.0) / 2.0 - mean) / std


def augment_batch(images: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint random flips and light photometric jitter, per sample, from ``generator``.

    Args:
        images: ``[B, 3, H, W]`` in [-1, 1]; labels: ``[B, H, W]`` ids (flipped like the image),
            on any device; ``generator`` is a CPU generator (the same draws on every device).
    Returns:
        New tensors; brightness shift in [-0.1, 0.1] and contrast factor in [0.8, 1.2], clamped
        back to [-1, 1]. Labels are never interpolated. Whole-batch ops (no per-sample Python,
        no host synchronisation).
    """
    b = images.shape[0]
    r = torch.rand(b, 4, generator=generator).to(images.device, non_blocking=True)
    for flip, dim in ((r[:, 0] < 0.5, -1), (r[:, 1] < 0.5, -2)):
        images = torch.where(flip.view(b, 1, 1, 1), images.flip(dim), images)
        labels = torch.where(flip.view(b, 1, 1), labels.flip(dim), labels)
    contrast = (0.8 + 0.4 * r[:, 2]).view(b, 1, 1, 1)
    shift = (0.2 * r[:, 3] - 0.1).view(b, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean + shift).clamp(-1.0, 1.0), labels


class BatchStream:
    """Endless batches of exactly ``batch_size`` indices into ``range(n)``, checkpointable.

    The stream is ``randperm(n) ++ randperm(n) ++ ...`` (each permutation drawn from
    ``generator`` when the stream reaches it) cut every ``batch_size`` indices, so after ``k``
    steps every mix has been shown ``k * batch_size`` images: ``k * batch_size / n`` passes
    ("epochs"). A batch that spans two passes may hold an image twice. Its state is the
    indices drawn but not yet served (``pending``); the generator's state is its owner's.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.pending = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while len(self.pending) < self.batch_size:
            self.pending = torch.cat([self.pending, torch.randperm(self.n, generator=self.generator)])
        batch, self.pending = self.pending[:self.batch_size], self.pending[self.batch_size:]
        return batch


def batch_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """:class:`BatchStream` as an iterator. Every batch has ``batch_size`` >= 2 images
    (BatchNorm, e.g. DeepLabV3+'s image pooling, needs 2)."""
    stream = BatchStream(n, batch_size, generator)
    while True:
        yield stream.next()


def validation_steps(steps: int, val_every: int) -> list[int]:
    """The steps after which the validation split is scored: every ``val_every`` and the last.

    >>> validation_steps(10, 4)
    [4, 8, 10]
    """
    return sorted(set(range(val_every, steps + 1, val_every)) | {steps})


def validation_interval(val_every: int, batch_size: int, val_windows: int) -> int:
    """``val_every``, or for 0 the smallest interval whose validations cost at most
    :data:`VAL_SHARE` of the training's forward passes:

        val_windows / (val_every * TRAIN_PASSES * batch_size) <= VAL_SHARE

    (``val_windows``: forward passes of one validation, the validation images or their sliding
    windows). A pure function of the data and the recipe, so the choice is the same on every
    machine.

    >>> validation_interval(0, 8, 8), validation_interval(0, 4, 240), validation_interval(20, 4, 240)
    (4, 200, 20)
    """
    if val_every > 0:
        return val_every
    return max(1, math.ceil(val_windows / (VAL_SHARE * TRAIN_PASSES * batch_size)))


def validation_share(val_every: int, batch_size: int, val_windows: int) -> float:
    """Forward passes of the validations per forward pass of the training (as above)."""
    return val_windows / (val_every * TRAIN_PASSES * batch_size)


def loss_function(kind: str, ignore_index: Optional[int],
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``dice`` or ``dice_ce`` (see the module docstring), ignoring ``ignore_index``."""
    from segmentation_models_pytorch.losses import DiceLoss

    dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
    ce_ignore = -100 if ignore_index is None else ignore_index
    if kind == "dice":
        return dice
    if kind == "dice_ce":
        return lambda logits, y: dice(logits, y) + F.cross_entropy(logits, y, ignore_index=ce_ignore)
    raise EvaluationError(f"evaluate.loss={kind!r}: use 'dice' or 'dice_ce'")


def precision_warning(precision: str, device: torch.device) -> Optional[str]:
    """A warning for bf16 autocast where bf16 is emulated (slower than fp32), else None."""
    from isdm.utils.cpu import native_bf16

    if precision != "bf16" or native_bf16(device):
        return None
    return (f"evaluate.precision=bf16 on {device.type}: bf16 is not native here (emulated, "
            "slower than fp32, and not checked to track fp32); set evaluate.precision=fp32")


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam(lr); the fused kernel on CPU and CUDA (one kernel for every parameter instead of
    a dozen ops each: ~8x faster on a CPU, the same update up to the last bits)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


@torch.no_grad()
def predict_labels(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                   batch_size: int, encoder_weights: Optional[str] = None) -> torch.Tensor:
    """Arg-max class ids ``[N, H, W]`` (int64, CPU) of ``images`` ``[N, 3, H, W]`` in [-1, 1]."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start:start + batch_size].to(device), encoder_weights)
        out.append(model(x).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, *images.shape[2:], dtype=torch.long)


@torch.no_grad()
def predict_counts(model: torch.nn.Module, data: TensorSet | WholeSet, num_classes: int,
                   ignore_index: Optional[int], device: torch.device, batch_size: int,
                   encoder_weights: Optional[str] = None) -> np.ndarray:
    """Per-image ``(tp, fp, fn)`` counts ``[N, C, 3]`` of the model's predictions on ``data``:
    images of the input size, or whole images by sliding windows (:meth:`WholeSet.counts`)."""
    if isinstance(data, WholeSet):
        model.eval()
        return data.counts(lambda x: model(normalize(x.to(device), encoder_weights)),
                           num_classes, ignore_index, batch_size)
    pred = predict_labels(model, data.images, device, batch_size, encoder_weights)
    return image_counts(pred.numpy(), data.labels.numpy(), num_classes, ignore_index)
