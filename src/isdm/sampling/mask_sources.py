"""Where the conditioning masks of a sampling job come from.

- ``train`` (the original tool's behaviour): the masks of ``<data_root>/train``, each paired
  with its real image by relative path (:func:`isdm.data.layout.find_pairs`).
- ``folder``: ``sample.mask_dir``. If it holds ``images/`` and ``masks/`` it is read like a
  dataset split (masks paired with real images); otherwise every ``*.png`` below it is a mask
  without an image, and ``images/`` of the output gets a neutral gray placeholder (value 128)
  so that every output folder still holds one file per sample.
- ``augment``: the ``train`` masks (or ``mask_dir`` when set), augmented per sample
  (:mod:`isdm.sampling.augment`).

Masks are decoded by :func:`isdm.data.masks.decode_mask` (binary: any value > 0 is class 1) and
resized to the model's image size with nearest neighbour; images are resized bicubic, both via
:mod:`isdm.data.transforms`. Masks are kept in memory (one uint8 map per source mask, small);
images are read on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from isdm.config import Config
from isdm.errors import ConfigError, DatasetError

__all__ = ["MaskEntry", "MaskSet", "load_mask_set", "PLACEHOLDER_GRAY"]

PLACEHOLDER_GRAY = 128


@dataclass(frozen=True)
class MaskEntry:
    """One source mask: ``key`` (relative path without extension), its files."""

    key: str
    mask_path: Path
    image_path: Optional[Path]


@dataclass
class MaskSet:
    """Source masks resized to ``image_size``: ``masks[j]`` uint8 [S, S] class ids."""

    entries: list[MaskEntry]
    masks: list[np.ndarray]
    image_size: int
    keep_aspect: bool = False
    ignore_index: Optional[int] = 255
    _instances: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, j: int) -> Optional[np.ndarray]:
        """uint8 [S, S, 3] real image of mask ``j`` (resized), or None when it has none."""
        path = self.entries[j].image_path
        return None if path is None else _load_image(str(path), self.image_size, self.keep_aspect)

    def instances(self, j: int) -> list[np.ndarray]:
        """Cached defect instances of mask ``j`` (see :func:`augment.connected_instances`)."""
        if j not in self._instances:
            from isdm.sampling.augment import connected_instances

            self._instances[j] = connected_instances(self.masks[j], self.ignore_index)
        return self._instances[j]


class LazyImages(Sequence):
    """``images[j]`` reads image j only when asked (copy-paste donors)."""

    def __init__(self, mask_set: MaskSet) -> None:
        self._set = mask_set

    def __len__(self) -> int:
        return len(self._set)

    def __getitem__(self, j):  # type: ignore[override]
        return self._set.image(j)


def load_mask_set(cfg: Config, data_root: str | Path, image_size: int) -> MaskSet:
    """The masks named by ``cfg.sample.mask_source`` / ``mask_dir``, resized to ``image_size``.

    Raises:
        FileNotFoundError / ValueError naming the folder when no mask is found, and the data
        layer's :class:`DatasetError` for unpaired or invalid files.
    """
    sample = cfg.sample
    use_dir = sample.mask_source == "folder" or (sample.mask_source == "augment" and sample.mask_dir)
    if use_dir:
        folder = Path(sample.mask_dir)
        if not folder.is_dir():
            raise ConfigError(f"sample.mask_dir={folder} is not a folder of masks")
        if (folder / "masks").is_dir() and (folder / "images").is_dir():
            entries = _paired(folder)
        else:
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png")
            entries = [MaskEntry(_key(p, folder), p, None) for p in paths]
    else:
        split = Path(data_root) / "train"
        if not split.is_dir():
            raise DatasetError([f"{split} does not exist: --data must hold train/images and "
                                    "train/masks (or set sample.mask_source=folder)"])
        entries = _paired(split)
    if not entries:
        raise DatasetError([f"no masks found for sample.mask_source={sample.mask_source!r} "
                         f"({sample.mask_dir or Path(data_root) / 'train'})"])
    data = cfg.data
    masks = [_load_mask(str(e.mask_path), image_size, data.keep_aspect, data.dataset_mode,
                        data.num_classes, data.ignore_index) for e in entries]
    return MaskSet(entries=entries, masks=masks, image_size=image_size,
                   keep_aspect=data.keep_aspect, ignore_index=data.ignore_index)


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _paired(split_dir: Path) -> list[MaskEntry]:
    from isdm.data.layout import find_pairs

    return [MaskEntry(p.key, Path(p.mask), Path(p.image)) for p in find_pairs(split_dir)]


def _load_mask(path: str, size: int, keep_aspect: bool, mode: str, num_classes: int,
               ignore_index: Optional[int]) -> np.ndarray:
    from isdm.data.transforms import load_mask

    return load_mask(path, mode, num_classes, ignore_index, size, keep_aspect=keep_aspect)


@lru_cache(maxsize=64)
def _load_image(path: str, size: int, keep_aspect: bool) -> np.ndarray:
    from isdm.data.transforms import load_image

    return np.asarray(load_image(path, size, keep_aspect=keep_aspect), dtype=np.uint8)
