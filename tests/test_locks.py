"""isdm.utils.locks.lock: a process waiting for another's lock says what it waits for."""

from __future__ import annotations

import threading
import time

from isdm.utils import locks


def test_a_waiting_process_prints_what_it_waits_for_periodically(tmp_path, capsys):
    path = tmp_path / "baseline.lock"
    held, release = threading.Event(), threading.Event()

    def other_worker() -> None:  # flock conflicts between two opens, even in one process
        with locks.lock(path, what="x"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=other_worker)
    thread.start()
    held.wait(5)
    threading.Timer(0.5, release.set).start()
    start = time.monotonic()
    with locks.lock(path, what="the study's real-only baseline", every_s=0.1):
        waited = time.monotonic() - start
    thread.join()
    lines = capsys.readouterr().err.splitlines()
    assert waited >= 0.4
    assert 3 <= len(lines) <= 8  # at once, then every 0.1 s
    assert all(line.startswith(f"waiting for the study's real-only baseline ({path}), held "
                               "by `") for line in lines)


def test_a_free_lock_is_taken_silently(tmp_path, capsys):
    with locks.lock(tmp_path / "a.lock", what="anything"):
        pass
    assert capsys.readouterr().err == ""
