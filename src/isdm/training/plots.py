"""The per-epoch loss history as ``loss.csv`` (for ``dvc plots``) and ``loss.png`` (matplotlib)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from isdm.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["write_loss_csv", "loss_figure", "write_loss_png"]


def _has_val(history: Sequence[Mapping[str, Any]]) -> bool:
    return any(row.get("val_loss") is not None for row in history)


def write_loss_csv(history: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """``epoch,train_loss[,val_loss]``, one row per completed epoch (epochs count from 1)."""
    val = _has_val(history)
    lines = ["epoch,train_loss" + (",val_loss" if val else "")]
    for row in history:
        cells = [str(row["epoch"]), f"{row['train_loss']:.6g}"]
        if val:
            v = row.get("val_loss")
            cells.append("" if v is None else f"{v:.6g}")
        lines.append(",".join(cells))
    atomic_write_text(path, "\n".join(lines) + "\n")


def loss_figure(history: Sequence[Mapping[str, Any]], title: str = "SDM training loss"):
    """A matplotlib Figure of train (and val) loss per epoch; the best epoch is marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", ms=3, label="train loss")
    if _has_val(history):
        ax.plot(epochs, [row.get("val_loss", math.nan) if row.get("val_loss") is not None
                         else math.nan for row in history], marker="o", ms=3, label="val loss")
    best = [row["epoch"] for row in history if row.get("improved")]
    if best:
        ax.axvline(best[-1], color="gray", ls="--", lw=0.8, label=f"best (epoch {best[-1]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("hybrid loss (mse + vb)")
    ax.set_title(title)
    if all(row["train_loss"] > 0 for row in history):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_loss_png(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "SDM training loss") -> None:
    fig = loss_figure(history, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
