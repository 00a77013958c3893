"""Atomic file writes (temp file in the same folder + ``os.replace``) and content hashes.

A crash never leaves a half-written checkpoint, image or JSON behind: readers see either the old
file or the complete new one.

Temporary files are named ``.<name>.isdm.<host>.<pid>.<random>.tmp`` beside their target. A
writer killed before its rename (``kill -9``, power loss) leaves its temp behind, so the first
atomic write of a process into a folder removes the leftovers there (:func:`remove_stale_temps`).
A temp is stale when

- it names this host and a process id that is no longer running, or
- it was last modified more than ``STALE_AFTER_S`` (24 h) ago, whoever wrote it: this covers
  temps of other hosts sharing the folder, a dead writer's pid taken by a new process, and the
  ``.<name>.<random>.tmp`` temps of isdm versions without host and pid in the name.

Temps of live writers (a parallel sampling shard, another run on this host) are left alone.

A failed write (disk full, file size limit, read-only file system, permissions) raises
:class:`~isdm.errors.WriteError` naming the file and the free space, and saying that the
previous version of the file and everything written before it are intact; the temp is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from isdm.errors import WriteError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_write_bytes",
           "remove_stale_temps", "sha256_file", "STALE_AFTER_S"]

STALE_AFTER_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\..+\.isdm\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")
_OLD_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's 8 random characters
# What torch.save(obj, path) raises when its C++ file writer fails (no errno reaches Python).
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed",
                         "iostream error")
_swept: set[str] = set()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Usage::

        with atomic_path("model.pt") as tmp:
            torch.save(state, tmp)

    Raises:
        WriteError: the folder, the temp or the rename could not be written (an ``OSError``, or
            torch's ``RuntimeError`` of a failed file write, inside the block).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.isdm.{_HOST}.{os.getpid()}.",
                                   suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the final file the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp_path, 0o666 & ~umask)
        yield tmp_path
        os.replace(tmp_path, path)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    except RuntimeError as e:
        if _os_error(e) is None and not any(s in str(e) for s in _TORCH_WRITE_FAILURES):
            raise
        raise _write_error(path, e) from e
    finally:
        with suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temps of dead writers in ``folder`` (the rule is in the module docstring);
    return the deleted paths."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    now = time.time()
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None and not _OLD_TEMP.match(entry.name):
            continue
        dead = match is not None and match["host"] == _HOST and not pid_running(int(match["pid"]))
        with suppress(FileNotFoundError):  # its writer renamed it, or another sweep took it
            if entry.is_file(follow_symlinks=False) and (
                    dead or now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _swept:
        remove_stale_temps(folder)
        _swept.add(key)


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (signal 0 checks without signalling)."""
    if pid == os.getpid() or os.name != "posix":  # elsewhere signal 0 is not a probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error``: itself, or what torch's writer was handling when it failed
    (torch.save to a file object turns the file's OSError into a RuntimeError)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _write_error(path: Path, error: Exception) -> WriteError:
    cause = _os_error(error)
    if cause is not None:
        reason = cause.strerror or str(cause)
    else:
        reason = f"the write failed (torch: {str(error).strip().splitlines()[0]})"
    try:
        free = f"{_size(shutil.disk_usage(_existing(path.parent)).free)} free on its file system"
    except OSError:
        free = "free space unknown"
    before = (f"the previous {path.name} is intact" if path.exists()
              else f"there was no earlier {path.name}")
    return WriteError(
        f"cannot write {path}: {reason} ({free}); {before}, every file written before it is "
        "intact and the partial temporary file was removed. Free some space (or write to "
        "another folder) and run the command again.")


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(n: int) -> str:
    units, value, i = ("bytes", "KB", "MB", "GB", "TB"), float(n), 0
    while value >= 1000 and i < len(units) - 1:
        value, i = value / 1000, i + 1
    return f"{n} bytes" if i == 0 else f"{value:.1f} {units[i]}"


def file_hexdigest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes with hashlib's ``algorithm``, read ``chunk`` bytes at a time."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    return file_hexdigest(path, "sha256", chunk)
