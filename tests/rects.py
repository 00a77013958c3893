"""Rectangular image/mask pairs for the geometry and crop tests (the ``rect_dir`` fixture).

A module of its own, not conftest: two conftest.py files (tests/ and tests/services/) make
``from conftest import ...`` ambiguous."""

from __future__ import annotations

from pathlib import Path

RECT_HW = (48, 72)  # rect_dir's native size (rectangular)


def write_rect_pairs(root: Path, split: str, n: int, seed: int, size=RECT_HW) -> None:
    """``n`` pairs of random rectangles of classes 1 and 2 on noise into ``root/split``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    h, w = size
    for i in range(n):
        ids = np.zeros((h, w), dtype=np.uint8)
        for c in (1, 2):  # one rectangle of each defect class
            top, left = rng.integers(0, h - 6), rng.integers(0, w - 6)
            ids[top:top + rng.integers(3, 7), left:left + rng.integers(3, 7)] = c
        rgb = rng.integers(0, 60, (h, w, 3)).astype(np.uint8) + (ids * 90)[..., None]
        Image.fromarray(rgb).save(root / split / "images" / f"{i:03d}.png")
        Image.fromarray(ids).save(root / split / "masks" / f"{i:03d}.png")
