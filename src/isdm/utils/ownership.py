"""One ownership rule for every command that writes a folder (train, finetune, sample, curate,
evaluate, tune, data synth).

1. **Never inside a dataset split**: a folder ``<root>/{train,test}/`` holding ``images/`` and
   ``masks/``, or anything below one, is refused
   (:func:`check_not_in_split`).
2. **Created, or recognised as its own**: the command creates the folder, or finds its own
   earlier output by the record it wrote, ``.isdm-output.json`` (:data:`RECORD`)::

       {"command": "train", "files": ["best.pt", "last.pt", ...]}

   ``files`` are paths relative to the folder; an entry ending in ``/`` owns everything below
   it, one with ``*`` is a shell pattern (``tune``'s caches, locks and journal locks). A
   command lists what it will write BEFORE writing it (a killed run's files stay its own). Outputs without a record (written by an older isdm, or restored by
   ``dvc checkout`` / ``dvc pull``, which restore a stage's outs but not the record) are
   recognised by a command-specific check of their content (``legacy`` of :func:`claim`: a
   checkpoint's meta, ``card.json``, ``synth.json``, ...). ``sample`` keeps its richer record,
   ``run.json`` + ``manifest.jsonl`` (:mod:`isdm.sampling.writer`), and uses the helpers here.
3. **Anything else is refused**, with or without ``--overwrite``: the message lists up to
   :data:`SHOWN` of the foreign files and their count, and nothing is written or deleted.
4. **``--overwrite`` (or a command that replaces its own earlier output) deletes exactly the
   recorded files** (:meth:`Output.remove`).

Neutral, never foreign and never deleted: ``.gitignore`` / ``.dvcignore`` (DVC writes a
``.gitignore`` beside a stage's outs), the record, the lock (:data:`LOCK`) and the temps of
atomic writes (:func:`is_temp`).

One writer per folder: :func:`exclusive` takes the folder's lock (``<out>/.isdm.lock``) at once
or fails naming the process that holds it (:mod:`isdm.utils.locks`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from isdm.errors import OutputExistsError, WriteError

__all__ = ["RECORD", "LOCK", "NEUTRAL", "SHOWN", "Output", "claim", "exclusive", "listing",
           "check_not_in_split", "split_of", "read_record", "write_record", "is_temp", "is_neutral",
           "is_lock", "publish",
           "make_folder"]

RECORD = ".isdm-output.json"
LOCK = ".isdm.lock"
NEUTRAL = frozenset({".gitignore", ".dvcignore", RECORD, LOCK})
_LOCKS = re.compile(r"^\.isdm(\.[\w-]+)?\.lock$")  # LOCK, and e.g. a sampling shard's
SHOWN = 5  # foreign files named in a refusal
_SPLITS = ("train", "test")  # isdm.data.layout.SPLITS (utils imports no isdm package but errors)
# temps of isdm.utils.io.atomic_path (and of isdm versions before host and pid were in the name)
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:isdm\.[A-Za-z0-9_-]+\.\d+\.)?[A-Za-z0-9_]+\.tmp$")

Legacy = Callable[[Path], Iterable[str]]


def is_lock(name: str) -> bool:
    """An output folder's lock (:data:`LOCK`, or a sampling shard's ``.isdm.<i>-<n>.lock``): its
    content names the last holder, so it is excluded from DVC's hashes (``.dvcignore``)."""
    return _LOCKS.match(name) is not None


def is_neutral(name: str) -> bool:
    """A file name that is never foreign and never deleted (module docstring)."""
    return name in NEUTRAL or _LOCKS.match(name) is not None


def is_temp(name: str, owned_names: set[str]) -> bool:
    """``name`` is an atomic-write temp of isdm (its name says so: ``.<name>.isdm.<host>.<pid>.
    <random>.tmp``; :func:`isdm.utils.io.remove_stale_temps` removes those of dead writers), or
    an older isdm's temp ``.<name>.<random>.tmp`` of one of ``owned_names`` (same folder)."""
    m = _TEMP.match(name)
    return m is not None and (".isdm." in name or m["name"] in owned_names)


