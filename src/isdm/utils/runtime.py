"""Device choice. Nothing here runs at import time."""

from __future__ import annotations

from isdm.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str = "auto"):
    """``auto`` -> cuda when available else cpu; otherwise ``torch.device(name)``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev

