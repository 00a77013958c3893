"""Mixed precision for a network's forward pass, the same for training and sampling.

``precision``: ``fp32`` (no autocast), ``bf16`` or ``fp16`` autocast on the tensors' device. Only
the network runs under it; callers cast its output to float32 before any diffusion math.
Nothing here imports torch at import time.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["PRECISIONS", "autocast"]

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(precision: str, device: Any) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a ``torch.device``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision={precision!r}: use one of {list(PRECISIONS)}")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])
