"""The configuration reference page, generated from the config dataclasses so it cannot drift.

:func:`render_reference` walks a config tree (by default :class:`isdm.config.Config`) and
returns one Markdown page: per section its class docstring and a table of every key with its
type, its default (the value of the default-constructed tree, so presets and inherited sections
show what a run really gets) and its valid values (the ``Literal`` choices and the texts of the
class's ``RULES``). A dataclass field inside a section (``sample.balance``) becomes a
sub-section. Nothing here names a key: a key added to, moved in or removed from the tree shows
up on the next docs build (``mkdocs build`` calls this through ``docs/hooks/reference.py``).

``python -m isdm.config.reference`` prints the page.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from typing import Any, Iterator, Literal, NamedTuple, Union, get_args, get_origin

from isdm.config.checks import type_hints

__all__ = ["KeyDoc", "render_reference", "key_docs", "type_text", "value_text",
           "docstring_markdown"]

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :class:`Config`, :mod:`~isdm.config.checks`
_DOUBLE = re.compile(r"``(.+?)``")
_CODE = re.compile(r"(`[^`]*`)")
_SENTENCE = re.compile(r"\.(\s+[A-Z`(]|$)")


class KeyDoc(NamedTuple):
    """One row of a section's table: the dotted key and its type, default and valid values."""

    key: str
    type: str
    default: str
    valid: str


