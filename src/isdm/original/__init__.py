"""Compatibility with the original ISDM tool (SDM on guided-diffusion), all in one package.

    configs     its flat JSON configs mapped onto isdm's config tree (:func:`config_tree`,
                :func:`load_original_config`); :mod:`isdm.config` reads them only through
                this package (``flat=``)
    commands    the checkpoint paths such a config names, as the CLI uses them
                (``resume_checkpoint`` -> ``--resume`` / ``--init``, ``model_path`` ->
                ``--checkpoint``)
    keys        its state-dict layout mapped onto :class:`isdm.models.SDMUNet`
    checkpoint  ``isdm import-checkpoint``: its ``model*.pt`` / ``ema_*.pt`` as an isdm checkpoint
    reference   its configuration and measured speed, the benchmarks' like-for-like reference

It depends on config, models and training; only the CLI and the benchmarks import it.
``import isdm.original`` does not import torch (``import_original`` loads it on first use).
"""

from __future__ import annotations

from typing import Any

from isdm.original.configs import checkpoint_paths, config_tree, load_original_config

__all__ = ["config_tree", "checkpoint_paths", "load_original_config", "import_original"]


def __getattr__(name: str) -> Any:
    # Lazy: the importer needs torch, the config mapping does not.
    if name == "import_original":
        from isdm.original.checkpoint import import_original

        return import_original
    raise AttributeError(f"module 'isdm.original' has no attribute {name!r}")
