"""Run status when a process is stopped: KILLED, never RUNNING forever.

- SIGTERM and SIGHUP (``kill``, a closed terminal, a scheduler or torchrun stopping a job): while
  the outermost run of a process is open, :func:`signals_raise` turns them into
  :class:`Interrupted`, a ``SystemExit`` with code 128 + the signal number. It unwinds every
  ``with start_run`` block, each ending its run KILLED, then the process exits with that code
  (143 for SIGTERM, as a shell reports a process the signal ended). The original handlers are
  back as soon as the first signal arrives, so a second one stops the process at once.
- SIGINT (Ctrl-C): Python's ``KeyboardInterrupt`` unwinds the same way.
- SIGKILL (``kill -9``, the out-of-memory killer) and power loss run no code. Each run is
  tagged with its host, process id and the process's start time (:func:`process_tags`); the
  first run a process opens ends, as KILLED, the RUNNING runs of its experiment whose process on
  this host is gone (:func:`end_orphans`), tagging them ``isdm.ended_by``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from isdm.utils.io import pid_running

__all__ = ["Interrupted", "signals_raise", "process_tags", "end_orphans", "HOST_TAG", "PID_TAG"]

HOST_TAG, PID_TAG, START_TAG = "isdm.host", "isdm.pid", "isdm.pid_start"
_HOST = socket.gethostname()
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_checked: set[tuple[str, str]] = set()  # (store, experiment) this process has cleaned up


class Interrupted(SystemExit):
    """A stop signal arrived during a run; the exit code is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


@contextmanager
def signals_raise(outermost: bool) -> Iterator[None]:
    """Raise :class:`Interrupted` on SIGTERM / SIGHUP inside the block (the outermost run of
    the main thread only; a signal another handler ignores stays ignored)."""
    if not outermost or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def restore() -> None:
        while previous:
            sig, handler = previous.popitem()
            signal.signal(sig, handler)

    def handler(signum: int, frame: Any) -> None:
        restore()
        raise Interrupted(signum)

    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if current is not signal.SIG_IGN and current is not None:  # nohup keeps SIGHUP ignored
            previous[sig] = current
            signal.signal(sig, handler)
    try:
        yield
    finally:
        restore()


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ('' where /proc is absent);
    ``'zombie'`` for a process that ended and waits for its parent."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state ... starttime (22nd)
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


def process_tags() -> dict[str, str]:
    """Who runs the run: host, process id and that process's start time (a reused pid differs)."""
    return {HOST_TAG: _HOST, PID_TAG: str(os.getpid()), START_TAG: _process_start(os.getpid())}


def _alive(pid: int, start: str) -> bool:
    if pid == os.getpid():
        return True
    if not pid_running(pid):
        return False
    now = _process_start(pid)
    return now != "zombie" and (not start or not now or now == start)


def end_orphans(client: Any, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of ``experiment_id`` started on this host by a process that
    is gone; return their ids. Runs without the process tags (other tools, other hosts) are
    left alone. Done once per experiment and process."""
    key = (str(client.tracking_uri), str(experiment_id))
    if key in _checked:
        return []
    _checked.add(key)
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{_HOST}'"
    ended = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=1000):
        tags = run.data.tags
        pid = int(tags.get(PID_TAG, "0") or 0)
        if pid and not _alive(pid, tags.get(START_TAG, "")):
            client.set_tag(run.info.run_id, "isdm.ended_by",
                           f"process {pid} on {_HOST} stopped without ending the run (SIGKILL, "
                           f"power loss); marked KILLED by process {os.getpid()}")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended
