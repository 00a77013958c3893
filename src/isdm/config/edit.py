"""Write values into a params.yaml, keeping its comments: ``isdm config apply OVERLAY`` and
``isdm tune --apply`` (the best knobs of a study) share this code.

A minimal text edit, line by line: for each dotted key (``sample.s``,
``sample.balance.enabled``), the line ``key: <value>  # comment`` at its place in the nesting
gets the new value, and a comment keeps its column where the new value leaves room; a key the
file does not hold yet is added at the end of its section (a section it lacks, at the end of
the file). Everything else (comments, order, blank lines, other values) is kept byte for byte.
The result must mean exactly the file with the values as an overlay (the same resolved config
as ``-c FILE -c OVERLAY``); only then is the file written, atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from isdm.errors import ConfigError

__all__ = ["apply_values", "edit_text"]

_LINE = r"^(?P<indent>[ ]*){key}:(?P<gap>[ ]*)(?P<value>[^#\s](?:[^#]*[^#\s])?)?(?P<tail>[ ]+#.*)?$"


def _scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**6).splitlines()[0] \
        .removesuffix(" ...")


def _content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


class _Block:
    """Lines ``[first, end)`` of a mapping whose keys are indented by ``indent``."""

    def __init__(self, lines: list[str], first: int, end: int, indent: int) -> None:
        self.lines, self.first, self.end, self.indent = lines, first, end, indent

    def find(self, key: str) -> tuple[int, re.Match] | None:
        """``(line index, match)`` of ``key: ...`` among the block's keys."""
        pattern = re.compile(_LINE.format(key=re.escape(key)))
        for i in range(self.first, self.end):
            m = pattern.match(self.lines[i].rstrip("\r\n"))
            if m and len(m["indent"]) == self.indent:
                return i, m
        return None

    def insert_at(self) -> int:
        """After the block's last line that belongs to it (content, or a comment indented as
        deep as its keys), else right at its start."""
        last = self.first - 1
        for i in range(self.first, self.end):
            line = self.lines[i]
            if line.strip() and _indent(line) >= self.indent and (self.indent or _content(line)):
                last = i
        return last + 1


def _child_block(lines: list[str], header: int) -> _Block:
    """The block under the mapping key on line ``header``."""
    own = _indent(lines[header])
    end = next((i for i in range(header + 1, len(lines))
                if _content(lines[i]) and _indent(lines[i]) <= own), len(lines))
    children = [_indent(lines[i]) for i in range(header + 1, end) if _content(lines[i])]
    return _Block(lines, header + 1, end, children[0] if children else own + 2)


def _set(lines: list[str], parts: list[str], value: Any, where: str) -> None:
    block = _Block(lines, 0, len(lines), 0)
    for depth, part in enumerate(parts):
        found = block.find(part)
        last = depth == len(parts) - 1
        if found is None:  # add the key (and the sections it needs) at the end of its block
            at = block.insert_at()
            pad = " " * block.indent
            if last:
                lines.insert(at, f"{pad}{part}: {_scalar(value)}\n")
                return
            if block.indent == 0 and at > 0 and lines[at - 1].strip():
                lines.insert(at, "\n")  # a new top-level section after a blank line
                at += 1
            lines.insert(at, f"{pad}{part}:\n")
            block = _Block(lines, at + 1, at + 1, block.indent + 2)
            continue
        at, m = found
        body = lines[at].rstrip("\r\n")
        ending = lines[at][len(body):]
        if last:
            lines[at] = _replace(m, part, body, _scalar(value)) + ending
            return
        if m["value"] == "{}":  # an empty section written `name: {}`
            lines[at] = _replace(m, part, body, "") + ending
        elif m["value"] is not None:
            raise ConfigError(f"{where}: {'.'.join(parts[:depth + 1])} holds a value, not keys")
        block = _child_block(lines, at)


def _replace(m: re.Match, key: str, body: str, new: str) -> str:
    """The line ``body`` (matched by ``_LINE``) with the value ``new``."""
    head = f"{m['indent']}{key}:{(m['gap'] or ' ') if new else ''}{new}"
    tail = m["tail"] or ""
    if tail:
        column = len(body) - len(tail.lstrip(" "))  # where the comment started
        tail = " " * max(1, column - len(head)) + tail.lstrip(" ")
    return head + tail


def edit_text(text: str, values: Mapping[str, Any], where: str = "params.yaml") -> str:
    """``text`` with each dotted key of ``values`` set (see the module docstring)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    for dotted, value in values.items():
        _set(lines, dotted.split("."), value, where)
    return "".join(lines)


def apply_values(params_file: str | Path, values: Mapping[str, Any],
                 source: str = "overlay") -> list[str]:
    """Write the dotted ``values`` into ``params_file``; returns ``["sample.s: 1.5 -> 2.1",
    ...]`` (the resolved value before -> after).

    Raises:
        ConfigError: an invalid value, a key it cannot place, or an edit that would not mean
            exactly the file plus ``values`` (the file is left unchanged).
    """
    import json
    import tempfile

    from isdm.config.layers import nest, resolve
    from isdm.config.tree import flatten, to_dict
    from isdm.utils.io import atomic_write_text

    path = Path(params_file)
    before = resolve([path]).config
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "overlay.json"
        overlay.write_text(json.dumps(nest(values, source)))
        try:
            wanted = resolve([path, overlay]).config
        except ConfigError as e:
            raise ConfigError(str(e).replace(str(overlay), source)) from None
        text = edit_text(path.read_text(), values, str(path))
        probe = Path(tmp) / path.name
        probe.write_text(text)
        try:
            after = resolve([probe]).config
        except ConfigError as e:
            raise ConfigError(f"{path}: the edited file would not load ({e}); {path} is "
                              "unchanged: set the values by hand") from None
    if to_dict(after) != to_dict(wanted):
        got, want = flatten(after), flatten(wanted)
        wrong = [k for k in want if got[k] != want[k]]
        raise ConfigError(f"{path}: the edited file would not mean {path} + {source} (differs in "
                          f"{wrong}); {path} is unchanged: set them by hand")
    atomic_write_text(path, text)
    old, new = flatten(before), flatten(after)
    return [f"{k}: {_scalar(old.get(k))} -> {_scalar(new.get(k))}" for k in values]
