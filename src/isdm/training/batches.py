"""Datasets, loaders and per-step inputs of the training loop.

The data order of an epoch is a pure function of ``(seed, epoch)``: a ``DistributedSampler``
(also for a single process, with ``num_replicas=1``) shuffles with ``seed`` and ``set_epoch``;
with ``data.crop`` the training set's crops are too (:meth:`SegmentationFolder.set_epoch`).
``drop_last`` only drops the incomplete last batch when at least one full batch exists, so a
dataset smaller than the batch size still trains (one short batch instead of none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from isdm.config import Config, TrainConfig
from isdm.errors import ConfigError
from isdm.training.distributed import DistContext

__all__ = ["Splits", "build_splits", "make_loader", "step_inputs"]


@dataclass
class Splits:
    train: Dataset
    val: Optional[Dataset]
    train_keys: list[str]
    val_keys: list[str]


def build_splits(cfg: Config, tcfg: TrainConfig, data_root: str | Path) -> Splits:
    """The training set (augmented) and, with ``val_fraction`` > 0, a held-out validation set
    (no augmentation) split from ``<data_root>/train`` by key with ``tcfg.seed``.

    The split is validated once, by the first :class:`~isdm.data.SegmentationFolder`; the
    subsets built from its keys skip that.

    Raises:
        DatasetError: every pairing / file / mask-value problem of ``<data_root>/train``.
    """
    from isdm.data import SegmentationFolder, split_keys

    # validates the split (an empty one is a DatasetError), so keys is never empty
    keys = SegmentationFolder(data_root, "train", cfg.data, augment=False).keys
    val_keys: list[str] = []
    train_keys = keys
    if tcfg.val_fraction > 0:
        train_keys, val_keys = split_keys(keys, tcfg.val_fraction, tcfg.seed)
        if not train_keys or not val_keys:
            raise ConfigError(
                f"val_fraction={tcfg.val_fraction} of {len(keys)} training pairs leaves an empty "
                "split; use a fraction that keeps at least one pair on each side"
            )
    train = SegmentationFolder(data_root, "train", cfg.data, augment=cfg.data.hflip,
                               keys=train_keys, validate=False, seed=tcfg.seed)
    # the validation set keeps epoch 0's crops: the same held-out items every epoch
    val = (SegmentationFolder(data_root, "train", cfg.data, augment=False, keys=val_keys,
                              validate=False, seed=tcfg.seed) if val_keys else None)
    return Splits(train=train, val=val, train_keys=list(train_keys), val_keys=list(val_keys))


def make_loader(dataset: Dataset, batch_size: int, ctx: DistContext, *, seed: int, shuffle: bool,
                num_workers: int = 0) -> tuple[DataLoader, DistributedSampler]:
    """A loader whose order is fixed by ``(seed, sampler.set_epoch(e))``; this rank's share."""
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=shuffle, seed=seed, drop_last=False)
    drop_last = shuffle and len(sampler) >= batch_size
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=num_workers, pin_memory=ctx.device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed),
                        persistent_workers=False)
    return loader, sampler


def step_inputs(batch: dict[str, Any], cfg: Config, num_timesteps: int, drop_rate: float,
                generator: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           Optional[torch.Tensor]]:
    """``(x0, segmap, t, noise, valid)`` on ``device`` for one batch.

    x0: [B,3,H,W] in [-1,1]; segmap: [B,C,H,W] one-hot, each sample replaced by the all-zero
    null label with probability ``drop_rate``; t: [B] int64 ~ U{0..T-1}; noise: [B,3,H,W] ~ N(0,I);
    valid: the batch's bool [B,1,H,W] padding map (False = padding, excluded from the loss), or
    None when no pixel of the batch is padding (the loss is then the plain mean).
    All draws come from the CPU ``generator`` so they are identical on every device.
    """
    from isdm.data.masks import drop_labels, one_hot

    x0 = batch["image"]
    segmap = one_hot(batch["label"], cfg.data.num_classes, cfg.data.ignore_index)
    if drop_rate > 0:
        segmap = drop_labels(segmap, drop_rate, generator)
    t = torch.randint(0, num_timesteps, (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    valid = batch.get("valid")
    if valid is not None and bool(valid.all()):
        valid = None
    nb = device.type == "cuda"
    return (x0.to(device, non_blocking=nb), segmap.to(device, non_blocking=nb),
            t.to(device, non_blocking=nb), noise.to(device, non_blocking=nb),
            None if valid is None else valid.to(device, non_blocking=nb))
