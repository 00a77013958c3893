"""Reading and writing config files: strict YAML / JSON parsing and atomic saving.

Strict means a key written twice in one mapping is an error: YAML and JSON parsers keep the last
value silently, so ``lr`` given twice would train with whichever came last. (YAML merge keys,
``<<: *base``, may still be overridden: that is what they are for.)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from isdm.config.tree import to_dict
from isdm.errors import ConfigError

__all__ = ["parse_yaml", "read_file", "save_config"]


@functools.lru_cache(maxsize=None)
def _strict_loader() -> type:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses a key repeated within one mapping."""

    def construct_mapping(loader: StrictLoader, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first is not None:
                raise ConfigError(f"line {line}: duplicate key {key!r} (first given at line "
                                  f"{first}); keep one of them")
            seen[key] = line
        return loader.construct_mapping(node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def parse_yaml(text: str) -> Any:
    """Parse YAML (also a single ``--set`` value) with the safe loader, refusing repeated keys."""
    import yaml

    return yaml.load(text.strip(), Loader=_strict_loader())


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"duplicate key {repeated[0]!r} in one object; keep one of them")
    return dict(pairs)


def read_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON (by suffix) config file."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = _read_text(path)
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_json_object)
        else:
            data = parse_yaml(text)
    except ConfigError as e:
        raise ConfigError(f"config file {path}, {e}") from None
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"config file {path}: cannot parse: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); ConfigError when it cannot be
    read or is not text."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}): a config is a YAML or JSON text file, e.g. params.yaml or "
            "configs/tiny.yaml. Was a binary, compressed or UTF-16 file given to -c?") from None
    if "\x00" in text:
        raise ConfigError(f"config file {path} holds NUL bytes: it is not a text file; give a "
                          "YAML or JSON config to -c")
    return text


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON or YAML (by suffix), atomically."""
    import yaml

    from isdm.utils.io import atomic_write_text

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    else:
        text = json.dumps(to_dict(cfg), indent=2) + "\n"
    atomic_write_text(path, text)
