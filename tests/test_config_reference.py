"""The generated configuration reference (isdm.config.reference): every key of the tree with
its type, default and valid values, on a tiny tree written out exactly and on the real one."""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from isdm.config import Config, flatten
from isdm.config.checks import PROBABILITY, Section, at_least, type_hints
from isdm.config.reference import docstring_markdown, render_reference, value_text


@dataclass(frozen=True)
class _Inner(Section):
    """Inner knobs."""

    SECTION = "outer.inner"
    RULES = {"p": (PROBABILITY,)}

    p: float = 0.5


@dataclass(frozen=True)
class _Outer(Section):
    """Outer section, with ``x``.

    Example::

        a: 1
    """

    SECTION = "outer"
    RULES = {"n": (at_least(1),)}

    n: int = 3
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    name: Optional[str] = None
    inner: _Inner = field(default_factory=_Inner)


@dataclass(frozen=True)
class _Root(Section):
    """A tiny tree."""

    outer: _Outer = field(default_factory=_Outer)
    again: _Outer = field(default_factory=lambda: _Outer(n=5))


def test_tiny_tree_is_rendered_exactly():
    page = render_reference(_Root)
    assert "(10 keys in 4 sections)" in page
    expected = """| section | what it holds |
|---|---|
| [`outer`](#outer) | Outer section, with `x`. |
| [`outer.inner`](#outerinner) | Inner knobs. |
| [`again`](#again) | Outer section, with `x`. |
| [`again.inner`](#againinner) | Inner knobs. |

## outer

Outer section, with `x`.

Example:

```
a: 1
```

| key | type | default | valid values |
|---|---|---|---|
| `outer.n` | int | `3` | must be >= 1 |
| `outer.mode` | str | `a` | one of `a`, `b` |
| `outer.sizes` | list of int | `[1, 2]` | - |
| `outer.name` | str or null | `null` | - |

### outer.inner

Inner knobs.

| key | type | default | valid values |
|---|---|---|---|
| `outer.inner.p` | float | `0.5` | must be in [0, 1] |

## again

The same keys as [`outer`](#outer) (`_Outer`); the defaults below are this section's.

| key | type | default | valid values |
|---|---|---|---|
| `again.n` | int | `5` | must be >= 1 |
| `again.mode` | str | `a` | one of `a`, `b` |
| `again.sizes` | list of int | `[1, 2]` | - |
| `again.name` | str or null | `null` | - |
"""
    assert expected in page


def test_docstring_markdown():
    doc = """Title with ``code`` and :class:`~isdm.config.Config`, a <tag> and a * b.

    Tree::

        Config
          data
    After."""
    assert docstring_markdown(doc) == (
        "Title with `code` and `isdm.config.Config`, a &lt;tag> and a \\* b.\n\nTree:\n\n"
        "```\nConfig\n  data\n```\n\nAfter.")
    assert docstring_markdown(None) == ""


def test_value_text_is_yaml():
    assert [value_text(v) for v in (None, True, "", "x", (0.1, 2), 3e-4)] == [
        "null", "true", "''", "x", "[0.1, 2]", "0.0003"]


def _rows(page: str) -> dict[str, tuple[str, str, str]]:
    row = r"(?m)^\| `([a-z_0-9]+\.[a-z_.0-9]+)` \| ([^|]+) \| `([^`]*)` \| (.+) \|$"
    rows = re.findall(row, page)
    return {key: (tp, default, valid) for key, tp, default, valid in rows}


def _sections(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            name = f"{prefix}.{f.name}" if prefix else f.name
            yield name, tp
            yield from _sections(tp, name)


def test_every_key_of_the_real_tree_with_its_default_and_rules():
    page = render_reference()
    rows = _rows(page)
    flat = flatten(Config())
    assert set(rows) == set(flat)  # every key, and nothing else
    assert f"({len(flat)} keys in " in page
    for key, value in flat.items():
        assert rows[key][1] == value_text(value).replace("|", "/"), key
    n_rules = 0
    for name, cls in _sections(Config):
        for field_name, rules in cls.RULES.items():
            valid = rows[f"{name}.{field_name}"][2]
            for rule in rules:
                assert rule.text.replace("<", "&lt;") in valid, (name, field_name)
                n_rules += 1
    assert n_rules > 50  # the walk saw the rules of the real tree
