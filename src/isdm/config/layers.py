"""Layered configs: the built-in defaults, then each ``-c`` file in order, then the environment,
then ``--set`` values, deep-merged into one tree; every resolved value knows which layer set it.

A layer is a nested mapping with its source (``params.yaml``, ``--set``, ``env ISDM_DEVICE``).
Each layer is checked on its own, so an error names the file that holds the mistake: unknown
keys (with the closest valid key), wrong types, nan / inf, keys written twice (also once nested
and once dotted, ``train.lr: 1`` beside ``train: {lr: 2}``). The merge is then validated as one
tree (ranges, cross-field rules); a value out of range is reported with the layer that set it.

Deep merge: mappings merge key by key; any other value (a number, a list) replaces the earlier
one. A file may write keys nested (``sample: {s: 2}``) or dotted (``sample.s: 2``, as
``best_params.yaml`` of ``isdm tune`` does). ``finetune`` inherits from ``train`` after the
merge (:func:`isdm.config.tree.finetune_tree`); ``model`` keys not given come from its preset.

A layer that names a preset (``--set model.preset=tiny``) drops the model SIZE keys of the
layers before it: switching presets is one override, whatever sizes a base file wrote; sizes
given in the same layer (or later) still must agree with the preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from isdm.config.checks import SectionError, show
from isdm.config.files import parse_yaml, read_file
from isdm.config.model import MODEL_PRESETS, SIZE_KEYS
from isdm.config.schema import FINETUNE_DEFAULTS
from isdm.config.tree import SECTIONS, Config, _upgrade_data, check_keys, flatten, from_dict
from isdm.errors import ConfigError

__all__ = ["Layer", "Resolved", "ENV_VARS", "FlatReader", "file_layer", "set_layer", "env_layer",
           "merge", "resolve", "leaves", "nest", "is_sectioned", "apply_overrides"]

#: Environment variables read by the CLI (not by library calls): how a command runs here, which
#: no pipeline stage lists. MLFLOW_TRACKING_URI is read by isdm.tracking when
#: tracking.tracking_uri is empty, as MLflow itself does.
ENV_VARS = {
    "ISDM_DEVICE": "runtime.device",
    "ISDM_NUM_WORKERS": "runtime.num_workers",
    "ISDM_PROGRESS": "runtime.progress",
    "ISDM_TRACKING": "tracking.enabled",
    "ISDM_EXPERIMENT": "tracking.experiment",
    "ISDM_REGISTER_MODEL": "tracking.register_model",
    "ISDM_SYSTEM_METRICS": "tracking.system_metrics",
}

#: Reads an original ISDM flat JSON config: ``(parsed file, action or None, source) -> nested
#: tree``. isdm.config does not know that format; the callers that accept it pass
#: :func:`isdm.original.configs.config_tree` (the CLI does).
FlatReader = Callable[[Mapping[str, Any], Optional[str], str], dict]


@dataclass(frozen=True)
class Layer:
    """One source of values: ``tree`` is a nested mapping of some config keys."""

    source: str
    tree: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """The validated config and, per dotted leaf key of it, where its value came from:
    ``default``, a file name, ``--set``, ``env ISDM_DEVICE``, ``preset tiny (<source>)`` or
    ``<source> (train.<key>)`` for a finetune key inherited from train."""

    config: Config
    sources: dict[str, str]


def _non_finite(data: Any, prefix: str = "") -> list[str]:
    """``key=value`` of every nan / inf anywhere in a parsed file, keys as the file writes them
    (also keys an original config's mapping would ignore)."""
    if isinstance(data, Mapping):
        return [x for k, v in data.items()
                for x in _non_finite(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, list):
        return [x for i, v in enumerate(data) for x in _non_finite(v, f"{prefix}[{i}]")]
    return [f"{prefix}={data}"] if isinstance(data, float) and not math.isfinite(data) else []


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


def nest(data: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """``{"sample.s": 2}`` -> ``{"sample": {"s": 2}}`` at any depth.

    Raises:
        ConfigError: a key given twice (nested and dotted), or a value where a section is.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        parts = str(key).split(".")
        node, path = out, prefix
        for part in parts[:-1]:
            path = f"{path}.{part}" if path else part
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {path} is given a value and keys")
            node = child
        last = parts[-1]
        dotted = f"{path}.{last}" if path else last
        if isinstance(value, Mapping):
            value = nest(value, source, dotted)
        if last in node:
            if isinstance(node[last], dict) and isinstance(value, dict):
                _no_overlap(node[last], value, source, dotted)
                node[last] = {**node[last], **value}
                continue
            raise ConfigError(f"{source}: {dotted} is given twice (nested and dotted); keep one")
        node[last] = value
    return out


def _no_overlap(a: dict, b: dict, source: str, prefix: str) -> None:
    for key in a.keys() & b.keys():
        dotted = f"{prefix}.{key}"
        if not (isinstance(a[key], dict) and isinstance(b[key], dict)):
            raise ConfigError(f"{source}: {dotted} is given twice (nested and dotted); keep one")
        _no_overlap(a[key], b[key], source, dotted)


def _checked(tree: dict[str, Any], source: str) -> Layer:
    """A layer after its own checks: sections written empty (``synth:``) are empty mappings,
    ``data.keep_aspect`` of older files is read as ``data.resize``."""
    tree = {k: ({} if v is None else v) for k, v in tree.items()}
    try:
        if isinstance(tree.get("data"), Mapping):
            tree["data"] = dict(_upgrade_data(tree["data"], "data"))
        check_keys(tree)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return Layer(source, tree)


def file_layer(path: str | Path, action: str | None = None,
               flat: Optional[FlatReader] = None) -> Layer:
    """A params.yaml-style YAML / JSON file, or an original ISDM flat JSON config (see
    :func:`is_sectioned`) read by ``flat`` for ``action``.

    Raises:
        ConfigError: a flat file and no ``flat`` reader (a library call, not the CLI).
    """
    data = read_file(Path(path))
    bad = _non_finite(data)
    if bad:
        raise ConfigError(f"{path}: {', '.join(bad)}: must be a finite number (not nan or inf)")
    if not is_sectioned(data):
        if flat is None:
            raise ConfigError(
                f"{path}: has no config section (train:, sample:, ...), so it reads as an "
                "original ISDM flat JSON config, which this call does not accept; pass it to an "
                "isdm command (-c) or isdm.original.load_original_config, or write its keys "
                "under their sections")
        return _checked(flat(data, action, str(path)), str(path))
    return _checked(nest(data, str(path)), str(path))


def set_layer(overrides: Sequence[str], source: str = "--set") -> Layer:
    """``section.key=value`` strings (values parsed as YAML); a later one wins."""
    return _checked(apply_overrides({}, overrides), source)


def env_layer(env: Mapping[str, str]) -> list[Layer]:
    """One layer per variable of :data:`ENV_VARS` set in ``env`` (values parsed as YAML)."""
    layers = []
    for name, dotted in ENV_VARS.items():
        if env.get(name, "") != "":
            try:
                value = parse_yaml(env[name])
            except ConfigError as e:
                raise ConfigError(f"env {name}: {e}") from None
            layers.append(set_layer([f"{dotted}={json.dumps(value)}"], f"env {name}"))
    return layers


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings key by key, anything else replaced by ``over``'s value."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a nested mapping (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        out.update(leaves(value, dotted) if isinstance(value, Mapping) else {dotted: value})
    return out


def resolve(paths: Sequence[str | Path] = (), overrides: Sequence[str] = (),
            action: str | None = None, env: Mapping[str, str] | None = None,
            flat: Optional[FlatReader] = None) -> Resolved:
    """Defaults, then the files of ``paths`` in order, then ``env`` (:data:`ENV_VARS`; None =
    none), then ``overrides``; validated strictly (see the module docstring). ``flat`` reads
    original ISDM flat configs among ``paths`` (:func:`file_layer`)."""
    layers = [file_layer(p, action, flat) for p in paths]
    layers += env_layer(env or {})
    if overrides:
        layers.append(set_layer(overrides))
    tree: dict[str, Any] = {}
    given: dict[str, str] = {}
    for layer in layers:
        _preset_resets_sizes(tree, given, layer.tree)
        tree = merge(tree, layer.tree)
        given.update(dict.fromkeys(leaves(layer.tree), layer.source))
    try:
        cfg = from_dict(Config, json.loads(json.dumps(tree)))
    except SectionError as e:
        raise ConfigError(_blame(e, given)) from None
    except ConfigError as e:
        where = ", ".join(dict.fromkeys(layer.source for layer in layers))
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    return Resolved(cfg, _sources(cfg, given))


def _preset_resets_sizes(tree: dict[str, Any], given: dict[str, str],
                        layer: Mapping[str, Any]) -> None:
    """When ``layer`` names a preset, remove from ``tree`` (the layers so far) and ``given``
    the model size keys that ``layer`` does not set itself."""
    model = layer.get("model")
    if not (isinstance(model, Mapping) and model.get("preset")
            and isinstance(tree.get("model"), Mapping)):
        return
    tree["model"] = {k: v for k, v in tree["model"].items()
                     if k not in SIZE_KEYS or k in model}
    for key in SIZE_KEYS:
        if key not in model:
            given.pop(f"model.{key}", None)


def _blame(e: SectionError, given: Mapping[str, str]) -> str:
    """The error's lines, each with the layer that set its key (once, when all share one); a
    finetune value inherited from an invalid train value is that one mistake, reported once."""
    keys = {p.key for p in e.problems}
    problems = [p for p in e.problems if not (p.key.startswith("finetune.") and p.key not in given
                                              and f"train.{p.key[9:]}" in keys)]
    lines = [(_given_source(p.key, given), f"{p.key}={show(p.value)}: {p.text}")
             for p in problems]
    where = {src for src, _ in lines}
    if len(where) == 1:
        (src,) = where
        text = lines[0][1] if len(lines) == 1 else (
            f"{len(lines)} invalid values:\n  " + "\n  ".join(t for _, t in lines))
        return f"{src}: {text}" if src else text
    body = "\n  ".join(f"{src}: {text}" if src else text for src, text in lines)
    return f"{len(lines)} invalid values:\n  {body}"


def _given_source(key: str, given: Mapping[str, str]) -> str:
    """The layer that set ``key``, or that set the train key a finetune key inherits ('' =
    none: a default)."""
    section, _, rest = key.partition(".")
    if key in given:
        return given[key]
    if section == "finetune" and rest not in FINETUNE_DEFAULTS:
        return given.get(f"train.{rest}", "")
    return ""


def _sources(cfg: Config, given: Mapping[str, str]) -> dict[str, str]:
    preset = cfg.model.preset
    out = {}
    for key in flatten(cfg):
        section, _, rest = key.partition(".")
        if key in given:
            out[key] = given[key]
        elif section == "finetune" and f"train.{rest}" in given and rest not in FINETUNE_DEFAULTS:
            out[key] = f"{given[f'train.{rest}']} (train.{rest})"
        elif section == "model" and "model.preset" in given and preset in MODEL_PRESETS:
            out[key] = f"preset {preset} ({given['model.preset']})"
        else:
            out[key] = "default"
    return out
