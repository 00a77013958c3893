"""The scorer: a segmenter trained on the REAL train split only, and its per-pixel scores.

The scorer IS the downstream cell (:mod:`isdm.evaluation.cell`) of ``curate.architecture``, the
real-only mix ``RALLF000`` and seed ``curate.seed``, trained with the ``evaluate`` recipe through
the same code (:mod:`isdm.evaluation.worker`), for ``evaluate.steps`` (``auto``: the
calibrated steps of ``curate.architecture``, :mod:`isdm.evaluation.calibration`), and kept in
the same cell store (:mod:`isdm.evaluation.store`, keyed by
:class:`isdm.evaluation.spec.CellSpec`: the real train files, the data keys that decode them, the
evaluate recipe, the architecture, seed, steps and
device type): ``curate`` reuses the cell ``evaluate`` trained and the reverse, and its label
fidelity is the one evaluate reports. Where the dataset has a test split the scorer's record
holds its test counts too (as every evaluate cell's: curate never reads them), so that evaluate
finds the cell complete. With ``data.crop`` it is evaluate's crop-trained cell (random crops of
the real images at ``data.scale``, whole validation images by sliding windows); the synthetic
images it scores are crops of that size, predicted whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from isdm.config import Config
from isdm.data.digest import dataset_digest
from isdm.evaluation.segmenter import TensorSet

__all__ = ["Scorer", "dataset_digest", "load_scorer", "pixel_scores"]


@dataclass
class Scorer:
    """A trained scorer, what it was trained on, and the real train images it saw.

    ``identity`` is its cell's spec (:meth:`isdm.evaluation.spec.CellSpec.identity`), ``key``
    its key in the cell store; ``real`` (the real train split at ``evaluate.image_size``, whole
    images resized even with ``data.crop``, when the scorer trains on crops) serves the
    memorisation check."""

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
        return self.identity["recipe"]["encoder_weights"]


def load_scorer(cfg: Config, data_root: str | Path, *, cell_cache: Optional[str | Path] = None,
                device: Optional[str] = None,
                on_validation: Optional[Callable[[dict[str, float]], None]] = None) -> Scorer:
    """The scorer of this config and dataset: its cell from the store, trained (and stored) on
    first use.

    Args:
        cell_cache: the cell store (default :func:`isdm.evaluation.store.resolve_root`).
        device: None uses ``runtime.device`` (``auto`` = CUDA when available).
        on_validation: receives each validation's row of a scorer trained here (see
            :class:`isdm.evaluation.cell.CellRun`).
    Raises:
        EvaluationError: unknown architecture, or no validation image in the real train split.
    """
    from isdm.evaluation.calibration import resolve_steps
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.cell_runs import stored_model
    from isdm.evaluation.loading import eval_data_config, load_real
    from isdm.evaluation.mixes import BASELINE
    from isdm.evaluation.pool import CellPool
    from isdm.evaluation.segmenter import build_segmenter
    from isdm.evaluation.store import CellStore, resolve_root
    from isdm.evaluation.worker import Digests, load_real as load_split_once, make_job
    from isdm.utils.runtime import resolve_device

    e, c = cfg.evaluate, cfg.curate
    dev = resolve_device(cfg.runtime.device if device is None else device)
    build_segmenter(c.architecture, e.encoder, None, cfg.data.num_classes, c.seed)  # name check
    digests = Digests(data_root)
    train = load_split_once(cfg, data_root, "train", digests.split("train"))
    real = load_real(data_root, "train", eval_data_config(cfg.data, e.image_size)) \
        if cfg.data.crop else train  # whole images resized, for the memorisation check
    cell = plan_cell(cfg, c.architecture, BASELINE, c.seed, train.keys, [])
    store = CellStore(resolve_root(cell_cache))
    steps, _ = resolve_steps(cfg, data_root, [c.architecture], store=store, device=dev)
    job = make_job(cfg, data_root, cell, digests=digests, synthetic=None,
                   test=bool(digests.split("test")), device_type=dev.type, store=store,
                   steps=steps[c.architecture])
    with CellPool.for_cells(e, dev, 1) as pool:
        (outcome,) = list(pool.run([job]))
    record = outcome.record
    if outcome.trained and on_validation is not None:
        for row in record.fit["history"]:
            on_validation(row)
    return Scorer(stored_model(cfg, record, dev), dev, record.key, record.spec,
                  record.best_val_miou, int(record.fit["best_step"]), not outcome.trained, real)


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
