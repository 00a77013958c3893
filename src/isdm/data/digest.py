"""Content digests of dataset folders: what a cached result (a downstream cell, a finetune, the
curation scorer) depends on, independent of where the folder lies.

``folder_digest(folder, subdirs)`` = SHA-256 over ``<subdir>/<relative path>\\0<SHA-256 of the
file>\\n`` of every file under each of ``subdirs`` (sorted), so renaming, editing, adding or
removing a file changes it and moving the folder does not. A missing subdir counts as empty.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

__all__ = ["folder_digest", "dataset_digest", "synthetic_digest"]


def folder_digest(folder: str | Path, subdirs: Sequence[str] = ("",)) -> str:
    """Hex SHA-256 of the files under ``folder/<subdir>`` for each of ``subdirs`` (see the
    module docstring); ``("",)`` = the whole folder."""
    from isdm.utils.io import sha256_file

    h = hashlib.sha256()
    for sub in subdirs:
        base = Path(folder) / sub
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = path.relative_to(Path(folder)).as_posix()
            h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def dataset_digest(root: str | Path, split: str = "train") -> str:
    """SHA-256 over the relative path and SHA-256 of every file under ``<root>/<split>``."""
    base = Path(root) / split
    h = hashlib.sha256()
    from isdm.utils.io import sha256_file

    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(base).as_posix()}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def synthetic_digest(folder: str | Path) -> str:
    """The digest of what a segmenter trains on from a sampling or curation output: the files
    of ``samples/`` and ``labels/`` (not the manifest, card or colour previews)."""
    return folder_digest(folder, ("samples", "labels"))
