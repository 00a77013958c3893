"""Validation shared by the config sections: value rules, the section base class, its error.

Every section is a frozen dataclass deriving from :class:`Section`. Constructing one checks
each field (a direct ``TrainConfig(lr=-1)`` as much as a loaded file) and raises ONE
:class:`SectionError` that lists every invalid value as ``key=value: rule``, so a file with three
mistakes is fixed in one round. The checks, in order:

1. every float (also inside a list) is finite: ``nan`` / ``inf`` are never a valid setting;
2. a ``Literal[...]`` field holds one of its choices;
3. the field's rules in :attr:`Section.RULES` (``{"lr": (GREATER_0,)}``);
4. the section's own cross-field rules (:meth:`Section._problems`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import typing
from typing import (
    Any,
    Callable,
    ClassVar,
    Iterable,
    Literal,
    Mapping,
    NamedTuple,
    Sequence,
)

from isdm.errors import ConfigError

__all__ = ["Rule", "Problem", "Section", "SectionError", "at_least", "in_range", "each",
           "NON_EMPTY", "GREATER_0", "PROBABILITY", "TEXT", "DEVICE", "unknown_key", "show",
           "type_hints"]


class Rule(NamedTuple):
    """``ok(value)`` is True for a valid value; ``text`` completes ``key=value: <text>``."""

    ok: Callable[[Any], bool]
    text: str


class Problem(NamedTuple):
    """One invalid value: ``key`` relative to the section (dotted at the top level)."""

    key: str
    value: Any
    text: str


def at_least(n: float) -> Rule:
    return Rule(lambda v: v >= n, f"must be >= {n}")


def in_range(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Rule:
    """``lo <= v <= hi`` with either end optionally open; the text uses interval notation."""
    def ok(v: Any) -> bool:
        return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)

    return Rule(ok, f"must be in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")


def each(rule: Rule) -> Rule:
    """The rule for every element of a list (``[0.999]``)."""
    return Rule(lambda v: all(rule.ok(x) for x in v), f"each value {rule.text}")


NON_EMPTY = Rule(lambda v: len(v) > 0, "must not be empty")
GREATER_0 = Rule(lambda v: v > 0, "must be > 0")
PROBABILITY = in_range(0, 1)
TEXT = Rule(lambda v: bool(v.strip()), "must not be empty")
DEVICE = Rule(lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
              "must be auto, cpu, cuda, cuda:<index> or mps")


def show(value: Any) -> str:
    """A value as a user writes it in params.yaml: lists in brackets, strings quoted."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def unknown_key(key: str, value: str, valid: Sequence[str] | Mapping[str, Any],
                what: str = "key") -> str:
    """``"train.weights_decay: unknown key 'weights_decay'; did you mean weight_decay?
    (valid: ...)"``."""
    names = list(valid)
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{key}: unknown {what} {value!r}{hint} (valid: {', '.join(names)})"


class SectionError(ConfigError):
    """Invalid values of one section; ``problems`` lists them, ``section`` is the dotted prefix
    of their keys (``finetune`` for a :class:`TrainConfig` loaded as the finetune section)."""

    def __init__(self, section: str, problems: Iterable[Problem]) -> None:
        self.section, self.problems = section, list(problems)
        lines = [f"{section + '.' if section else ''}{p.key}={show(p.value)}: {p.text}"
                 for p in self.problems]
        super().__init__(lines[0] if len(lines) == 1 else (
            f"{len(lines)} invalid values:\n  " + "\n  ".join(lines)))

    def under(self, section: str) -> "SectionError":
        """The same problems with keys under ``section``."""
        return SectionError(section, self.problems)


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _non_finite(value: Any) -> bool:
    values = value if isinstance(value, (list, tuple)) else (value,)
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every config section: validates on construction (see the module docstring)."""

    SECTION: ClassVar[str] = ""
    RULES: ClassVar[Mapping[str, Sequence[Rule]]] = {}

    def __post_init__(self) -> None:
        self._resolve()
        problems = self._value_problems()
        if not problems:  # range rules compare numbers: only once every value is a number
            problems = [*self._rule_problems(), *self._problems()]
        if problems:
            raise SectionError(self.SECTION, problems)

    def _resolve(self) -> None:
        """Hook: normalise values (aliases, presets) before they are checked."""

    def _problems(self) -> Iterable[Problem]:
        """Hook: rules that involve several fields."""
        return ()

    def _value_problems(self) -> list[Problem]:
        hints = type_hints(type(self))
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _non_finite(value):
                out.append(Problem(f.name, value, "must be a finite number (not nan or inf)"))
            elif typing.get_origin(hints[f.name]) is Literal and value not in typing.get_args(
                    hints[f.name]):
                out.append(Problem(f.name, value,
                                   f"must be one of {show(typing.get_args(hints[f.name]))}"))
        return out

    def _rule_problems(self) -> Iterable[Problem]:
        for name, rules in self.RULES.items():
            value = getattr(self, name)
            for rule in rules:
                try:
                    ok = rule.ok(value)
                except TypeError:  # a direct construction with a value of the wrong type
                    ok = False
                if not ok:
                    yield Problem(name, value, rule.text)
                    break
