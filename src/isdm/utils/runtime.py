"""Device choice and seeding. Nothing here runs at import time."""

from __future__ import annotations

import random

__all__ = ["resolve_device", "seed_everything"]


def resolve_device(name: str = "auto"):
    """``auto`` -> cuda when available else cpu; otherwise ``torch.device(name)``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
