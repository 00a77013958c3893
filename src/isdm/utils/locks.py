"""File locks (the ``filelock`` package: an OS ``flock``, which the kernel releases when its
process dies, so a killed process never leaves a stale lock).

- :func:`lock`: wait for an exclusive lock (workers sharing a cache entry take turns); while it
  waits it prints what it waits for, and who holds it, every :data:`WAIT_LINE_EVERY_S` seconds
  (a tune worker waiting on another's baseline is not silent for minutes).
- :func:`exclusive`: take the lock at once or fail with :class:`~isdm.errors.BusyError`
  naming the process that holds it (one writer per output folder). The holder writes
  ``{"command", "pid", "host", "since"}`` into the lock file once it holds it; the file stays
  after release (a later holder overwrites it), so its content means nothing while no process
  holds the lock.

Shared file systems: ``flock`` must be honoured across machines (NFSv4 with working locking:
yes; some SMB / FUSE mounts: no, and there two processes may both get the lock).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from isdm.errors import BusyError, WriteError

__all__ = ["lock", "exclusive", "holder", "WAIT_LINE_EVERY_S"]

WAIT_LINE_EVERY_S = 30.0  # a waiting process says so this often (seconds)


@contextlib.contextmanager
def lock(path: str | Path, what: str = "", every_s: float = WAIT_LINE_EVERY_S) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (created if missing) while the block runs; waits
    for as long as another process holds it, printing to stderr at once and then every
    ``every_s`` seconds ``waiting for <what> (<path>), held by <holder>, <seconds> s``."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(str(path), on_acquired=_write_holder(_command()))
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        _wait(file_lock, path, what, every_s)
    try:
        yield
    finally:
        file_lock.release()


def _command() -> str:
    """``isdm tune`` for the isdm CLI, else the program's name (the holder of a lock)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program == "isdm" and len(sys.argv) > 1:
        return f"isdm {sys.argv[1]}"
    return program


def _wait(file_lock, path: Path, what: str, every_s: float) -> None:
    """Acquire ``file_lock``, one line on stderr per ``every_s`` seconds of waiting."""
    from filelock import Timeout

    from isdm.utils.progress import note

    start = time.monotonic()
    while True:
        note(f"waiting for {what or 'a lock'} ({path}), held by {holder(path)}, "
             f"{time.monotonic() - start:.0f} s")
        try:
            file_lock.acquire(timeout=every_s)
            return
        except Timeout:
            continue


def _write_holder(command: str):
    def write(fd: int) -> None:
        info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):  # the description is a courtesy, the lock is not
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
    return write


def holder(path: str | Path) -> str:
    """``"isdm train (pid 123 on host, since 2026-01-02 10:00:00)"``: who holds the lock at
    ``path``, as it wrote itself down; ``"another process"`` when it cannot be read."""
    try:
        info = json.loads(Path(path).read_text())
        return (f"`{info['command']}` (pid {info['pid']} on {info['host']}, since "
                f"{info['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive(path: str | Path, command: str, what: str) -> Iterator[None]:
    """Hold the lock of ``path`` while the block runs, taken at once.

    Args:
        command: what this process is, written into the lock file (``"isdm train"``).
        what: the thing protected, for the message (``"--out models/sdm"``).
    Raises:
        BusyError: another process holds the lock.
        WriteError: the lock file cannot be created (read-only file system, permissions).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    file_lock = FileLock(str(path), timeout=0, on_acquired=_write_holder(command))
    try:
        file_lock.acquire()
    except Timeout:
        raise BusyError(
            f"{what} is being written by {holder(path)}: two processes writing one output "
            "would mix their files. Wait until it has finished (or stop it), or choose "
            "another output folder.") from None
    except OSError as e:
        raise WriteError(f"cannot lock {what}: {e.strerror or e} ({path}); write to a folder "
                         "on a writable file system") from None
    try:
        yield
    finally:
        file_lock.release()
