"""Nested, seeded subsets of a dataset's train split: the points of the label-efficiency curve.

``isdm data subset SRC OUT --fraction f --seed s`` writes ``OUT/train`` with ``n = round(f N)``
of the ``N`` train pairs of ``SRC`` and ``OUT/test`` with EVERY test pair, so that whatever runs
on ``OUT`` (an SDM's training, finetuning and sampling, evaluate's validation split, curate's
scorer) sees only the labels of the subset, and every point of the curve is tested on the same
full test split. The pairs are copied with their relative paths (their keys) unchanged.

The subset is the first ``n`` keys of ONE seeded permutation of the sorted train keys
(:data:`isdm.seeds.Stream.LABEL_SUBSET` of ``seed``, drawn as the mixes' subsets are),
so for one seed the subsets are nested: the 25 % subset lies inside the 50 % one, which lies
inside the whole split; adding labels only adds images. At ``f = 1`` the copy holds every train
file, so its digest (:func:`isdm.data.digest.dataset_digest`) is the source's and its real-only
cells are the source's in the cell store.

``OUT/subset.json`` records the source, the fraction, the seed and the chosen keys. The folder is
written next to ``OUT`` and renamed into place whole; an existing ``OUT`` is replaced only when
it holds an earlier subset and nothing else (:mod:`isdm.utils.ownership`: its record, or for an
older one ``subset.json``; another file is refused by name).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

from isdm.errors import DatasetError

__all__ = ["subset_size", "subset_keys", "write_subset", "MANIFEST"]

MANIFEST = "subset.json"


def subset_size(fraction: float, n: int) -> int:
    """``round(fraction * n)`` images, at least 2 (a validation image and a training one).

    Raises:
        DatasetError: a fraction outside (0, 1] or one that leaves fewer than 2 images.
    """
    if not 0 < fraction <= 1:
        raise DatasetError([f"--fraction {fraction}: must be in (0, 1]"])
    size = round(fraction * n)
    if size < 2:
        raise DatasetError([f"--fraction {fraction} of {n} train pairs leaves {size}; a point of "
                            "the curve needs at least 2 (a validation and a training image): "
                            "raise the fraction"])
    return size


def subset_keys(keys: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The keys of the ``fraction`` subset for ``seed``, sorted (see the module docstring)."""
    from isdm.seeds import Stream, generator

    pool = sorted(keys)
    order = generator(Stream.LABEL_SUBSET, seed).permutation(len(pool))
    return sorted(pool[i] for i in order[:subset_size(fraction, len(pool))])


def _copy_pairs(pairs: Sequence[Any], src_split: Path, dest_split: Path) -> None:
    for pair in pairs:
        for path, sub in ((pair.image, "images"), (pair.mask, "masks")):
            target = dest_split / sub / path.relative_to(src_split / sub)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def write_subset(src: str | Path, out: str | Path, fraction: float, seed: int) -> dict[str, Any]:
    """Write the ``fraction`` subset of ``src``'s train split (and its whole test split) to
    ``out``; returns the manifest (``source``, ``fraction``, ``seed``, ``n``, ``n_source``,
    ``n_test``, ``keys``).

    Raises:
        DatasetError: pairing problems of ``src`` or a bad fraction.
        OutputExistsError: ``out`` holds files that are not an earlier subset's.
    """
    import json

    from isdm.data.layout import find_pairs

    from isdm.utils import ownership

    src, out = Path(src), Path(out)
    ownership.claim(out, "data subset", legacy=_legacy, option="OUT")  # nothing foreign in OUT
    train, test = find_pairs(src / "train"), find_pairs(src / "test")
    keys = subset_keys([p.key for p in train], fraction, seed)
    chosen = set(keys)
    manifest = {"source": str(src), "fraction": float(fraction), "seed": int(seed),
                "n": len(keys), "n_source": len(train), "n_test": len(test), "keys": keys}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _copy_pairs([p for p in train if p.key in chosen], src / "train", tmp / "train")
    _copy_pairs(test, src / "test", tmp / "test")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    ownership.publish(tmp, out, "data subset", legacy=_legacy)
    return manifest


def _legacy(out: Path) -> list[str]:
    """An earlier subset without an ownership record: its ``subset.json`` and the copied
    split folders."""
    return [MANIFEST, "train/", "test/"] if (out / MANIFEST).is_file() else []
