"""The downstream segmenter: an smp model, its seeded training loop and its test-set counts.

Recipe (all from :class:`isdm.config.EvaluateConfig`): Adam(lr) for exactly ``steps`` optimiser
steps, whatever the size of the training mix, on batches of ``batch_size`` images taken from a
seeded stream (:func:`batch_stream`: seeded permutations of the mix's images, one after the
other, cut every ``batch_size``; one permutation = one pass = one "epoch", a derived number
only); loss ``dice`` (smp ``DiceLoss(mode="multiclass", ignore_index)``, the original's) or
``dice_ce`` (Dice + cross-entropy, both ignoring ``ignore_index``); optional augmentation (joint
per-sample horizontal/vertical flips plus light brightness/contrast jitter); the permutations
and the augmentation draw from one ``torch.Generator`` seeded with the cell's seed. The forward
pass runs under ``precision`` autocast (:func:`isdm.utils.precision.autocast`); the loss, the
optimiser and every prediction stay float32.
Model selection: every ``val_every`` steps and after the last step the validation mIoU
(:func:`metrics.summarize`, background included) is computed on the REAL validation images; the
weights of the best validation (earliest on ties) are kept and returned. The test set is never
seen here.

With ``data.crop`` the batches are random crops of whole real images (plus synthetic images)
and validation predicts whole images by sliding windows (:mod:`isdm.evaluation.wholes`).

Inputs are the data layer's ``[-1, 1]`` images. With ``encoder_weights`` (e.g. ``imagenet``) they
are mapped to the ImageNet mean/std the encoder was trained with (once, not twice as upstream).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from isdm.config import EvaluateConfig
from isdm.errors import EvaluationError
from isdm.evaluation.metrics import image_counts, summarize
from isdm.evaluation.wholes import CropMix, WholeSet

__all__ = ["TensorSet", "build_segmenter", "train_segmenter", "predict_counts",
           "predict_labels", "augment_batch", "batch_stream", "validation_steps",
           "SegmenterFit"]

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


def batch_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of exactly ``batch_size`` indices into ``range(n)``.

    The stream is ``randperm(n) ++ randperm(n) ++ ...`` (each permutation drawn from
    ``generator`` when the stream reaches it) cut every ``batch_size`` indices, so after ``k``
    steps every mix has been shown ``k * batch_size`` images: ``k * batch_size / n`` passes
    ("epochs"). A batch that spans two passes may hold an image twice. Every batch has
    ``batch_size`` >= 2 images (BatchNorm, e.g. DeepLabV3+'s image pooling, needs 2).
    """
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def validation_steps(steps: int, val_every: int) -> list[int]:
    """The steps after which the validation split is scored: every ``val_every`` and the last.

    >>> validation_steps(10, 4)
    [4, 8, 10]
    """
    return sorted(set(range(val_every, steps + 1, val_every)) | {steps})


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


@dataclass
class SegmenterFit:
    """The selected validation (its step and mIoU), the run's budget and history, the weights.

    ``history`` holds one row per validation: ``{"step", "epoch", "train_loss", "val_miou",
    "val_miou_nobg", "seconds"}`` where ``epoch`` = images shown so far / training images
    (derived), ``train_loss`` is the mean batch loss since the previous validation and
    ``seconds`` the time since then (training and this validation).
    """

    best_step: int
    best_val_miou: float
    steps: int = 0
    images_seen: int = 0
    epochs: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    train_seconds: float = 0.0


def train_segmenter(model: torch.nn.Module, train: TensorSet | CropMix,
                    val: TensorSet | WholeSet, recipe: EvaluateConfig, *, num_classes: int,
                    ignore_index: Optional[int], seed: int, device: torch.device,
                    on_validation: Optional[Callable[[dict[str, float]], None]] = None,
                    ) -> SegmenterFit:
    """Train ``model`` on ``train`` for ``recipe.steps`` steps; keep the weights of the
    validation with the best mIoU. ``train`` gives each step's batch (:meth:`TensorSet.batch`,
    or random crops of whole images, :class:`isdm.evaluation.wholes.CropMix`); ``val`` is
    predicted as :func:`predict_counts` does.

    ``recipe`` gives ``steps``, ``val_every``, ``lr``, ``batch_size``, ``loss``, ``augment``,
    ``precision`` and ``encoder_weights`` (input normalisation). Deterministic for a given seed
    on CPU: data order and augmentation come from ``torch.Generator().manual_seed(seed)``,
    dropout from the (forked) global RNG seeded with it. ``on_validation`` receives each
    history row (for MLflow / progress / pruning).
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
                      ignore_index=ignore_index, seed=seed, device=device,
                      on_validation=on_validation)


def _train(model: torch.nn.Module, train: TensorSet | CropMix, val: TensorSet | WholeSet,
           recipe: EvaluateConfig, *, num_classes: int, ignore_index: Optional[int], seed: int,
           device: torch.device, on_validation: Optional[Callable[[dict[str, float]], None]],
           ) -> SegmenterFit:
    from isdm.utils.precision import autocast

    weights, bs = recipe.encoder_weights, recipe.batch_size
    model.to(device)
    gen = torch.Generator().manual_seed(int(seed))
    batches = batch_stream(len(train), bs, gen)
    criterion = _loss_fn(recipe.loss, ignore_index)
    optim = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    result = SegmenterFit(best_step=0, best_val_miou=float("-inf"), steps=recipe.steps,
                          images_seen=recipe.steps * bs, epochs=recipe.steps * bs / len(train))
    checks = set(validation_steps(recipe.steps, recipe.val_every))
    t_start = t0 = time.perf_counter()
    losses: list[float] = []
    model.train()
    for step in range(1, recipe.steps + 1):
        idx = next(batches)
        x, y = train.batch(idx, step)
        if recipe.augment:
            x, y = augment_batch(x, y, gen)
        x, y = normalize(x.to(device), weights), y.to(device)
        optim.zero_grad(set_to_none=True)
        with autocast(recipe.precision, device):
            logits = model(x)
        batch_loss = criterion(logits.float(), y)
        batch_loss.backward()
        optim.step()
        losses.append(float(batch_loss.detach()))
        if step not in checks:
            continue
        scores = summarize(predict_counts(model, val, num_classes, ignore_index, device, bs, weights))
        model.train()
        row = {"step": float(step), "epoch": step * bs / len(train),
               "train_loss": float(np.mean(losses)), "val_miou": scores["miou"],
               "val_miou_nobg": scores["miou_nobg"], "seconds": time.perf_counter() - t0}
        losses, t0 = [], time.perf_counter()
        result.history.append(row)
        if on_validation is not None:
            on_validation(row)
        if np.isfinite(row["val_miou"]) and row["val_miou"] > result.best_val_miou \
                or result.best_step == 0:
            result.best_step, result.best_val_miou = step, row["val_miou"]
            result.state_dict = copy.deepcopy({k: v.detach().cpu()
                                               for k, v in model.state_dict().items()})
    model.load_state_dict(result.state_dict)
    result.train_seconds = time.perf_counter() - t_start
    return result
