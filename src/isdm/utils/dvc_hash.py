"""The hashes DVC 3 writes into ``dvc.lock``, so MLflow tags and dataset digests can be matched
with DVC's outputs.

- a file: the MD5 of its bytes (``md5: 3f...``);
- a folder: the MD5 of the JSON listing ``[{"md5": <file md5>, "relpath": "<a/b.png>"}, ...]``
  (sorted by path, ``json.dumps(..., sort_keys=True)``) followed by ``.dir``.

Symbolic links are followed, as DVC does; ``.dvcignore`` patterns are not applied (isdm's data
folders hold none of the ignored files).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from isdm.utils.io import file_hexdigest

__all__ = ["md5_file", "md5_folder"]


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file's bytes: DVC's hash of a file output."""
    return file_hexdigest(path, "md5", chunk)


def md5_folder(path: str | Path) -> str:
    """DVC's hash of a folder output: ``<md5 of the sorted listing>.dir``."""
    from isdm.utils.ownership import is_lock

    root = Path(path)
    entries = []
    for folder, _, files in os.walk(root, followlinks=True):
        for name in files:
            if is_lock(name):  # an output's lock: in .dvcignore, no part of DVC's hash
                continue
            file = Path(folder) / name
            entries.append({"md5": md5_file(file), "relpath": file.relative_to(root).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"
