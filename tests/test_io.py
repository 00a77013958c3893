"""isdm.utils.io: which leftover temps a sweep removes, and write failures as WriteError."""

from __future__ import annotations

import os
import time

import pytest

from isdm.errors import WriteError
from isdm.utils import io


def test_a_sweep_removes_only_temps_of_dead_or_long_gone_writers(tmp_path):
    day_old = time.time() - io.STALE_AFTER_S - 60
    names = {
        ".best.pt.k2x9_ab1.tmp": (day_old, False),  # an earlier isdm's temp (no pid), a day old
        ".last.pt.q7w3e5r1.tmp": (None, True),  # the same, fresh: its writer may be running
        ".a.png.isdm.otherhost.123.abcdefgh.tmp": (day_old, False),  # another host, a day old
        ".b.png.isdm.otherhost.123.abcdefgh.tmp": (None, True),  # another host, fresh
        f".c.png.isdm.{io._HOST}.{os.getpid()}.abcdefgh.tmp": (None, True),  # this process
        ".notes.tmp": (day_old, True),  # not an isdm temp
    }
    for name, (mtime, _) in names.items():
        (tmp_path / name).write_bytes(b"x")
        if mtime is not None:
            os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / ".d.png.abcdefgh.tmp").mkdir()  # folders are never touched
    removed = io.remove_stale_temps(tmp_path)
    stale = sorted(n for n, (_, keep) in names.items() if not keep)
    assert sorted(p.name for p in removed) == stale
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, (_, keep) in names.items() if keep} | {".d.png.abcdefgh.tmp"}


def test_a_temp_is_named_after_its_target_host_and_process(tmp_path):
    with io.atomic_path(tmp_path / "best.pt") as tmp:
        assert tmp.name.startswith(f".best.pt.isdm.{io._HOST}.{os.getpid()}.")
        assert tmp.name.endswith(".tmp") and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert (tmp_path / "best.pt").read_bytes() == b"new"


def test_a_folder_that_cannot_be_created_is_a_write_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'taken' / 'x.json'}"):
        io.atomic_write_json(tmp_path / "taken" / "x.json", {})


def test_other_errors_inside_the_block_are_not_write_errors(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with io.atomic_path(tmp_path / "x.pt"):
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []
