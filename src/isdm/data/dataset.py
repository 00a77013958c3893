"""The torch Dataset over one split of a folder dataset, and the seeded train/val key split."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from isdm.config import DataConfig
from isdm.data import transforms
from isdm.data.layout import DatasetError, find_pairs

__all__ = ["SegmentationFolder", "split_keys"]


class SegmentationFolder(Dataset):
    """Image/mask pairs of ``<root>/<split>``, resized to ``data_cfg.image_size``.

    Items: ``{"image": float32 [3, S, S] in [-1, 1], "label": int64 [S, S] class ids
    (ignore_index kept), "key": str}`` with ``S = data_cfg.image_size``.

    Args:
        root: dataset folder holding ``train/`` and ``test/``.
        split: ``train`` or ``test``.
        data_cfg: mode, classes, ignore index, size, ``keep_aspect``.
        augment: joint random horizontal flip (p = 1/2) of image and label.
        keys: restrict to these pair keys (e.g. from :func:`split_keys`), in this order.
        generator: source of the flip decisions; None = torch's default generator (seeded and
            checkpointed by the training run, seeded per worker by DataLoader). Pass one only
            with ``num_workers=0``: workers would each copy it and flip in lock-step.
        cache: keep the resized uint8 arrays in memory after the first read (small datasets).
        validate: check every file of the split first (:func:`isdm.data.validate.validate_dataset`),
            once per process for unchanged files, so no training or evaluation starts on a broken
            dataset.

    Raises:
        DatasetError: listing every problem of the split (missing partner, duplicate stem, empty
            split, unreadable file, size mismatch, invalid mask values), or unknown ``keys``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        data_cfg: DataConfig,
        augment: bool = False,
        keys: Optional[Sequence[str]] = None,
        *,
        generator: Optional[torch.Generator] = None,
        cache: bool = True,
        validate: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.cfg = data_cfg
        self.augment = augment
        self.generator = generator
        self.cache = cache
        if validate:
            _validate_once(self.root, split, data_cfg)
        pairs = {p.key: p for p in find_pairs(self.root / split)}
        if keys is None:
            self.pairs = list(pairs.values())
        else:
            missing = [k for k in keys if k not in pairs]
            if missing:
                raise DatasetError([f"key {k!r} not found in {self.root / split}" for k in missing])
            self.pairs = [pairs[k] for k in keys]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def load_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 image ``[S, S, 3]`` and uint8 ids ``[S, S]`` of pair ``index`` (no augmentation)."""
        if index in self._cache:
            return self._cache[index]
        pair, cfg = self.pairs[index], self.cfg
        rgb = np.asarray(transforms.load_image(pair.image, cfg.image_size, cfg.keep_aspect))
        ids = transforms.load_mask(pair.mask, cfg.dataset_mode, cfg.num_classes, cfg.ignore_index,
                                   cfg.image_size, cfg.keep_aspect)
        if self.cache:
            self._cache[index] = (rgb, ids)
        return rgb, ids

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, ids = self.load_arrays(index)
        image = transforms.to_tensor_image(rgb)
        label = torch.from_numpy(ids.astype(np.int64))
        if self.augment:
            image, label = transforms.random_hflip(image, label, self.generator)
        return {"image": image, "label": label, "key": self.pairs[index].key}


_VALIDATED: set[str] = set()


def _validate_once(root: Path, split: str, cfg: DataConfig) -> None:
    """Validate ``root/split`` unless this process already did so for the same files (path, size,
    mtime) and the same mask rules."""
    from isdm.data.validate import validate_dataset

    h = hashlib.sha256(repr((str(root.resolve()), split, cfg.dataset_mode, cfg.num_classes,
                             cfg.ignore_index)).encode())
    split_dir = root / split
    for path in sorted(split_dir.rglob("*")) if split_dir.is_dir() else []:
        if path.is_file():
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    signature = h.hexdigest()
    if signature not in _VALIDATED:
        report = validate_dataset(root, cfg, splits=(split,))
        for message in report.warnings:
            warnings.warn(f"{root}: {message}", stacklevel=3)
        _VALIDATED.add(signature)


def split_keys(keys: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split pair keys into (train, val) deterministically from ``seed``.

    The keys are sorted first, so the split depends only on the set of keys, not on listing
    order. ``round(n * val_fraction)`` keys (at least 1 when ``val_fraction > 0`` and n >= 2)
    go to val, chosen by a ``numpy.random.default_rng(seed)`` permutation; both lists come back
    sorted. ``val_fraction == 0`` gives ``(sorted keys, [])``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
    ordered = sorted(keys)
    if len(set(ordered)) != len(ordered):
        raise ValueError("split_keys: keys must be unique")
    n = len(ordered)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = set(perm[:n_val].tolist())
    train = [k for i, k in enumerate(ordered) if i not in val_idx]
    val = [k for i, k in enumerate(ordered) if i in val_idx]
    return train, val
