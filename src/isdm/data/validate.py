"""Validate a whole dataset before any work, reporting ALL problems at once, and count classes.

Every file is opened and fully decoded exactly once (PIL ``load()``, which also detects truncated
files). Checks, per split:

- pairing (:func:`isdm.data.layout.scan_split`): missing folder, image without mask and vice
  versa, duplicate stem (``a.png`` + ``a.jpg``), empty split;
- unreadable / corrupt / truncated image or mask;
- image and mask of a pair with different sizes;
- mask values outside the valid set (multi-class: ``0..C-1`` and ``ignore_index``).

The same pass collects the statistics printed by ``isdm data check`` (:class:`SplitStats`), at
the files' original resolution and, with ``placed=True``, after the config's geometry
(:func:`isdm.data.transforms.fit_placement`: resize to ``image_size``, or ``scale`` with crops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from isdm.config import DataConfig
from isdm.data.layout import SPLITS, DatasetError, Pair, scan_split
from isdm.data.masks import MaskValueError, check_label_space, decode_mask, mask_image_to_array

__all__ = ["SplitStats", "DatasetReport", "validate_dataset", "scan_dataset"]

_MAX_RAW_VALUES = 32  # distinct stored mask values remembered per split (for the report)


@dataclass
class SplitStats:
    """Statistics of one valid split, at the files' original resolution.

    ``class_pixels[c]``: pixels of class c over all masks; ``class_images[c]``: masks containing
    class c; ``ignore_pixels``: pixels equal to ``ignore_index``; ``raw_values``: distinct stored
    mask values (before decoding; at most 32 kept); sizes are ``(width, height)``, ``sizes``
    those of every decoded pair. With ``placed``: ``placed_pixels[c]`` / ``placed_images[c]``
    the same counts after the data config's geometry (nearest neighbour, so a thin defect can
    vanish), ``placed_area`` the pixels of the placed masks (padding included).
    """

    split: str
    pairs: list[Pair]
    num_classes: int
    min_size: tuple[int, int] = (0, 0)
    max_size: tuple[int, int] = (0, 0)
    class_pixels: list[int] = field(default_factory=list)
    class_images: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    raw_values: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    placed_pixels: list[int] = field(default_factory=list)
    placed_images: list[int] = field(default_factory=list)
    placed_area: int = 0

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def total_pixels(self) -> int:
        return int(sum(self.class_pixels)) + self.ignore_pixels

    def class_share(self) -> list[float]:
        """Fraction of labeled (non-ignored) pixels per class."""
        total = sum(self.class_pixels)
        return [p / total if total else 0.0 for p in self.class_pixels]


@dataclass
class DatasetReport:
    root: Path
    mode: str
    num_classes: int
    ignore_index: Optional[int]
    splits: dict[str, SplitStats]
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _open_image(path: Path) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.size, None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return None, f"unreadable image {path}: {type(e).__name__}: {e} (re-export or remove it)"


def _open_mask(path: Path) -> tuple[Optional[np.ndarray], Optional[str]]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return mask_image_to_array(img), None
    except Exception as e:
        return None, f"unreadable mask {path}: {type(e).__name__}: {e} (re-export or remove it)"


def _accumulate(stats: SplitStats, raw: np.ndarray, ids: np.ndarray, ignore_index: Optional[int],
                raw_values: set[int]) -> None:
    counts = np.bincount(ids.reshape(-1), minlength=256)
    c = stats.num_classes
    for k in range(c):
        stats.class_pixels[k] += int(counts[k])
        stats.class_images[k] += int(counts[k] > 0)
    if ignore_index is not None and c <= ignore_index <= 255:
        stats.ignore_pixels += int(counts[ignore_index])
    if len(raw_values) < _MAX_RAW_VALUES:
        raw_values.update(int(v) for v in np.unique(raw)[:_MAX_RAW_VALUES])


def _place(stats: SplitStats, ids: np.ndarray, cfg: DataConfig) -> None:
    from isdm.data.transforms import fit_placement, place_ids

    placed = place_ids(ids, fit_placement(ids.shape[1], ids.shape[0], cfg), cfg.ignore_index)
    counts = np.bincount(placed.reshape(-1), minlength=256)
    for k in range(stats.num_classes):
        stats.placed_pixels[k] += int(counts[k])
        stats.placed_images[k] += int(counts[k] > 0)
    stats.placed_area += placed.size


def _scan_split(split_dir: Path, split: str, cfg: DataConfig, problems: list[str],
                bad_values: dict[Path, list[int]], progress: bool, placed: bool) -> SplitStats:
    pairs, pair_problems = scan_split(split_dir)
    problems += pair_problems
    c = cfg.num_classes
    stats = SplitStats(split, pairs, c, class_pixels=[0] * c, class_images=[0] * c,
                       placed_pixels=[0] * c if placed else [],
                       placed_images=[0] * c if placed else [])
    sizes = stats.sizes
    raw_values: set[int] = set()
    from isdm.utils import progress as bars

    for pair in bars.bar(pairs, desc=f"check {split}", unit="pair", enabled=progress,
                         transient=True):
        size, err_i = _open_image(pair.image)
        raw, err_m = _open_mask(pair.mask)
        problems += [e for e in (err_i, err_m) if e]
        if raw is None:
            continue
        mask_size = (raw.shape[1], raw.shape[0])
        if size is not None and size != mask_size:
            problems.append(f"size mismatch: image {pair.image} is {size[0]}x{size[1]} but mask "
                            f"{pair.mask} is {mask_size[0]}x{mask_size[1]} (resize the mask with "
                            "nearest neighbour or re-export it)")
        try:
            ids = decode_mask(raw, cfg.dataset_mode, c, cfg.ignore_index)
        except MaskValueError as e:
            bad_values[pair.mask] = e.values
            continue
        except ValueError as e:
            problems.append(f"invalid mask {pair.mask}: {e}")
            continue
        if size is not None:
            sizes.append(size)
        _accumulate(stats, raw, ids, cfg.ignore_index, raw_values)
        if placed:
            _place(stats, ids, cfg)
    if sizes:
        stats.min_size = min(sizes, key=lambda s: (s[0] * s[1], s))
        stats.max_size = max(sizes, key=lambda s: (s[0] * s[1], s))
    stats.raw_values = sorted(raw_values)
    return stats


def _value_problems(bad_values: dict[Path, list[int]], cfg: DataConfig) -> tuple[list[str], list[str]]:
    if not bad_values:
        return [], []
    allowed = f"0..{cfg.num_classes - 1}"
    if cfg.ignore_index is not None:
        allowed += f" and {cfg.ignore_index} (ignore_index)"
    problems = [f"mask values {vals} outside the valid set ({allowed}): {path}"
                for path, vals in bad_values.items()]
    return problems, _value_hints(bad_values, cfg)


def _value_hints(bad_values: dict[Path, list[int]], cfg: DataConfig) -> list[str]:
    """Fixes for out-of-range mask values, each true for the values it names.

    Three kinds of value call for different fixes: 0..254 may be class ids (raise
    ``num_classes``, which must stay below ``ignore_index``); 255 is the usual unlabeled value;
    above 255 (16-bit masks) no 8-bit label map can hold the value, whatever ``num_classes``.
    """
    def masks_with(pred) -> int:
        return sum(any(pred(v) for v in vals) for vals in bad_values.values())

    values = sorted({v for vals in bad_values.values() for v in vals})
    ids, wide = [v for v in values if v < 255], [v for v in values if v > 255]
    hints = []
    if ids:
        need = ids[-1] + 1
        hint = (f"{masks_with(lambda v: v < 255)} mask(s) hold values {_listed(ids)} >= "
                f"data.num_classes={cfg.num_classes}: if these are class ids, set "
                f"data.num_classes >= {need} (--num-classes {need})")
        if cfg.ignore_index is not None and cfg.ignore_index < need:
            hint += (f" together with data.ignore_index=null or a value in {need}..255 (now "
                     f"{cfg.ignore_index}, which would become a class id)")
        hints.append(hint + "; otherwise remap the masks to 0..C-1")
    if 255 in values:
        hints.append(f"{masks_with(lambda v: v == 255)} mask(s) hold 255, the usual unlabeled "
                     "value: if it marks unlabeled pixels, set data.ignore_index=255 "
                     "(--set data.ignore_index=255)")
    if wide:
        hint = (f"{masks_with(lambda v: v > 255)} mask(s) hold values above 255 "
                f"({_listed(wide)}): 16-bit masks; class ids must fit 8 bits "
                "(data.num_classes <= 255), so re-save them as 8-bit gray or palette PNGs of "
                "class ids")
        if all(v % 257 == 0 for v in wide):
            hint += (f"; these values are 257 x {_listed([v // 257 for v in wide])}, i.e. 8-bit "
                     "values stretched to 16 bits: divide them by 257")
        hints.append(hint)
    hints.append("use --mode binary if every value > 0 means defect")
    return hints


def _listed(values: list[int], limit: int = 6) -> str:
    """``[3, 7, 9]`` or ``[3, 7, ..., 1028]`` (first values and the largest)."""
    if len(values) <= limit:
        return str(values)
    return "[" + ", ".join(map(str, values[:limit - 1])) + f", ..., {values[-1]}]"


def scan_dataset(root: str | Path, data_cfg: DataConfig, splits: Sequence[str] = SPLITS,
                 progress: bool = False, placed: bool = False) -> DatasetReport:
    """Validate and count, never raising for dataset problems: they are in ``report.problems``
    (``placed``: also count the classes after the config's geometry)."""
    root = Path(root)
    check_label_space(data_cfg.num_classes,
                      data_cfg.ignore_index if data_cfg.dataset_mode == "multi-class" else None)
    problems: list[str] = []
    bad_values: dict[Path, list[int]] = {}
    if not root.is_dir():
        problems.append(f"dataset folder {root} does not exist")
        return DatasetReport(root, data_cfg.dataset_mode, data_cfg.num_classes,
                             data_cfg.ignore_index, {}, problems)
    stats = {s: _scan_split(root / s, s, data_cfg, problems, bad_values, progress, placed)
             for s in splits}
    value_problems, hints = _value_problems(bad_values, data_cfg)
    return DatasetReport(root, data_cfg.dataset_mode, data_cfg.num_classes, data_cfg.ignore_index,
                         stats, problems + value_problems, hints, _warnings(stats, data_cfg))


def _warnings(stats: dict[str, SplitStats], cfg: DataConfig) -> list[str]:
    """Valid but suspicious: a multi-class dataset whose only non-zero value is ignore_index is
    almost surely a binary {0,255} dataset read with the wrong mode."""
    out = []
    for s in stats.values():
        if s.ignore_pixels and not any(s.class_pixels[1:]):
            out.append(f"{s.split}: every non-zero mask pixel equals ignore_index={cfg.ignore_index} "
                       "and is ignored; if it marks a defect, use --mode binary "
                       "(data.dataset_mode=binary, data.num_classes=2)")
    return out


def validate_dataset(root: str | Path, data_cfg: DataConfig, splits: Sequence[str] = SPLITS,
                     progress: bool = False) -> DatasetReport:
    """Check every file of ``splits`` of the dataset at ``root``.

    Returns:
        The :class:`DatasetReport` with per-split statistics when there is no problem.

    Raises:
        DatasetError: listing every problem found (files and values named), plus the fixes.
    """
    report = scan_dataset(root, data_cfg, splits, progress)
    if report.problems:
        raise DatasetError(report.problems, root=report.root, hints=report.hints)
    return report
