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
placed like training data (:func:`isdm.data.transforms.fit_placement`: ``data.resize`` to the
model's image size, or with ``data.crop`` scaled by ``data.scale``, from which the plan cuts a
crop per sample) with nearest neighbour; images are resized bicubic the same way. Masks are kept
in memory (one uint8 map per source mask); images are read on demand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from isdm.config import Config, DataConfig
from isdm.errors import ConfigError, DatasetError, MaskValueError

__all__ = ["MaskEntry", "MaskSet", "load_mask_set", "validate_mask_source", "PLACEHOLDER_GRAY"]

PLACEHOLDER_GRAY = 128


@dataclass(frozen=True)
class MaskEntry:
    """One source mask: ``key`` (relative path without extension), its files."""

    key: str
    mask_path: Path
    image_path: Optional[Path]


@dataclass
class MaskSet:
    """Source masks placed by ``data`` (whose ``image_size`` is the model's): ``masks[j]`` uint8
    class ids, ``data.size`` (or, with ``data.crop``, the scaled mask)."""

    entries: list[MaskEntry]
    masks: list[np.ndarray]
    data: DataConfig
    _instances: dict = field(default_factory=dict, repr=False)

    @property
    def ignore_index(self) -> Optional[int]:
        return self.data.ignore_index

    def __len__(self) -> int:
        return len(self.entries)

    def image(self, j: int) -> Optional[np.ndarray]:
        """uint8 [H, W, 3] real image of mask ``j`` (placed like the mask), or None when it has
        none."""
        path = self.entries[j].image_path
        return None if path is None else _load_image(str(path), self.data)

    def pixels(self, j: int) -> dict[int, np.ndarray]:
        """Cached defect pixels of mask ``j`` (see :func:`isdm.data.crops.defect_pixels`)."""
        key = ("pixels", j)
        if key not in self._instances:
            from isdm.data.crops import defect_pixels

            self._instances[key] = defect_pixels(self.masks[j], self.ignore_index)
        return self._instances[key]

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


def _source(cfg: Config, data_root: str | Path) -> tuple[Path, bool]:
    """The folder the masks come from and whether it is a split (``images/`` + ``masks/``)."""
    sample = cfg.sample
    if sample.mask_source == "folder" or (sample.mask_source == "augment" and sample.mask_dir):
        folder = Path(sample.mask_dir)
        if not folder.is_dir():
            raise ConfigError(f"sample.mask_dir={folder} is not a folder of masks")
        return folder, (folder / "masks").is_dir() and (folder / "images").is_dir()
    return Path(data_root) / "train", True


def validate_mask_source(cfg: Config, data_root: str | Path) -> None:
    """Check every file the mask source reads, before any work, like ``isdm train`` does.

    A split (``train``, or a ``mask_dir`` with ``images/`` and ``masks/``) goes through
    :func:`isdm.data.validate.validate_dataset` (pairing, unreadable or truncated files,
    image/mask size mismatch, mask values); a folder of masks alone is decoded mask by mask.

    Raises:
        DatasetError: listing every problem found, with the files named.
    """
    from isdm.data.validate import validate_dataset

    folder, split = _source(cfg, data_root)
    if split:
        folder = folder.resolve()
        validate_dataset(folder.parent, cfg.data, splits=(folder.name,))
        return
    paths = _mask_files(folder)
    problems = [] if paths else [f"no *.png mask below {folder} (sample.mask_dir)"]
    for path in paths:
        try:
            _load_mask(str(path), cfg.data, place=False)
        except DatasetError as e:
            problems += e.problems
        except MaskValueError as e:
            problems.append(str(e))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            problems.append(f"unreadable mask {path}: {type(e).__name__}: {e} (re-export or "
                            "remove it)")
    if problems:
        raise DatasetError(problems, root=folder)


def load_mask_set(cfg: Config, data_root: str | Path,
                  image_size: int | tuple[int, int]) -> MaskSet:
    """The masks named by ``cfg.sample.mask_source`` / ``mask_dir``, placed by ``cfg.data`` for
    a model of ``image_size``.

    Raises:
        ConfigError / DatasetError naming the folder when no mask is found, and the data
        layer's :class:`DatasetError` for unpaired or invalid files.
    """
    folder, split = _source(cfg, data_root)
    if split:
        if not folder.is_dir():
            raise DatasetError([f"{folder} does not exist: --data must hold train/images and "
                                "train/masks (or set sample.mask_source=folder)"])
        entries = _paired(folder)
    else:
        entries = [MaskEntry(_key(p, folder), p, None) for p in _mask_files(folder)]
    if not entries:
        raise DatasetError([f"no masks found for sample.mask_source="
                            f"{cfg.sample.mask_source!r} ({folder})"])
    data = dataclasses.replace(cfg.data, image_size=image_size)
    masks = [_load_mask(str(e.mask_path), data) for e in entries]
    return MaskSet(entries=entries, masks=masks, data=data)


def _mask_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png")


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _paired(split_dir: Path) -> list[MaskEntry]:
    from isdm.data.layout import find_pairs

    return [MaskEntry(p.key, Path(p.mask), Path(p.image)) for p in find_pairs(split_dir)]


def _load_mask(path: str, data: DataConfig, place: bool = True) -> np.ndarray:
    """Class ids of a mask file decoded by ``data``'s rules and placed by it (``place=False``:
    at the stored size)."""
    from isdm.data.transforms import fit_placement, load_mask, place_ids

    ids = load_mask(path, data.dataset_mode, data.num_classes, data.ignore_index, None)
    if not place:
        return ids
    return place_ids(ids, fit_placement(ids.shape[1], ids.shape[0], data), data.ignore_index)


@lru_cache(maxsize=64)
def _load_image(path: str, data: DataConfig) -> np.ndarray:
    from isdm.data.transforms import fit_placement, load_image, place_image

    rgb = load_image(path, None)
    return np.asarray(place_image(rgb, fit_placement(rgb.width, rgb.height, data)),
                      dtype=np.uint8)
