"""The dataset folder layout and image/mask pairing.

Layout (the original ISDM tool's)::

    <root>/train/images/**/*.{png,jpg,jpeg}     <root>/train/masks/**/*.png
    <root>/test/images/...                      <root>/test/masks/...

An image and its mask are paired by their path relative to ``images/`` / ``masks/`` without the
extension (the pair's ``key``): ``images/lot3/a.jpg`` pairs with ``masks/lot3/a.png``. Never by
sorted order (the original's sampling did that and silently mismatched pairs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from isdm.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "SPLITS",
    "DatasetError",
    "Pair",
    "scan_split",
    "find_pairs",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MASK_EXTENSIONS = (".png",)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Pair:
    """One image/mask pair: ``key`` is the relative path without extension (posix ``/``)."""

    key: str
    image: Path
    mask: Path


def _index(folder: Path, extensions: tuple[str, ...]) -> tuple[dict[str, Path], list[str]]:
    """Map key -> file for every file below ``folder`` with one of ``extensions`` (any case).

    Returns the map and the problems: duplicate stems (``a.png`` and ``a.jpg`` both present),
    names that are not valid UTF-8 (left out of the map).
    """
    found: dict[str, list[Path]] = {}
    undecodable = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in extensions and path.is_file() and not path.name.startswith("."):
            key = path.relative_to(folder).with_suffix("").as_posix()
            if not _utf8(key):
                undecodable.append(path)
                continue
            found.setdefault(key, []).append(path)
    problems = [f"file name not valid UTF-8: {printable(p)} (keys, manifests and MLflow need "
                "text names: rename it, e.g. `convmv -f latin1 -t utf8 -r --notest <folder>`)"
                for p in undecodable]
    problems += [
        f"duplicate stem {key!r}: {', '.join(str(p) for p in paths)} (keep exactly one file per name)"
        for key, paths in found.items()
        if len(paths) > 1
    ]
    return {key: paths[0] for key, paths in found.items()}, problems


def _utf8(text: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python keeps them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str | Path) -> str:
    """``path`` with bytes that are not UTF-8 shown as ``\\xe9``, safe to print and log."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def scan_split(split_dir: str | Path) -> tuple[list[Pair], list[str]]:
    """Pair the files of one split folder without raising.

    Returns ``(pairs, problems)``: pairs sorted by key; problems (missing folders, missing partners,
    duplicate stems, empty split) as human-readable lines naming the files and the fix.
    """
    split_dir = Path(split_dir)
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    problems = [f"missing folder {d} (expected <root>/<split>/images and <root>/<split>/masks)"
                for d in (image_dir, mask_dir) if not d.is_dir()]
    if problems:
        return [], problems
    images, dup_i = _index(image_dir, IMAGE_EXTENSIONS)
    masks, dup_m = _index(mask_dir, MASK_EXTENSIONS)
    problems += dup_i + dup_m
    lossy, _ = _index(mask_dir, tuple(e for e in IMAGE_EXTENSIONS if e not in MASK_EXTENSIONS))
    problems += [f"mask {path} is not a PNG: lossy JPEG changes class ids; save masks as .png"
                 for path in lossy.values()]
    for key in sorted(images.keys() - masks.keys()):
        problems.append(f"image without mask: {images[key]} (expected {mask_dir / key}.png)")
    for key in sorted(masks.keys() - images.keys()):
        problems.append(f"mask without image: {masks[key]} (expected {image_dir / key}.png/.jpg/.jpeg)")
    pairs = [Pair(key, images[key], masks[key]) for key in sorted(images.keys() & masks.keys())]
    if not images and not masks:
        problems.append(f"empty split {split_dir}: no images ({'/'.join(IMAGE_EXTENSIONS)}) "
                        f"in {image_dir} and no .png masks in {mask_dir}")
    return pairs, problems


def find_pairs(split_dir: str | Path) -> list[Pair]:
    """The image/mask pairs of one split (``<root>/train`` or ``<root>/test``), sorted by key.

    Raises:
        DatasetError: listing every pairing problem of the split at once.
    """
    pairs, problems = scan_split(split_dir)
    if problems:
        raise DatasetError(problems, root=split_dir)
    return pairs
