"""``load_config``: files -> ``--set`` overrides -> validated tree (the layering itself:
:mod:`isdm.config.layers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from isdm.config.layers import FlatReader, apply_overrides, is_sectioned, resolve
from isdm.config.tree import Config

__all__ = ["load_config", "apply_overrides", "is_sectioned"]


def load_config(
    path: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    action: str | None = None,
    env: Mapping[str, str] | None = None,
    flat: Optional[FlatReader] = None,
) -> Config:
    """Load a config strictly: the defaults, then each file, then ``env``, then ``overrides``.

    Args:
        path: one file or several (base first, then overlays, deep-merged in order; see
            :mod:`isdm.config.layers`), or None for the built-in defaults. A file is
            ``params.yaml``-style YAML/JSON with sections, or (with ``flat``) an original ISDM
            flat JSON config (``config_train.json`` / ``config_finetune.json`` /
            ``config_sample.json``); which of the two: :func:`is_sectioned`.
        overrides: ``section.key=value`` strings applied last.
        action: ``train`` / ``finetune`` / ``sample``: tells ``flat`` where flat keys such as
            ``batch_size`` or ``drop_rate`` belong. Ignored for sectioned files.
        env: environment variables of :data:`isdm.config.layers.ENV_VARS` to read (the CLI
            passes ``os.environ``); None = none.
        flat: the reader of original flat configs (:func:`isdm.original.configs.config_tree`;
            :func:`isdm.original.load_original_config` passes it); None = such a file is an
            error.

    Raises:
        ConfigError: naming the file (or ``--set`` / ``env NAME``), the dotted key, the value
            and the valid range.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    return resolve(paths, overrides, action=action, env=env, flat=flat).config