def split_of(folder: str | Path) -> Optional[Path]:
    """The dataset split ``folder`` is in or is (``<root>/train`` holding ``images/`` and
    ``masks/``), or None."""
    path = Path(folder).resolve()
    for p in (path, *path.parents):
        if p.name in _SPLITS and (p / "images").is_dir() and (p / "masks").is_dir():
            return p
    return None


def check_not_in_split(out: str | Path, option: str = "--out") -> None:
    """Raises OutputExistsError when ``out`` is inside (or is) a dataset split."""
    split = split_of(out)
    if split is not None:
        raise OutputExistsError(
            f"{option} {out} is inside the dataset split {split} (it holds images/ and masks/): "
            "writing there would mix generated files with the real data. Choose a folder "
            f"outside the dataset, e.g. {option} data/synthetic")


def listing(names: Sequence[str]) -> str:
    """``"7 file(s) (a.png, b/c.txt, ...)"``: up to :data:`SHOWN` names and the count."""
    shown = ", ".join(str(n) for n in names[:SHOWN])
    return f"{len(names)} file(s) ({shown}{', ...' if len(names) > SHOWN else ''})"


def read_record(out: str | Path) -> Optional[dict]:
    """The record of ``out`` (None when absent or unreadable)."""
    try:
        record = json.loads((Path(out) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        return None
    return record


def write_record(out: str | Path, command: str, files: Iterable[str]) -> None:
    """Write the record of ``out``: ``command`` owns ``files`` (sorted, unique)."""
    from isdm.utils.io import atomic_write_json

    atomic_write_json(Path(out) / RECORD, {"command": command, "files": sorted(set(files))})


def _files(root: Path) -> Iterator[str]:
    """Every file and symlink below ``root`` as a posix path relative to it (symlinked
    folders are not followed)."""
    for folder, dirs, names in os.walk(root):
        base = Path(folder)
        for d in list(dirs):
            if (base / d).is_symlink():
                dirs.remove(d)
                names.append(d)
        for name in names:
            yield (base / name).relative_to(root).as_posix()


def _foreign(root: Path, owned: Sequence[str]) -> list[str]:
    """The files below ``root`` that ``owned`` (files, and folders ending in ``/``) does not
    cover, neutral files and temps of owned names aside."""
    files = {f for f in owned if not f.endswith("/") and "*" not in f}
    folders = tuple(f for f in owned if f.endswith("/"))
    patterns = [f for f in owned if "*" in f]
    by_parent: dict[str, set[str]] = {}
    for f in files:
        parent, _, name = f.rpartition("/")
        by_parent.setdefault(parent, set()).add(name)
    out = []
    for rel in _files(root):
        if rel in files or rel.startswith(folders) or any(fnmatch(rel, p) for p in patterns):
            continue
        parent, _, name = rel.rpartition("/")
        if not is_neutral(name) and not is_temp(name, by_parent.get(parent, set())):
            out.append(rel)
    return sorted(out)


@dataclass(frozen=True)
class Output:
    """An output folder as a command found it: ``owned`` are the entries of its own earlier
    output (record or legacy), ``existing`` those of them present."""

    root: Path
    command: str
    owned: tuple[str, ...] = ()
    existing: tuple[str, ...] = ()

    def remove(self) -> None:
        """Delete the owned files present (``--overwrite``); folder entries go whole."""
        for rel in self.existing:
            path = self.root / rel
            if rel.endswith("/") and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        for rel in sorted({str(Path(r).parent) for r in self.existing if "/" in r.rstrip("/")},
                          key=len, reverse=True):  # emptied sub-folders isdm made
            with contextlib.suppress(OSError):
                (self.root / rel).rmdir()

    def record(self, files: Iterable[str], keep: bool = True) -> None:
        """Record ``files`` as this command's (with ``keep``: plus the owned files still
        present), before they are written."""
        write_record(self.root, self.command, [*files, *(self.existing if keep else ())])


def claim(out: str | Path, command: str, *, family: Sequence[str] = (),
          legacy: Optional[Legacy] = None, option: str = "--out") -> Output:
    """Check that ``command`` may write ``out`` (rules 1-3 of the module docstring) and return
    its own earlier output there. Writes nothing.

    Args:
        family: commands whose outputs this one shares (``train`` and ``finetune``).
        legacy: for a folder without a record: the entries of ``command``'s own earlier output,
            recognised by their content (``[]`` when they are not its own).
    Raises:
        OutputExistsError: ``out`` is in a dataset split, is a file, holds another command's
            output, or holds files neither recorded nor recognised (up to :data:`SHOWN` named).
    """
    root = Path(out)
    check_not_in_split(root, option)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"{option} {out} is a file, not a folder; choose a folder")
    if not root.is_dir():
        return Output(root, command)
    record = read_record(root)
    if record is not None and record.get("command") not in {command, *family}:
        raise OutputExistsError(
            f"{option} {out} holds the output of `isdm {record.get('command')}` "
            f"({RECORD}); `isdm {command}` never writes into another command's output: choose "
            "another folder")
    owned = tuple(record["files"]) if record is not None else tuple(legacy(root) if legacy else ())
    foreign = _foreign(root, owned)
    if foreign:
        raise OutputExistsError(
            f"{option} {out} holds {listing(foreign)} that "
            f"`isdm {command}` has no record of writing; isdm never deletes or overwrites "
            "them, not even with --overwrite: move them away or choose another folder")
    existing = tuple(f for f in owned if "*" not in f
                     and ((root / f).exists() or (root / f).is_symlink()))
    return Output(root, command, owned, existing)


@contextlib.contextmanager
def exclusive(out: str | Path, command: str, name: str = LOCK,
              option: str = "--out") -> Iterator[Path]:
    """Create ``out`` (outside any dataset split) and hold its lock while the block runs.

    Raises:
        OutputExistsError: ``out`` is inside a dataset split.
        BusyError: another process holds the lock (named in the message).
        WriteError: ``out`` cannot be created (read-only file system, permissions, a file in
            the way).
    """
    from isdm.utils.locks import exclusive as take

    root = Path(out)
    check_not_in_split(root, option)
    created = not root.exists()
    make_folder(root, option)
    try:
        with take(root / name, f"isdm {command}", f"{option} {out}"):
            yield root
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder
            _remove_if_empty(root)
        raise


def _remove_if_empty(root: Path) -> None:
    """Delete ``root`` when it holds only neutral files (the lock, the record)."""
    try:
        entries = list(root.iterdir())
        if all(is_neutral(p.name) and p.is_file() for p in entries):
            for p in entries:
                p.unlink()
            root.rmdir()
    except OSError:
        pass


def publish(staging: Path, out: Path, command: str, legacy: Optional[Legacy] = None) -> None:
    """Rename the finished folder ``staging`` (built beside ``out``) onto ``out``.

    ``staging`` gets the record (every file in it) and the neutral files of ``out`` (its lock by
    hard link: the same lock a waiting process sees; ``.gitignore``); ``out`` is checked again
    for files that arrived while ``staging`` was built (refused, kept); then the earlier output
    is moved aside and deleted after the rename.
    """
    write_record(staging, command, [p.relative_to(staging).as_posix()
                                    for p in staging.rglob("*")
                                    if p.is_file() and not is_neutral(p.name)])
    claim(out, command, legacy=legacy)
    for entry in out.iterdir() if out.is_dir() else []:
        if is_neutral(entry.name) and entry.name != RECORD and entry.is_file():
            try:
                os.link(entry, staging / entry.name)
            except OSError:
                shutil.copyfile(entry, staging / entry.name)
    old = None
    if out.exists():
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
        old = out.with_name(f".{out.name}.{command.replace(' ', '-')}.{host}.{os.getpid()}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_folder(root: Path, option: str = "--out") -> None:
    """``mkdir -p root``; a clear WriteError when the file system refuses."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputExistsError(f"{option} {root} is a file, not a folder; choose a folder") \
            from None
    except OSError as e:
        raise WriteError(f"cannot create {option} {root}: {e.strerror or e}; nothing was "
                         "written. Choose a folder on a writable file system (or fix its "
                         "permissions)") from None
