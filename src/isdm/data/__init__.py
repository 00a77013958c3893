"""Folder datasets, mask semantics, transforms, validation and the embedded synthetic dataset.

Modules (import the one you need; ``import isdm.data`` itself does not import torch):

- :mod:`isdm.data.layout`: ``<root>/{train,test}/{images,masks}`` pairing, :class:`DatasetError`.
- :mod:`isdm.data.masks`: THE home of mask decoding, one-hot, null label, label drop, palette.
- :mod:`isdm.data.transforms`: load + resize / pad / scale (bicubic images, nearest masks), flip.
- :mod:`isdm.data.crops`: seeded defect-centred random crops, the sliding-window grid.
- :mod:`isdm.data.dataset`: :class:`SegmentationFolder` (torch Dataset), :func:`split_keys`.
- :mod:`isdm.data.validate`: :func:`validate_dataset` (all problems at once) + statistics.
- :mod:`isdm.data.check`: the report printed by ``isdm data check``; :mod:`isdm.data.advice`
  its geometry advice.
- :mod:`isdm.data.synth`: the procedural dataset written by ``isdm data synth``.
"""

from __future__ import annotations

from typing import Any

from isdm.data.layout import DatasetError, Pair, find_pairs

__all__ = ["DatasetError", "Pair", "find_pairs", "SegmentationFolder", "split_keys",
           "validate_dataset"]

_LAZY = {
    "SegmentationFolder": "isdm.data.dataset",
    "split_keys": "isdm.data.dataset",
    "validate_dataset": "isdm.data.validate",
}


def __getattr__(name: str) -> Any:  # lazy: torch is imported only when the Dataset is used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'isdm.data' has no attribute {name!r}")
