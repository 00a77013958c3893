"""``load_config``: file -> (original ISDM mapping) -> ``--set`` overrides -> validated tree."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from isdm.config.files import parse_yaml, read_file
from isdm.config.legacy import legacy_to_tree
from isdm.config.tree import SECTIONS, Config, from_dict
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
    if not data or any(k in SECTIONS for k in data):
        return True
    return 2 * sum(_section_like(str(k), v) for k, v in data.items()) > len(data)


def _non_finite(data: Any, prefix: str = "") -> list[str]:
    """``key=value`` of every nan / inf anywhere in a parsed file, keys as the file writes them
    (also keys an original config's mapping would ignore)."""
    if isinstance(data, Mapping):
        return [x for k, v in data.items()
                for x in _non_finite(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, list):
        return [x for i, v in enumerate(data) for x in _non_finite(v, f"{prefix}[{i}]")]
    return [f"{prefix}={data}"] if isinstance(data, float) and not math.isfinite(data) else []


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
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    action: str | None = None,
) -> Config:
    """Load a config strictly.

    Args:
        path: ``params.yaml``-style YAML/JSON with sections, or an original ISDM flat JSON
            config (``config_train.json`` / ``config_finetune.json`` / ``config_sample.json``),
            or None for the built-in defaults. Which of the two a file is: :func:`is_sectioned`.
        overrides: ``section.key=value`` strings applied last.
        action: ``train`` / ``finetune`` / ``sample``: tells the legacy mapper where flat keys
            such as ``batch_size`` or ``drop_rate`` belong. Ignored for sectioned files.

    Raises:
        ConfigError: naming the file, the dotted key, the value and the valid range; for an
            original config's keys that change results but are not reproduced, a warning on
            the ``isdm.config`` logger instead (:mod:`isdm.config.legacy`).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        data = read_file(Path(path))
        bad = _non_finite(data)
        if bad:
            raise ConfigError(f"{path}: {', '.join(bad)}: must be a finite number (not nan or inf)")
        tree = data if is_sectioned(data) else legacy_to_tree(data, action=action, source=str(path))
    tree = apply_overrides(json.loads(json.dumps(tree)), overrides)
    try:
        return from_dict(Config, tree)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None
