"""Training and finetuning of the SDM: epoch loop, EMA, checkpoints, DDP (see ``loop.train``).

``from isdm.training import train`` imports torch; ``isdm.training.checkpoint.load_model`` is what
sampling and tuning use to rebuild a model from a checkpoint's own config.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "TrainResult"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import isdm.training.checkpoint` does not pull in the loop's dependencies.
    if name in __all__:
        from isdm.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'isdm.training' has no attribute {name!r}")
