"""The local MLflow store, ``sqlite:///<path>`` (the default ``mlflow.db``): checked before a
run opens, and created once however many commands start together.

:func:`prepare` (called by :func:`isdm.tracking.start_run` before MLflow touches the store):

- a missing store is created (MLflow's schema migrations) by ONE process, under the lock
  ``.<name>.isdm.lock`` beside it; the others wait for it (at most :data:`CREATE_WAIT` s), then
  find it complete. Two commands starting together no longer race in the migrations;
- an existing file that is not an SQLite database, is damaged, or is an SQLite database of
  something else (no MLflow ``experiments`` table) is refused: MLflow would fail with a
  traceback, or write its tables into a stranger's database;
- a store (or its folder) that cannot be written (read-only file system, permissions) is
  refused: SQLite writes a journal beside it;
- a store locked by another program's open write transaction for more than :data:`LOCK_WAIT`
  seconds is refused, naming the lock.

Each failure is a :class:`~isdm.errors.TrackingError` naming the store and the fix (another
``tracking.tracking_uri``, ``--set tracking.enabled=false``, moving the file away). Stores
that are not local SQLite files (an HTTP tracking server, PostgreSQL) are not checked here.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

from isdm.errors import TrackingError

__all__ = ["sqlite_path", "prepare", "CREATE_WAIT", "LOCK_WAIT"]

CREATE_WAIT = 300.0  # seconds to wait for another process creating the store
LOCK_WAIT = 30.0  # seconds to wait for another program's write transaction
_HEADER = b"SQLite format 3\x00"
_prepared: set[str] = set()  # stores this process has checked (nested runs skip the check)
_FIX = ("set another store with --set tracking.tracking_uri=sqlite:///<path>, or run without "
        "MLflow: --set tracking.enabled=false")


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a ``sqlite:///<path>`` URI (None for any other store; an in-memory or
    empty path is an error)."""
    if not uri.startswith("sqlite:"):
        return None
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db (the path follows "///")
    path = unquote(uri[len("sqlite:///"):].split("?", 1)[0]) if uri.startswith("sqlite:///") else ""
    if not path or path == "/" or ":memory:" in uri:
        raise TrackingError(f"MLflow store {uri!r} names no file: give "
                            "tracking.tracking_uri=sqlite:///<path>/mlflow.db (an absolute path "
                            "after the third slash), or leave it empty for ./mlflow.db")
    return Path(path)


def prepare(uri: str) -> None:
    """Check (and, if missing, create) the local SQLite store of ``uri`` (module docstring).

    Raises:
        TrackingError: the store is corrupt, foreign, read-only, locked, or being created
            by another process for longer than :data:`CREATE_WAIT` seconds.
    """
    from filelock import FileLock, Timeout

    path = sqlite_path(uri)
    if path is None or uri in _prepared:
        return
    _check_folder(path)
    try:
        with FileLock(str(path.with_name(f".{path.name}.isdm.lock")), timeout=CREATE_WAIT):
            if not path.exists() or path.stat().st_size == 0:
                _create(uri, path)
    except Timeout:
        raise TrackingError(f"MLflow store {path}: another process has been creating it for "
                            f"over {CREATE_WAIT:g} s; wait for it, or {_FIX}") from None
    except OSError as e:  # the lock file itself cannot be written
        raise _unwritable(path, e) from None
    _check_file(path)
    _prepared.add(uri)


def _check_folder(path: Path) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e) from None
    if not os.access(folder, os.W_OK):
        raise _unwritable(path, PermissionError(13, "its folder is not writable"))


def _create(uri: str, path: Path) -> None:
    """MLflow's schema in a new (or empty) store; the lock is held."""
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # sqlalchemy / mlflow errors of a store that cannot be made
        raise TrackingError(f"MLflow store {path} could not be created ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); {_FIX}") from None


def _check_file(path: Path) -> None:
    """The file is an MLflow SQLite store that this process can write now."""
    try:
        with open(path, "r+b") as f:  # opened for writing, nothing written
            header = f.read(len(_HEADER))
    except OSError as e:
        raise _unwritable(path, e) from None
    if header != _HEADER:
        raise TrackingError(
            f"MLflow store {path} is not an SQLite database (its first bytes are "
            f"{header[:8]!r}): the file is damaged or another file has its name. Move it away "
            f"(isdm then creates a new store there), or {_FIX}")
    try:
        con = sqlite3.connect(path, timeout=LOCK_WAIT)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            con.execute("BEGIN IMMEDIATE")  # waits up to LOCK_WAIT s for another writer
            con.rollback()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise TrackingError(
                f"MLflow store {path} is locked: another program has held a write transaction "
                f"on it for over {LOCK_WAIT:g} s (an open `sqlite3` shell, a stuck `mlflow ui`?). "
                f"Close it and run again, or {_FIX}") from None
        if "readonly" in str(e) or "read-only" in str(e):
            raise _unwritable(path, OSError(30, str(e))) from None
        raise _corrupt(path, e) from None
    except sqlite3.DatabaseError as e:
        raise _corrupt(path, e) from None
    if "experiments" not in tables:
        raise TrackingError(
            f"MLflow store {path} is an SQLite database of something else (no MLflow "
            f"`experiments` table; tables: {', '.join(sorted(tables)[:5]) or 'none'}); isdm "
            f"does not write MLflow's tables into it: {_FIX}")


def _corrupt(path: Path, error: Exception) -> TrackingError:
    return TrackingError(
        f"MLflow store {path} is damaged ({error}): SQLite cannot read it. Move it away (isdm "
        f"then creates a new store there; `sqlite3 {path} .recover` may save its runs), or "
        f"{_FIX}")


def _unwritable(path: Path, error: OSError) -> TrackingError:
    return TrackingError(
        f"MLflow store {path} cannot be written ({error.strerror or error}): a read-only file "
        f"system or missing permissions (SQLite also writes a journal file beside it). "
        f"{_FIX[0].upper()}{_FIX[1:]}")
