"""The downstream segmenter: an smp model, its seeded training loop and its test-set counts.

Recipe (all from :class:`isdm.config.EvaluateConfig`): Adam(lr), ``epochs`` epochs, batches of
``batch_size`` in an order drawn from a ``torch.Generator`` seeded with the cell's seed, loss
``dice`` (smp ``DiceLoss(mode="multiclass", ignore_index)``, the original's) or ``dice_ce``
(Dice + cross-entropy, both ignoring ``ignore_index``), optional augmentation (joint per-sample
horizontal/vertical flips plus light brightness/contrast jitter, drawn from the same generator).
Model selection: after every epoch the validation mIoU (:func:`metrics.summarize`, background
included) is computed on the REAL validation images; the weights of the best epoch (earliest on
ties) are kept and returned. The test set is never seen here.

Inputs are the data layer's ``[-1, 1]`` images. With ``encoder_weights`` (e.g. ``imagenet``) they
are mapped to the ImageNet mean/std the encoder was trained with (once, not twice as upstream).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from isdm.config import EvaluateConfig
from isdm.errors import EvaluationError
from isdm.evaluation.metrics import image_counts, summarize

__all__ = ["TensorSet", "build_segmenter", "train_segmenter", "predict_counts",
           "predict_labels", "augment_batch", "batch_indices", "SegmenterFit"]

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
        images: ``[B, 3, H, W]`` in [-1, 1]; labels: ``[B, H, W]`` ids (flipped like the image).
    Returns:
        New tensors; brightness shift in [-0.1, 0.1] and contrast factor in [0.8, 1.2], clamped
        back to [-1, 1]. Labels are never interpolated.
    """
    b = images.shape[0]
    images, labels = images.clone(), labels.clone()
    r = torch.rand(b, 4, generator=generator)
    h, v = r[:, 0] < 0.5, r[:, 1] < 0.5
    images[h], labels[h] = images[h].flip(-1), labels[h].flip(-1)
    images[v], labels[v] = images[v].flip(-2), labels[v].flip(-2)
    contrast = (0.8 + 0.4 * r[:, 2]).view(b, 1, 1, 1)
    shift = (0.2 * r[:, 3] - 0.1).view(b, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * contrast + mean + shift).clamp(-1.0, 1.0), labels


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of ``range(n)`` cut into batches; a trailing batch of ONE is merged into
    the previous one (BatchNorm, e.g. DeepLabV3+'s image pooling, cannot train on one sample)."""
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def _loss_fn(kind: str, ignore_index: Optional[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    from segmentation_models_pytorch.losses import DiceLoss

    dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
    ce_ignore = -100 if ignore_index is None else ignore_index
    if kind == "dice":
        return dice
    if kind == "dice_ce":
        return lambda logits, y: dice(logits, y) + F.cross_entropy(logits, y, ignore_index=ce_ignore)
    raise EvaluationError(f"evaluate.loss={kind!r}: use 'dice' or 'dice_ce'")


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


def predict_counts(model: torch.nn.Module, data: TensorSet, num_classes: int,
                   ignore_index: Optional[int], device: torch.device, batch_size: int,
                   encoder_weights: Optional[str] = None) -> np.ndarray:
    """Per-image ``(tp, fp, fn)`` counts ``[N, C, 3]`` of the model's predictions on ``data``."""
    pred = predict_labels(model, data.images, device, batch_size, encoder_weights)
    return image_counts(pred.numpy(), data.labels.numpy(), num_classes, ignore_index)


@dataclass
class SegmenterFit:
    """Best epoch (1-based), its validation mIoU, per-epoch history and the best weights."""

    best_epoch: int
    best_val_miou: float
    history: list[dict[str, float]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    train_seconds: float = 0.0


def train_segmenter(model: torch.nn.Module, train: TensorSet, val: TensorSet,
                    recipe: EvaluateConfig, *, num_classes: int, ignore_index: Optional[int],
                    seed: int, device: torch.device,
                    on_epoch: Optional[Callable[[dict[str, float]], None]] = None) -> SegmenterFit:
    """Train ``model`` on ``train``; keep the weights of the epoch with the best val mIoU.

    ``recipe`` gives ``epochs``, ``lr``, ``batch_size``, ``loss``, ``augment`` and
    ``encoder_weights`` (input normalisation). Deterministic for a given seed on CPU: data order
    and augmentation come from ``torch.Generator().manual_seed(seed)``, dropout from the (forked)
    global RNG seeded with it. ``on_epoch`` receives each epoch's
    ``{"epoch", "train_loss", "val_miou", "seconds"}`` (for MLflow / progress / pruning).
    """
    if len(train) < 2:
        raise EvaluationError(f"a training mix needs at least 2 images, got {len(train)}")
    if len(val) == 0:
        raise EvaluationError("the validation split is empty: raise evaluate.val_fraction")
    # dropout (e.g. FPN's decoder) draws from the global RNG: fork it and seed it for this cell
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        return _train(model, train, val, recipe, num_classes=num_classes,
                      ignore_index=ignore_index, seed=seed, device=device, on_epoch=on_epoch)


def _train(model: torch.nn.Module, train: TensorSet, val: TensorSet, recipe: EvaluateConfig, *,
           num_classes: int, ignore_index: Optional[int], seed: int, device: torch.device,
           on_epoch: Optional[Callable[[dict[str, float]], None]]) -> SegmenterFit:
    weights = recipe.encoder_weights
    model.to(device)
    gen = torch.Generator().manual_seed(int(seed))
    criterion = _loss_fn(recipe.loss, ignore_index)
    optim = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    result = SegmenterFit(best_epoch=0, best_val_miou=float("-inf"))
    t_start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        for idx in batch_indices(len(train), recipe.batch_size, gen):
            x, y = train.images[idx], train.labels[idx]
            if recipe.augment:
                x, y = augment_batch(x, y, gen)
            x, y = normalize(x.to(device), weights), y.to(device)
            optim.zero_grad(set_to_none=True)
            batch_loss = criterion(model(x), y)
            batch_loss.backward()
            optim.step()
            losses.append(float(batch_loss.detach()))
        counts = predict_counts(model, val, num_classes, ignore_index, device, recipe.batch_size,
                                weights)
        val_miou = summarize(counts)["miou"]
        row = {"epoch": float(epoch), "train_loss": float(np.mean(losses)), "val_miou": val_miou,
               "seconds": time.perf_counter() - t0}
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if np.isfinite(val_miou) and val_miou > result.best_val_miou or result.best_epoch == 0:
            result.best_epoch, result.best_val_miou = epoch, val_miou
            result.state_dict = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    model.load_state_dict(result.state_dict)
    result.train_seconds = time.perf_counter() - t_start
    return result
