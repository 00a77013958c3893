"""Progress of every loop isdm shows: ONE place decides how it looks.

- stderr is a terminal: a tqdm bar (carriage-return frames redraw it in place).
- stderr is not a terminal (``dvc repro``'s log, CI, a file): no carriage returns; a bar prints
  one plain line each time it passes another tenth of its total, or :data:`LINE_EVERY_S` seconds
  after its last line, and a last line when it ends. A *transient* bar (an inner loop whose outer
  loop already reports, e.g. the solver steps of one batch or the batches of one epoch) prints
  nothing there.
- ``enabled=False`` (``runtime.progress: false``, ``--no-progress``): nothing.

:func:`note` writes a line without tearing a bar that is on screen.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

__all__ = ["bar", "note", "Lines", "Quiet", "LINE_EVERY_S", "is_terminal"]

LINE_EVERY_S = 30.0  # longest silence of a bar on a non-terminal (seconds)


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Quiet:
    """A bar that shows nothing (same methods as tqdm's that isdm uses)."""

    def __init__(self, iterable: Optional[Iterable[Any]] = None,
                 stream: Optional[TextIO] = None) -> None:
        self.iterable, self.stream, self.n = iterable, stream, 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "Quiet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None: ...
    def set_postfix_str(self, text: str) -> None: ...
    def close(self) -> None: ...

    def write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)


class Lines(Quiet):
    """Plain progress lines for a non-terminal: ``<desc>: <n>/<total> <unit> (<postfix>),
    <pct> %, <seconds> s``, one per tenth of ``total`` passed or per ``every_s`` seconds."""

    def __init__(self, iterable: Optional[Iterable[Any]] = None, *, total: Optional[int],
                 desc: str, unit: str, stream: Optional[TextIO] = None,
                 every_s: float = LINE_EVERY_S, clock: Any = time.monotonic) -> None:
        super().__init__(iterable, stream)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.every_s, self.clock = total, desc, unit, every_s, clock
        self.postfix = ""
        self.t0 = self.last = clock()
        self.tenth = 0  # tenths of total already reported
        self.printed_n = -1

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        tenth = int(10 * self.n / self.total) if self.total else 0
        if tenth > self.tenth or now - self.last >= self.every_s:
            self.tenth = tenth
            self._line(now)

    def close(self) -> None:
        if self.n != self.printed_n and self.n > 0:
            self._line(self.clock())

    def _line(self, now: float) -> None:
        self.last, self.printed_n = now, self.n
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        post = f" ({self.postfix})" if self.postfix else ""
        pct = f", {100 * self.n / self.total:.0f} %" if self.total else ""
        self.write(f"{self.desc}: {count} {self.unit}{post}{pct}, {now - self.t0:.0f} s")


def bar(iterable: Optional[Iterable[Any]] = None, *, total: Optional[int] = None,
        desc: str = "", unit: str = "it", enabled: bool = True, transient: bool = False,
        stream: Optional[TextIO] = None) -> Any:
    """A progress bar over ``iterable`` (or updated by hand up to ``total``): see the module
    docstring. Use it as tqdm: iterate it, or ``update(n)``, ``set_postfix(...)``,
    ``write(line)``, ``close()`` / a ``with`` block."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return Quiet(iterable, stream)
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=not transient,
                    file=stream, dynamic_ncols=True)
    if transient:
        return Quiet(iterable, stream)
    return Lines(iterable, total=total, desc=desc, unit=unit, stream=stream)


def note(text: str, stream: Optional[TextIO] = None) -> None:
    """Print one line to ``stream`` (default stderr) without tearing a bar on a terminal."""
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        from tqdm import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)
