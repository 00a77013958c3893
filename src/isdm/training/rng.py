"""Random-number state for exact resumption.

Training randomness is a pure function of ``(seed, epoch, rank)``: at the start of every epoch the
data order, the noise/timestep generator and the global python/numpy/torch generators (used by
augmentation and dropout) are reseeded from :func:`derive_seed`. A run resumed at an epoch boundary
therefore replays exactly what the uninterrupted run did. The generator states are also stored in
the checkpoint (:func:`capture` / :func:`restore`) so the file alone says where the run stood.
States are kept as tensors, ints and lists so that ``torch.load(weights_only=True)`` reads them.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["derive_seed", "seed_epoch", "capture", "restore"]


def derive_seed(seed: int, *parts: int) -> int:
    """A well-mixed 63-bit seed from ``seed`` and integer ``parts`` (epoch, rank, stream)."""
    state = np.random.SeedSequence([int(seed) % 2**63, *(int(p) for p in parts)]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) % 2**63)


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Reseed the global generators for ``epoch`` and return the step generator (CPU) that draws
    timesteps, noise and label drops for this epoch on this rank."""
    s = derive_seed(seed, epoch, rank, 0)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(derive_seed(seed, epoch, rank, 1))


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
