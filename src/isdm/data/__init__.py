"""Folder datasets, mask semantics, transforms, validation and the embedded synthetic dataset.

Modules (import the one you need; nothing heavy is imported here):

- :mod:`isdm.data.layout`: ``<root>/{train,test}/{images,masks}`` pairing, :class:`DatasetError`.
- :mod:`isdm.data.masks`: THE home of mask decoding, one-hot, null label, label drop, palette.
- :mod:`isdm.data.transforms`: load + resize (bicubic images, nearest masks), joint flip.
- :mod:`isdm.data.dataset`: :class:`SegmentationFolder` (torch Dataset), :func:`split_keys`.
- :mod:`isdm.data.validate`: :func:`validate_dataset` (all problems at once) + statistics.
- :mod:`isdm.data.check`: the report printed by ``isdm data check``.
- :mod:`isdm.data.synth`: the procedural dataset written by ``isdm data synth``.
"""

from isdm.data.layout import DatasetError, Pair, find_pairs

__all__ = ["DatasetError", "Pair", "find_pairs"]
