"""Random-number state for exact resumption.

Training randomness is a pure function of ``(seed, epoch, rank)``: at the start of every epoch the
data order, the noise/timestep generator and the global python/numpy/torch generators (used by
augmentation and dropout) are reseeded from the streams ``TRAIN_GLOBAL`` and ``TRAIN_STEPS`` of
:mod:`isdm.seeds`. A run resumed at an epoch boundary
therefore replays exactly what the uninterrupted run did. The generator states are also stored in
the checkpoint (:func:`capture` / :func:`restore`) so the file alone says where the run stood.
States are kept as tensors, ints and lists so that ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from isdm.seeds import Stream, derive

__all__ = ["seed_epoch", "capture", "restore"]


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Reseed the global generators for ``epoch`` and return the step generator (CPU) that draws
    timesteps, noise and label drops for this epoch on this rank."""
    s = derive(Stream.TRAIN_GLOBAL, seed, epoch, rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(derive(Stream.TRAIN_STEPS, seed, epoch, rank))


def capture() -> dict[str, Any]:
    """The current python / numpy / torch-cpu / cuda generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture` (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
