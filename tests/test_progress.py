"""isdm.utils.progress: plain lines, never carriage returns, when stderr is not a terminal."""

from __future__ import annotations

import io

from isdm.utils import progress


def test_a_non_terminal_gets_a_line_per_tenth_and_no_carriage_return():
    out = io.StringIO()  # isatty() is False
    for _ in progress.bar(range(100), desc="sample", unit="img", stream=out):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ... 100 %
    assert lines[0].startswith("sample: 10/100 img, 10 %")
    assert lines[-1].startswith("sample: 100/100 img, 100 %")


def test_a_quiet_stretch_still_prints_every_few_seconds():
    out, now = io.StringIO(), [0.0]
    bar = progress.Lines(total=1000, desc="cells", unit="cells", stream=out, every_s=30.0,
                         clock=lambda: now[0])
    bar.set_postfix_str("1 trained")
    for second in (10.0, 31.0, 45.0, 62.0):  # 1, 2, 3, 4 of 1000: no tenth passed
        now[0] = second
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == ["cells: 2/1000 cells (1 trained), 0 %, 31 s",
                                           "cells: 4/1000 cells (1 trained), 0 %, 62 s"]


def test_transient_and_disabled_bars_print_nothing_off_a_terminal():
    out = io.StringIO()
    assert list(progress.bar(range(5), transient=True, stream=out)) == [0, 1, 2, 3, 4]
    with progress.bar(total=5, enabled=False, stream=out) as bar:
        bar.update(5)
    assert out.getvalue() == ""
    bar.write("a trial line stays")
    assert out.getvalue() == "a trial line stays\n"


def test_a_terminal_gets_tqdm(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(out, "isatty", lambda: True)
    from tqdm.auto import tqdm

    b = progress.bar(total=3, stream=out)
    assert isinstance(b, tqdm)
    b.close()
