"""``isdm tune --apply``: write the best knobs into a params.yaml, keeping its comments.

A minimal text edit, line by line: for each dotted key ``section.key`` of ``best_params.yaml``,
the line ``  key: <value>  # comment`` that is a direct child of the top-level ``section:``
gets the new value; everything else (comments, order, blank lines, other values) is kept
byte for byte, and a comment keeps its column where the new value leaves room. The result is
reloaded with :func:`isdm.config.load_config` and must hold exactly the new values; the file
is written atomically only then.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from isdm.errors import TuningError

__all__ = ["apply_params", "edit_params_text", "read_best_params"]

_CHILD = r"^(?P<indent>[ ]+){key}:(?P<gap>[ ]*)(?P<value>[^#\s](?:[^#]*[^#\s])?)?(?P<tail>[ ]+#.*)?$"


def read_best_params(path: str | Path) -> dict[str, Any]:
    """The dotted keys of a ``best_params.yaml``.

    Raises:
        TuningError: the file is missing or holds no mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise TuningError(f"{path} does not exist: run `isdm tune` with this --out first (it "
                          "writes best_params.yaml once a trial completed)")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict) or not params:
        raise TuningError(f"{path}: expected `section.key: value` lines, found {params!r}")
    return params


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).splitlines()[0].removesuffix(" ...")


def _section_span(lines: list[str], section: str) -> tuple[int, int]:
    """``(first, end)`` line indices of the block under the top-level ``section:``."""
    start = next((i for i, line in enumerate(lines) if re.match(rf"^{re.escape(section)}:", line)),
                 None)
    if start is None:
        raise KeyError(section)
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip() and not lines[i].startswith((" ", "#"))), len(lines))
    return start + 1, end


def edit_params_text(text: str, params: Mapping[str, Any], where: str = "params.yaml") -> str:
    """``text`` with the value of each dotted key of ``params`` replaced (see module docstring).

    Raises:
        TuningError: a key whose section or line is not in ``text`` (or is not a plain
            ``key: value`` line).
    """
    lines = text.splitlines(keepends=True)
    for dotted, value in params.items():
        section, _, key = dotted.partition(".")
        try:
            first, end = _section_span(lines, section)
        except KeyError:
            raise TuningError(f"{where}: no top-level `{section}:` section for {dotted}; add "
                              f"`{dotted}` to it, or apply with --set {dotted}={value}") from None
        block = [i for i in range(first, end) if lines[i].strip() and not lines[i].lstrip().startswith("#")]
        child = min((len(lines[i]) - len(lines[i].lstrip(" ")) for i in block), default=0)
        pattern = re.compile(_CHILD.format(key=re.escape(key)))
        for i in block:
            body = lines[i].rstrip("\r\n")
            m = pattern.match(body)
            if m and len(m["indent"]) == child:
                lines[i] = _replace(m, key, body, _scalar(value)) + lines[i][len(body):]
                break
        else:
            raise TuningError(f"{where}: no line `{key}: <value>` under `{section}:` for "
                              f"{dotted}; add it, or apply with --set {dotted}={value}")
    return "".join(lines)


def _replace(m: re.Match, key: str, body: str, new: str) -> str:
    """The line ``body`` (matched by ``_CHILD``) with the value ``new``."""
    head = f"{m['indent']}{key}:{m['gap'] or ' '}{new}"
    tail = m["tail"] or ""
    if tail:
        column = len(body) - len(tail.lstrip(" "))  # where the comment started
        tail = " " * max(1, column - len(head)) + tail.lstrip(" ")
    return head + tail


def apply_params(params_file: str | Path, params: Mapping[str, Any]) -> list[str]:
    """Write ``params`` into ``params_file``; returns ``["sample.s: 1.5 -> 2.1", ...]``.

    Raises:
        TuningError: a key it cannot place, or a result that does not reload with the new values.
    """
    import tempfile

    from isdm.config import flatten, load_config
    from isdm.utils.io import atomic_write_text

    path = Path(params_file)
    before = flatten(load_config(path))
    text = edit_params_text(path.read_text(), params, str(path))
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / path.name
        probe.write_text(text)
        after = flatten(load_config(probe))
    wrong = [k for k, v in params.items() if after.get(k) != v]
    others = [k for k in before if k not in params and before[k] != after.get(k)]
    if wrong or others:
        raise TuningError(f"{path}: the edited file would not hold exactly the best knobs (wrong: "
                          f"{wrong}, changed besides: {others}); {path} is unchanged: apply them "
                          "by hand or with dvc exp run -S")
    atomic_write_text(path, text)
    return [f"{k}: {before.get(k)} -> {v}" for k, v in params.items()]
