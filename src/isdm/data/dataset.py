"""The torch Dataset over one split of a folder dataset, and the seeded train/val key split."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from isdm.config import DataConfig
from isdm.data import crops, transforms
from isdm.data.layout import DatasetError, find_pairs
from isdm.seeds import Stream, generator

__all__ = ["SegmentationFolder", "split_keys"]


class SegmentationFolder(Dataset):
    """Image/mask pairs of ``<root>/<split>``, brought to ``data_cfg.image_size``.

    Items: ``{"image": float32 [3, H, W] in [-1, 1], "label": int64 [H, W] class ids
    (ignore_index kept), "key": str}`` with ``(H, W) = data_cfg.size``; when ``data_cfg.pads``
    (``resize: pad`` or ``crop``) also ``"valid": bool [1, H, W]``, False on padding (where the
    image is exactly 0 and the label ``ignore_index``).

    With ``data_cfg.crop`` each image is decoded and scaled once (:func:`transforms.fit_placement`,
    cached as uint8) and every ``__getitem__`` cuts a crop (:func:`isdm.data.crops.crop_origin`,
    defect-centred with probability ``crop_defect_prob``) drawn from the generator
    ``seeds.generator(Stream.DATA_CROP, seed, epoch, index)``: a pure function of the seed, the
    epoch (:meth:`set_epoch`) and the item, whatever the worker, order or resumption.

    Args:
        root: dataset folder holding ``train/`` and ``test/``.
        split: ``train`` or ``test``.
        data_cfg: mode, classes, ignore index, size, ``resize``, ``crop``, ``scale``.
        augment: joint random horizontal flip (p = 1/2) of image and label.
        keys: restrict to these pair keys (e.g. from :func:`split_keys`), in this order.
        generator: source of the flip decisions; None = torch's default generator (seeded and
            checkpointed by the training run, seeded per worker by DataLoader). Pass one only
            with ``num_workers=0``: workers would each copy it and flip in lock-step.
        cache: keep the resized uint8 arrays in memory after the first read (small datasets).
        validate: check every file of the split first (:func:`isdm.data.validate.validate_dataset`),
            once per process for unchanged files, so no training or evaluation starts on a broken
            dataset.
        seed: the crops' seed (the run's ``train.seed``).

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
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.cfg = data_cfg
        self.augment = augment
        self.generator = generator
        self.cache = cache
        self.seed, self.epoch = seed, 0
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
        self._cache: dict[int, Arrays] = {}

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of ``epoch`` (call before iterating, like ``sampler.set_epoch``)."""
        self.epoch = int(epoch)

    def load_arrays(self, index: int) -> "Arrays":
        """Pair ``index`` as placed by the config (no crop, no flip): uint8 image ``[H, W, 3]``,
        uint8 ids ``[H, W]``, bool valid ``[H, W]`` or None (no padding), and with ``crop`` the
        defect pixels of :func:`isdm.data.crops.defect_pixels`."""
        if index in self._cache:
            return self._cache[index]
        pair, cfg = self.pairs[index], self.cfg
        ids = transforms.load_mask(pair.mask, cfg.dataset_mode, cfg.num_classes, cfg.ignore_index,
                                   None)
        place = transforms.fit_placement(ids.shape[1], ids.shape[0], cfg)
        rgb = np.asarray(transforms.place_image(transforms.load_image(pair.image, None), place))
        ids = transforms.place_ids(ids, place, cfg.ignore_index)
        pixels = crops.defect_pixels(ids, cfg.ignore_index) if cfg.crop else None
        arrays = Arrays(rgb, ids, transforms.valid_map(place), pixels)
        if self.cache:
            self._cache[index] = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, ids, valid, pixels = self.load_arrays(index)
        cfg = self.cfg
        if cfg.crop:
            h, w = cfg.size
            rng = generator(Stream.DATA_CROP, self.seed, self.epoch, index)
            top, left = crops.crop_origin(ids.shape, (h, w), rng, cfg.crop_defect_prob, pixels)
            window = (slice(top, top + h), slice(left, left + w))
            rgb, ids = rgb[window], ids[window]
            valid = None if valid is None else valid[window]
        image = transforms.to_tensor_image(rgb)
        label = torch.from_numpy(ids.astype(np.int64))
        item: dict[str, Any] = {"image": image, "label": label, "key": self.pairs[index].key}
        if cfg.pads:
            v = (torch.ones((1, *ids.shape), dtype=torch.bool) if valid is None
                 else torch.from_numpy(np.ascontiguousarray(valid))[None])
            item["image"], item["valid"] = image.masked_fill(~v, 0.0), v
        if self.augment:
            flipped = transforms.random_hflip(*(item[k] for k in _FLIPPED if k in item),
                                              generator=self.generator)
            item.update(zip((k for k in _FLIPPED if k in item), flipped))
        return item


_FLIPPED = ("image", "label", "valid")


class Arrays(NamedTuple):
    """One pair as placed by the data config (see :meth:`SegmentationFolder.load_arrays`)."""

    image: np.ndarray
    ids: np.ndarray
    valid: Optional[np.ndarray]
    pixels: Optional[dict[int, np.ndarray]]


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
            h.update(os.fsencode(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n"))
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
