"""The card's pictures, drawn with matplotlib's object API (``Figure``; no pyplot state).

- ``fidelity_hist.png``: the fidelity histogram of kept and dropped pairs, the threshold marked;
- ``best_worst.png``: the best and the worst pairs by fidelity; per pair a column of generated
  image, conditioning mask, scorer prediction and curated label (ignored pixels gray);
- ``closest_pairs.png``: the synthetic images closest to a real train image, above that image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from isdm.curation.folder import Pair

__all__ = ["fidelity_hist", "best_worst", "closest_pairs"]


def _save(fig: Any, path: Path) -> None:
    from isdm.utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _colors(ids: np.ndarray) -> np.ndarray:
    from isdm.data.masks import PALETTE

    return PALETTE[ids.astype(np.int64)]


def _tile(ax: Any, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def fidelity_hist(card: dict[str, Any], path: Path) -> None:
    """Stacked bars of ``card["fidelity"]["histogram"]``, a line at ``min_fidelity``."""
    from matplotlib.figure import Figure

    hist = card["fidelity"]["histogram"]
    edges = np.asarray(hist["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges) * 0.9
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.bar(centres, hist["kept"], width, label="kept", color="tab:green")
    ax.bar(centres, hist["dropped"], width, bottom=hist["kept"], label="dropped", color="tab:red")
    ax.axvline(card["policy"]["min_fidelity"], color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("fidelity (scorer mIoU vs conditioning mask)")
    ax.set_ylabel("pairs")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def best_worst(best: Sequence[Pair], worst: Sequence[Pair], path: Path) -> None:
    """Two blocks of 4 rows (image, mask, prediction, curated label), one column per pair."""
    from matplotlib.figure import Figure

    cols = max(len(best), len(worst), 1)
    first = (list(best) + list(worst))[:1]
    aspect = first[0].label.shape[0] / first[0].label.shape[1] if first else 1.0
    fig = Figure(figsize=(1.1 * cols + 0.6, 8 * 1.1 * aspect + 1.4))
    axes = fig.subplots(8, cols, squeeze=False)
    for block, (name, pairs) in enumerate((("best", best), ("worst", worst))):
        for j in range(cols):
            column = axes[4 * block:4 * block + 4, j]
            if j >= len(pairs):
                for ax in column:
                    ax.axis("off")
                continue
            p = pairs[j]
            title = f"{name} {j + 1}: {p.fidelity:.2f}" + ("" if p.kept else "\ndropped")
            _tile(column[0], _rgb(p.sample), title)
            _tile(column[1], _colors(p.label))
            _tile(column[2], _colors(p.pred))
            _tile(column[3], _colors(p.curated))
        for row, text in enumerate(("image", "mask", "prediction", "curated")):
            axes[4 * block + row, 0].set_ylabel(text, fontsize=7)
    fig.tight_layout(pad=0.3)
    _save(fig, path)


def closest_pairs(pairs: Sequence[Pair], synthetic: dict[str, np.ndarray],
                  real: dict[str, np.ndarray], path: Path) -> None:
    """Row 1: the synthetic images closest to a real train image; row 2: that real image; both
    as the memorisation check compared them (at ``evaluate.image_size``).

    Args:
        synthetic, real: uint8 ``[H, W, 3]`` images by key.
    """
    from matplotlib.figure import Figure

    cols = max(len(pairs), 1)
    fig = Figure(figsize=(1.1 * cols + 0.6, 3.0))
    axes = fig.subplots(2, cols, squeeze=False)
    for j in range(cols):
        if j >= len(pairs):
            axes[0, j].axis("off")
            axes[1, j].axis("off")
            continue
        p = pairs[j]
        _tile(axes[0, j], synthetic[p.key], f"d={p.distance:.3f}" + (" copy" if p.near_copy else ""))
        _tile(axes[1, j], real[p.nearest], p.nearest[-14:])
    axes[0, 0].set_ylabel("synthetic", fontsize=7)
    axes[1, 0].set_ylabel("nearest real", fontsize=7)
    fig.tight_layout(pad=0.3)
    _save(fig, path)
