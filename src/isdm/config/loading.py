"""``load_config``: files -> (original ISDM mapping) -> ``--set`` overrides -> validated tree
(the layering itself: :mod:`isdm.config.layers`)."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Mapping, Sequence

from isdm.config.files import parse_yaml
from isdm.config.tree import SECTIONS, Config
from isdm.errors import ConfigError

__all__ = ["load_config", "apply_overrides", "is_sectioned"]


def _section_like(key: str, value: Any) -> bool:
    """A section name, a near-miss of one (``trian``), or a mapping under another key than
    ``balance_args`` (the only mapping of the original's flat configs)."""
    return (key in SECTIONS or bool(difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.8))
            or isinstance(value, Mapping) and key != "balance_args")


def is_sectioned(data: Mapping[str, Any]) -> bool:
    """True for params.yaml-style trees, False for the original tool's flat configs.

    Decided by the file's shape, so that a misspelt section name (``trian:``) is reported as
    such: a tree has a known section name or mostly section-like keys (see
    :func:`_section_like`); the original's flat configs are scalar keys plus ``balance_args``.
    An empty file is an (empty) tree: the built-in defaults.
    """
    if not data or any(str(k).split(".")[0] in SECTIONS for k in data):  # also sample.s: 2
        return True
    return 2 * sum(_section_like(str(k), v) for k, v in data.items()) > len(data)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (value parsed as YAML) to a nested dict, in place.
    A key given twice takes the later value: that is what an override is for."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=1e-4")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        if "." not in dotted:
            raise ConfigError(
                f"--set {item!r}: use a dotted key section.key (sections: "
                f"{', '.join(f.name for f in dataclasses.fields(Config))})"
            )
        try:
            value = parse_yaml(raw)
        except ConfigError as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
        _set_dotted(tree, dotted, value)
    return tree


def load_config(
    path: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    action: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load a config strictly: the defaults, then each file, then ``env``, then ``overrides``.

    Args:
        path: one file or several (base first, then overlays, deep-merged in order; see
            :mod:`isdm.config.layers`), or None for the built-in defaults. A file is
            ``params.yaml``-style YAML/JSON with sections, or an original ISDM flat JSON
            config (``config_train.json`` / ``config_finetune.json`` / ``config_sample.json``);
            which of the two: :func:`is_sectioned`.
        overrides: ``section.key=value`` strings applied last.
        action: ``train`` / ``finetune`` / ``sample``: tells the legacy mapper where flat keys
            such as ``batch_size`` or ``drop_rate`` belong. Ignored for sectioned files.
        env: environment variables of :data:`isdm.config.layers.ENV_VARS` to read (the CLI
            passes ``os.environ``); None = none.

    Raises:
        ConfigError: naming the file (or ``--set`` / ``env NAME``), the dotted key, the value
            and the valid range; for an original config's keys that change results but are not
            reproduced, a warning on the ``isdm.config`` logger instead
            (:mod:`isdm.config.legacy`).
    """
    from isdm.config.layers import resolve

    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    return resolve(paths, overrides, action=action, env=env).config
