"""The original ISDM configs' mapping now lives in :mod:`isdm.config.legacy`; this name stays
importable for the callers that still use it (``isdm.cli.sample``)."""

from isdm.config.legacy import IGNORED, KNOWN_KEYS, legacy_paths, legacy_to_tree

__all__ = ["legacy_to_tree", "legacy_paths", "IGNORED", "KNOWN_KEYS"]
