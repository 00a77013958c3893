"""The scorer: a segmenter trained on the REAL train split only, cached, and its per-pixel scores.

The scorer is the downstream cell (:mod:`isdm.evaluation.cell`) of ``curate.architecture``, the
real-only mix ``RALLF000`` and seed ``curate.seed``, trained with the ``evaluate`` recipe: the
same model ``isdm evaluate`` trains for that cell, so its label fidelity is the one evaluate
reports. It is cached as ``<cache_dir>/<key>.pt`` where ``key`` digests everything that decides
its weights: the real train files' bytes, the data keys that decode them, the evaluate recipe
(without the keys that only choose cells: architectures, mixes, seeds, bootstrap, device), the
scorer's architecture and seed, and the device type (CPU and CUDA weights differ in their last
bits). With ``data.crop`` it is evaluate's crop-trained cell (random crops of the real images at
``data.scale``, whole validation images by sliding windows) and the key adds the crop keys; the
synthetic images it scores are crops of that size, predicted whole.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from isdm.config import Config, to_dict
from isdm.evaluation.segmenter import TensorSet

__all__ = ["Scorer", "dataset_digest", "scorer_identity", "load_scorer", "pixel_scores"]

_NOT_RECIPE = ("architectures", "mixes", "seeds", "bootstrap", "device")


@dataclass
class Scorer:
    """A trained scorer, what it was trained on, and the real train images it saw.

    ``real`` (the real train split at ``evaluate.image_size``, whole images resized even with
    ``data.crop``, when the scorer trains on crops) serves the memorisation check."""

    model: torch.nn.Module
    device: torch.device
    key: str
    identity: dict[str, Any]
    best_val_miou: float
    best_step: int
    reused: bool
    real: TensorSet

    @property
    def encoder_weights(self) -> Optional[str]:
        return self.identity["evaluate"]["encoder_weights"]


def dataset_digest(root: str | Path, split: str = "train") -> str:
    """SHA-256 over the relative path and SHA-256 of every file under ``<root>/<split>``."""
    from isdm.utils.io import sha256_file

    base = Path(root) / split
    h = hashlib.sha256()
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(base).as_posix()}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def scorer_identity(cfg: Config, data_root: str | Path, device: torch.device) -> dict[str, Any]:
    """Everything that decides the scorer's weights (see the module docstring)."""
    d = cfg.data
    recipe = {k: v for k, v in to_dict(cfg.evaluate).items() if k not in _NOT_RECIPE}
    data = {"dataset_mode": d.dataset_mode, "num_classes": d.num_classes,
            "ignore_index": d.ignore_index, "resize": d.resize}
    if d.crop:  # trained on crops, validated by sliding windows
        data.update(crop=True, scale=d.scale, crop_defect_prob=d.crop_defect_prob)
    else:  # (keys of whole-image scorers as before the crop keys existed)
        del recipe["window_overlap"]
    return {"dataset_sha256": dataset_digest(data_root),
            "data": data,
            "evaluate": recipe,
            "scorer": {"architecture": cfg.curate.architecture, "seed": cfg.curate.seed},
            "device": device.type}


def load_scorer(cfg: Config, data_root: str | Path, cache_dir: str | Path, *,
                device: Optional[str] = None,
                on_validation: Optional[Callable[[dict[str, float]], None]] = None) -> Scorer:
    """The cached scorer of this config and dataset, trained (and cached) on first use.

    Args:
        device: None uses ``runtime.device`` (``auto`` = CUDA when available).
        on_validation: receives each validation's row (see :func:`isdm.evaluation.cell.train_cell`).
    Raises:
        EvaluationError: unknown architecture, or no validation image in the real train split.
    """
    from isdm.evaluation.cell import plan_cell, train_cell
    from isdm.evaluation.loading import eval_data_config, load_real, load_split
    from isdm.evaluation.mixes import BASELINE
    from isdm.evaluation.segmenter import build_segmenter
    from isdm.utils.io import atomic_path
    from isdm.utils.runtime import resolve_device

    e, c = cfg.evaluate, cfg.curate
    dev = resolve_device(cfg.runtime.device if device is None else device)
    build_segmenter(c.architecture, e.encoder, None, cfg.data.num_classes, c.seed)  # name check
    real = load_real(data_root, "train", eval_data_config(cfg.data, e.image_size))
    identity = scorer_identity(cfg, data_root, dev)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_segmenter(c.architecture, e.encoder, None, cfg.data.num_classes, c.seed)
        model.load_state_dict(state["state_dict"])
        return Scorer(model.to(dev), dev, key, identity, float(state["best_val_miou"]),
                      int(state["best_step"]), True, real)
    empty = TensorSet(real.images[:0], real.labels[:0], [])
    cell = plan_cell(cfg, c.architecture, BASELINE, c.seed, real.keys, [])
    train = load_split(cfg, data_root, "train") if cfg.data.crop else real  # crop: whole images
    model, fit = train_cell(cfg, cell, train, empty, device=dev, on_validation=on_validation)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": fit.state_dict, "identity_json": json.dumps(identity),
                    "best_val_miou": fit.best_val_miou, "best_step": fit.best_step}, tmp)
    return Scorer(model, dev, key, identity, fit.best_val_miou, fit.best_step, False, real)


@torch.no_grad()
def pixel_scores(scorer: Scorer, images: torch.Tensor, labels: Sequence[np.ndarray],
                 ignore_index: Optional[int], batch_size: int,
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per pair, (loss float32 ``[H, W]``, prediction uint8 ``[H, W]``) at the LABEL's size.

    Args:
        images: ``[N, 3, h, w]`` in [-1, 1] at the scorer's input size.
        labels: N uint8 ``[H, W]`` label maps as stored (any size): the logits ``[C, h, w]``
            are resized to ``[C, H, W]`` (bilinear) when the sizes differ.
    The loss is ``-log softmax(logits)[y]`` per pixel; NaN at ``ignore_index`` pixels.
    """
    import torch.nn.functional as F

    from isdm.evaluation.segmenter import normalize

    scorer.model.eval()
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start:start + batch_size].to(scorer.device), scorer.encoder_weights)
        logits = scorer.model(x).float().cpu()
        for k, label in enumerate(labels[start:start + batch_size]):
            z = logits[k:k + 1]
            if tuple(z.shape[-2:]) != label.shape:
                z = F.interpolate(z, size=label.shape, mode="bilinear", align_corners=False)
            y = torch.from_numpy(label.astype(np.int64))[None]
            ignored = y == ignore_index if ignore_index is not None else torch.zeros_like(y, dtype=torch.bool)
            loss = F.cross_entropy(z, torch.where(ignored, 0, y), reduction="none")
            loss[ignored] = float("nan")
            yield loss[0].numpy(), z[0].argmax(dim=0).numpy().astype(np.uint8)