def type_text(tp: Any) -> str:
    """An annotation as a user reads it: ``int``, ``list of float``, ``int or list of int``,
    ``str or null``, ``one of ...`` (the choices of a ``Literal`` are in the valid column)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in args else []))
    if origin is Literal:
        kinds = sorted({type(c).__name__ for c in get_args(tp)})
        return " or ".join(kinds)
    if origin is tuple:
        (elem,) = get_args(tp)[:1] or (Any,)
        return f"list of {type_text(elem)}"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A value as it is written in YAML: ``null``, ``true``, ``''``, ``[0.1, 0.2]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return repr(value)


def _valid_text(cls: type, name: str, tp: Any) -> str:
    parts = []
    if get_origin(tp) is Literal:
        parts.append("one of " + ", ".join(f"`{value_text(c)}`" for c in get_args(tp)))
    parts += [rule.text for rule in getattr(cls, "RULES", {}).get(name, ())]
    return "; ".join(parts)


def key_docs(cls: type, instance: Any, prefix: str) -> list[KeyDoc]:
    """The rows of section ``cls`` (its non-dataclass fields) with defaults from ``instance``."""
    hints = type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        rows.append(KeyDoc(f"{prefix}.{f.name}", type_text(tp),
                           value_text(getattr(instance, f.name)), _valid_text(cls, f.name, tp)))
    return rows


def _escape(text: str) -> str:
    """Escape Markdown/HTML outside code spans (``<``, ``*``) so docstring prose stays prose."""
    parts = _CODE.split(text)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace("*", r"\*")
                   for p in parts)


def docstring_markdown(doc: str | None) -> str:
    """A reStructuredText-flavoured docstring as Markdown: ````x```` and ``:role:`x``` become
    code spans, a paragraph ending in ``::`` introduces a fenced block of its indented lines."""
    if not doc:
        return ""
    out: list[str] = []
    block: list[str] | None = None
    for line in inspect.cleandoc(doc).splitlines():
        if block is not None:
            if line.strip() and not line.startswith(" "):
                out += ["```", *_dedent(block), "```", ""]
                block = None
            else:
                block.append(line)
                continue
        text = _escape(_DOUBLE.sub(r"`\1`", _ROLE.sub(r"`\1`", line)))
        if text.rstrip().endswith("::"):
            out += [text.rstrip()[:-1], ""]
            block = []
        else:
            out.append(text)
    if block is not None:
        out += ["```", *_dedent(block), "```"]
    return "\n".join(out).strip()


def _dedent(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    width = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return [x[width:] for x in lines]


def _table(rows: list[KeyDoc]) -> list[str]:
    def cell(text: str) -> str:
        return _escape(text).replace("|", r"\|") or "-"

    out = ["| key | type | default | valid values |", "|---|---|---|---|"]
    out += [f"| `{r.key}` | {cell(r.type)} | `{r.default.replace('|', '/')}` | {cell(r.valid)} |"
            for r in rows]
    return out


def _sections(cls: type, instance: Any, prefix: str) -> Iterator[tuple[str, type, Any]]:
    """``(dotted name, class, default instance)`` of every dataclass field, depth first."""
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            name = f"{prefix}.{f.name}" if prefix else f.name
            yield name, tp, getattr(instance, f.name)
            yield from _sections(tp, getattr(instance, f.name), name)


def _summary(doc: str | None) -> str:
    """The first sentence of a docstring, on one line."""
    first = " ".join(docstring_markdown(doc).split("\n\n")[0].split())
    end = _SENTENCE.search(first)
    return first[:end.start() + 1] if end else first


def _module_notes(cls: type) -> list[str]:
    """The module docstring (after its title paragraph) of a section whose class docstring
    points to it ("see the module docstring"), so the page holds what the class defers to."""
    if "module docstring" not in (cls.__doc__ or ""):
        return []
    doc = docstring_markdown(inspect.getmodule(cls).__doc__)
    rest = doc.split("\n\n", 1)[1] if "\n\n" in doc else ""
    return [f"From `{cls.__module__}`:", "", rest, ""] if rest else []


def _presets(cls: type) -> list[str]:
    """The model presets' values, one column per preset, after the section of
    :class:`~isdm.config.model.ModelConfig` (nothing for any other section)."""
    from isdm.config import model

    presets = getattr(model, "MODEL_PRESETS", None)
    if cls is not getattr(model, "ModelConfig", None) or not presets:
        return []
    names = list(presets)
    keys = list(dict.fromkeys(k for p in presets.values() for k in p))
    out = ["| key | " + " | ".join(f"`{n}`" for n in names) + " |",
           "|---|" + "---|" * len(names)]
    out += [f"| `{k}` | " + " | ".join(f"`{value_text(presets[n].get(k, '-'))}`" for n in names)
            + " |" for k in keys]
    return ["### Model presets", "",
            "What each `model.preset` sets (`isdm.config.model.MODEL_PRESETS`):", "", *out, ""]


def render_reference(root: type | None = None) -> str:
    """The whole reference page for the config tree ``root`` (default :class:`Config`)."""
    if root is None:
        from isdm.config.tree import Config

        root = Config
    instance = root()
    sections = list(_sections(root, instance, ""))
    n_keys = sum(len(key_docs(c, i, n)) for n, c, i in sections)
    seen: dict[type, str] = {}
    out = ["# Configuration reference", "",
           "<!-- generated by isdm.config.reference at docs build time: do not edit -->", "",
           f"Every key of the config tree ({n_keys} keys in {len(sections)} sections), generated "
           "from the dataclasses in `src/isdm/config/` when the site is built. Defaults are the "
           "values of a config built from nothing; the valid values are the checks every load "
           "applies. Dotted keys are the ones `--set`, `dvc exp run -S` and the MLflow params "
           "use.", "", docstring_markdown(root.__doc__), "",
           "| section | what it holds |", "|---|---|"]
    out += [f"| [`{n}`](#{_anchor(n)}) | {_summary(c.__doc__).replace('|', '/')} |"
            for n, c, _ in sections]
    out.append("")
    for name, cls, inst in sections:
        out += [f"{'#' * (2 + name.count('.'))} {name}", ""]
        if cls in seen:
            out += [f"The same keys as [`{seen[cls]}`](#{_anchor(seen[cls])}) "
                    f"(`{cls.__name__}`); the defaults below are this section's.", ""]
        else:
            seen[cls] = name
            out += [docstring_markdown(cls.__doc__), "", *_module_notes(cls)]
        out += [*_table(key_docs(cls, inst, name)), "", *_presets(cls)]
    return "\n".join(out).rstrip() + "\n"


def _anchor(name: str) -> str:
    """The id Python-Markdown's toc extension gives the heading ``name`` (``sample.balance``
    -> ``samplebalance``)."""
    return re.sub(r"[^\w\- ]", "", name).strip().lower().replace(" ", "-")


if __name__ == "__main__":
    print(render_reference(), end="")
