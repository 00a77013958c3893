"""The sampling output folder: per-sample files, the manifest, the run identity and the grid.

Layout (one file per sample in each folder, the same name ``{i:06d}_{mask key}.png``)::

    images/          real image of the conditioning mask (resized; augmented alongside the mask;
                     a gray placeholder for folder masks without an image)
    labels/          uint8 class ids (binary: 0/1), 8-bit gray PNG, ignore_index kept
    colored_labels/  palette PNG (isdm.data.masks.colorize), binary too
    samples/         the generated image, RGB PNG
    manifest.jsonl   one JSON line per finished sample, sorted by index at the end of a run
    config.json      the resolved config (model / diffusion from the checkpoint)
    run.json         checkpoint path + hash and the identity of the run (what decides the bytes)
    summary.json     counts, timings, class distribution before / after
    grid.png         colored label | sample pairs of the first 16 finished samples
    manifest.lock    held (``flock``) while a process appends to or rewrites the manifest

Ownership (:mod:`isdm.utils.ownership`): ``run.json`` and the manifest are the record of what
isdm wrote here; any other file (in the per-sample folders or beside them) is refused, with or
without ``--overwrite``, and so is a folder inside a dataset split.

Claim: ``run.json`` is created first, and only if absent (a hard link of a finished temp file,
so it appears complete and exactly one of several racing processes creates it); the others read
it and join (same identity) or are refused. isdm writes nothing else before the claim.

Manifest lines (JSON, sorted keys):

- ``{"index": i, "file": name, "pending": true}``: isdm is about to write (or wrote, unverified)
  the four files ``<folder>/<name>``; appended before a batch is generated.
- the sample's record (:meth:`isdm.sampling.job._Job.record`) plus ``files``:
  ``{"images/<name>": {"sha256": ..., "size": ...}, ...}`` for its four files; appended after
  the four files are written (each atomically: temp file + rename).

A sample is complete exactly when it has a record and its four files have the recorded sizes
and SHA-256 digests (:meth:`OutputDir.verify`); a zero-byte, truncated or missing file makes it
incomplete and a rerun regenerates it. The PNG bytes are a pure function of the plan, so the
records are too. :meth:`OutputDir.finalize_manifest` rewrites the manifest sorted by index;
a name isdm wrote that is not a verified sample stays as a ``pending`` line, so the manifest
names every per-sample file isdm may have written: that is what ``--overwrite`` may delete.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from isdm.errors import OutputExistsError
from isdm.utils import ownership
from isdm.utils.io import atomic_write_bytes, atomic_write_json, sha256_file

__all__ = ["OutputDir", "FOLDERS", "OutputExistsError", "sample_name"]

FOLDERS = ("images", "labels", "colored_labels", "samples")
_FILES = ("manifest.jsonl", "config.json", "run.json", "summary.json", "grid.png")
_LOCK = "manifest.lock"  # empty; only ever locked, so one left by a deleted run is no one's data
_CLAIM = re.compile(r"\.run\.json\.[0-9a-f]+\.claim")  # _create_if_absent's staging file


def sample_name(i: int, key: str) -> str:
    """``000012_sub__img_003.png``: sample index, then the mask key with '/' made flat."""
    return f"{i:06d}_{key.replace('/', '__')}.png"


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class OutputDir:
    """One sampling output folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- claim ---------------------------------------------------------------------------
    def prepare(self, identity: Mapping[str, Any], run_info: Mapping[str, Any], *,
                num_samples: int, overwrite: bool) -> bool:
        """Claim the folder for this run; return True when earlier results are reused.

        A folder without ``run.json`` is claimed only if nothing in isdm's folders or under
        isdm's file names is there already. A folder of a different ``identity`` (config or
        checkpoint) raises :class:`OutputExistsError` unless ``overwrite``; a smaller
        ``num_samples`` than before too (it would leave extra samples behind); a larger one
        extends the run. ``overwrite`` deletes the files the manifest names and isdm's known
        files, and only when the per-sample folders hold nothing else (checked before
        anything is deleted).
        """
        identity = json.loads(json.dumps(identity))  # as stored: tuples become lists
        new = {"identity": identity, "num_samples": num_samples, **run_info}
        self.root.mkdir(parents=True, exist_ok=True)
        old = self._claim(new)
        if old is None:
            self._make_folders()
            return False
        if overwrite:
            foreign = self._foreign()
            if foreign:
                raise OutputExistsError(
                    f"--overwrite refused, nothing was deleted: {self.root} holds "
                    f"{_listing(foreign, self.root)} that isdm has no record of writing; move "
                    "them away or use another --out")
            self._clear()
        elif old.get("identity") != identity:
            diff = _diff(old.get("identity", {}), identity)
            raise OutputExistsError(f"{self.root} was written by a different run "
                                    f"({'; '.join(diff[:6])}); {self._fix()}")
        elif int(old.get("num_samples", 0)) > num_samples:
            raise OutputExistsError(
                f"{self.root} holds a run of {old['num_samples']} samples; sampling "
                f"{num_samples} there would leave the extra ones behind: set "
                f"sample.num_samples >= {old['num_samples']}, or {self._fix()}")
        atomic_write_json(self.root / "run.json", new)
        self._make_folders()
        return not overwrite

    def _claim(self, new: Mapping[str, Any]) -> Optional[dict]:
        """Create ``run.json`` if absent (None: this call claimed the folder), else read it."""
        run_file = self.root / "run.json"
        other = ownership.read_record(self.root)
        if other is not None:
            raise OutputExistsError(
                f"{self.root} holds the output of `isdm {other.get('command')}` "
                f"({ownership.RECORD}); `isdm sample` never writes into another command's "
                "output: use another --out")
        if not run_file.exists():
            unknown = self._foreign(proven=False)
            if not unknown and _create_if_absent(run_file, new):
                return None
            if not run_file.exists():  # not a concurrent isdm run: it creates run.json first
                raise OutputExistsError(
                    f"{self.root} already holds {_listing(unknown, self.root)} and no run.json, "
                    "so isdm did not write them and never deletes them, not even with "
                    "--overwrite: use another --out, or move them away")
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or "identity" not in old:
            raise OutputExistsError(f"{run_file} is not a run.json written by isdm sample; "
                                    "use another --out")
        return old

    def _fix(self) -> str:
        """The way out of a refusal: --overwrite only when it would not be refused too."""
        foreign = self._foreign()
        if not foreign:
            return "use another --out, or --overwrite to delete this folder's isdm outputs"
        return (f"use another --out (--overwrite would be refused too: {self.root} holds "
                f"{_listing(foreign, self.root)} that isdm has no record of writing)")

    def _make_folders(self) -> None:
        for folder in FOLDERS:
            (self.root / folder).mkdir(exist_ok=True)

    def _foreign(self, proven: bool = True) -> list[Path]:
        """Files in the folder isdm has no record of writing: in the per-sample folders, those
        whose name no manifest line holds; elsewhere, any but isdm's own names (with
        ``proven=False``, before ``run.json`` exists: every file but neutral ones, temps and
        the claim of a concurrent shard)."""
        names = {ln["file"] for ln in self._lines()} if proven else set()
        top = set(_FILES) | {_LOCK} if proven else {_LOCK}  # a left-over lock is no one's data
        found = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if entry.name in FOLDERS and entry.is_dir() and not entry.is_symlink():
                found += [p for p in sorted(entry.rglob("*")) if (p.is_symlink() or not p.is_dir())
                          and not _owned(p.relative_to(entry), names)]
            elif not (entry.name in top or ownership.is_neutral(entry.name)
                      or ownership.is_temp(entry.name, top) or _CLAIM.fullmatch(entry.name)):
                found.append(entry)
        return found

    def _clear(self) -> None:
        """Delete the per-sample files the manifest names, then isdm's known files; the
        manifest goes last, so an interrupted clear can be repeated."""
        names = {ln["file"] for ln in self._lines()}
        for folder in FOLDERS:
            d = self.root / folder
            for p in sorted(d.iterdir()) if d.is_dir() else []:
                if (p.is_symlink() or not p.is_dir()) and _owned(p.relative_to(d), names):
                    p.unlink()
        for name in ("grid.png", "summary.json", "config.json", "manifest.jsonl"):
            (self.root / name).unlink(missing_ok=True)

    # ---- samples -------------------------------------------------------------------------
    def write_sample(self, name: str, image: Optional[np.ndarray], label: np.ndarray,
                     sample: np.ndarray) -> dict[str, dict[str, Any]]:
        """Write one sample's four files; return ``{"<folder>/<name>": {sha256, size}}``.

        Args:
            image: uint8 [H, W, 3] real image, or None (gray placeholder).
            label: uint8 [H, W] class ids.
            sample: uint8 [H, W, 3] generated image.
        """
        from PIL import Image

        from isdm.data.masks import colorize
        from isdm.sampling.mask_sources import PLACEHOLDER_GRAY

        if image is None:
            image = np.full((*label.shape, 3), PLACEHOLDER_GRAY, np.uint8)
        pngs = {"images": Image.fromarray(np.ascontiguousarray(image), "RGB"),
                "labels": Image.fromarray(np.ascontiguousarray(label), "L"),
                "colored_labels": colorize(label),
                "samples": Image.fromarray(np.ascontiguousarray(sample), "RGB")}
        files = {}
        for folder, png in pngs.items():
            data = _png(png)
            atomic_write_bytes(self.root / folder / name, data)
            files[f"{folder}/{name}"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                         "size": len(data)}
        return files

    def verify(self, record: Mapping[str, Any]) -> bool:
        """True when ``record`` lists its sample's four files and each has the recorded size
        and SHA-256 (the size is compared first: a zero-byte or truncated file costs no hash)."""
        files = record.get("files")
        if not isinstance(files, dict) or set(files) != {f"{f}/{record['file']}" for f in FOLDERS}:
            return False
        for rel, meta in files.items():
            path = self.root / rel
            try:
                if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
                    return False
            except (OSError, KeyError, TypeError):
                return False
        return True

    # ---- manifest ------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``manifest.lock`` exclusively: appends and rewrites of the manifest by
        concurrent shards never interleave, so no line is lost to a rewrite."""
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, lines: Iterable[Mapping[str, Any]]) -> None:
        """Append complete JSON lines in one write; a torn last line left by a killed run is
        ended first, so it stays one unparsable line that readers skip."""
        data = "".join(json.dumps(ln, sort_keys=True) + "\n" for ln in lines).encode()
        with self._locked():
            fd = os.open(self.root / "manifest.jsonl",
                         os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)
            finally:
                os.close(fd)

    def _lines(self) -> list[dict]:
        """The parsable manifest lines with an int ``index`` and a plain file ``name``."""
        path = self.root / "manifest.jsonl"
        out = []
        for text in path.read_text().splitlines() if path.exists() else []:
            try:
                line = json.loads(text)
                ok = isinstance(line["index"], int) and _plain(line["file"])
            except (ValueError, KeyError, TypeError):
                continue
            if ok:
                out.append(line)
        return out

    def read_records(self) -> dict[int, dict]:
        """Sample records (not ``pending`` lines) by index; the last one of an index wins."""
        return {ln["index"]: ln for ln in self._lines() if "files" in ln}

    def finalize_manifest(self, expected: Sequence[str],
                          verified: Mapping[int, Mapping[str, Any]]) -> list[int]:
        """Rewrite the manifest atomically, sorted by index: the record of each sample i whose
        ``file`` is ``expected[i]`` and that passes :meth:`verify` (``verified``: records
        already checked by this process), then one ``pending`` line for each other name of a
        line whose files still exist. Returns the complete indices."""
        with self._locked():
            lines = self._lines()
            records = {ln["index"]: ln for ln in lines if "files" in ln}
            done = [i for i, name in enumerate(expected) if (rec := records.get(i)) is not None
                    and rec["file"] == name and (verified.get(i) == rec or self.verify(rec))]
            final = [records[i] for i in done]
            kept = {rec["file"] for rec in final}
            for ln in sorted(lines, key=lambda ln: (ln["index"], ln["file"])):
                if ln["file"] not in kept and any((self.root / f / ln["file"]).exists()
                                                  for f in FOLDERS):
                    kept.add(ln["file"])
                    final.append({"index": ln["index"], "file": ln["file"], "pending": True})
            final.sort(key=lambda ln: ln["index"])
            text = "".join(json.dumps(ln, sort_keys=True) + "\n" for ln in final)
            atomic_write_bytes(self.root / "manifest.jsonl", text.encode())
        return done

    # ---- grid ----------------------------------------------------------------------------
    def write_grid(self, names: list[str], columns: int = 4) -> Optional[Path]:
        """``grid.png``: (colored label | sample) pairs, ``columns`` pairs per row; images
        smaller than 96 px are enlarged with nearest neighbour."""
        from PIL import Image

        if not names:
            return None
        tiles = []
        for name in names:
            label = Image.open(self.root / "colored_labels" / name).convert("RGB")
            sample = Image.open(self.root / "samples" / name).convert("RGB")
            tiles.append((label, sample))
        w, h = tiles[0][1].size
        zoom = max(1, 96 // max(w, h))  # small images are enlarged (nearest) to be visible
        w, h = w * zoom, h * zoom
        pad = 2
        cols = min(columns, len(tiles))
        rows = (len(tiles) + cols - 1) // cols
        grid = Image.new("RGB", (cols * (2 * w + 3 * pad), rows * (h + pad) + pad), (255, 255, 255))
        for k, (label, sample) in enumerate(tiles):
            x0 = (k % cols) * (2 * w + 3 * pad) + pad
            y0 = (k // cols) * (h + pad) + pad
            grid.paste(label.resize((w, h), Image.NEAREST), (x0, y0))
            grid.paste(sample.resize((w, h), Image.NEAREST), (x0 + w + pad, y0))
        path = self.root / "grid.png"
        atomic_write_bytes(path, _png(grid))
        return path


def _create_if_absent(path: Path, obj: Any) -> bool:
    """Write ``obj`` as JSON to ``path`` unless a file is there; True if this call created it.
    The content is finished before the name appears (a hard link of a complete temp file), so
    a concurrent reader never sees a partial file and exactly one racing writer wins."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.claim")
    atomic_write_json(staging, obj)
    try:
        os.link(staging, path)
        return True
    except FileExistsError:
        return False
    finally:
        staging.unlink()


def _plain(name: Any) -> bool:
    """A bare file name (what a manifest may name; never a path out of the folder)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name \
        and "\\" not in name


def _owned(rel: Path, names: set[str]) -> bool:
    """``rel`` (relative to a per-sample folder) is a named file or an atomic-write temp of one."""
    return len(rel.parts) == 1 and (rel.name in names or ownership.is_temp(rel.name, names))


def _listing(paths: list[Path], root: Path) -> str:
    return ownership.listing([p.relative_to(root).as_posix() for p in paths])


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
