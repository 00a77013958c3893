"""The cell store: every finished downstream cell, saved as it finishes, keyed by what it
depends on (:class:`isdm.evaluation.spec.CellSpec`), shared by ``evaluate``, ``curate``,
``tune`` and the plateau bench, across runs, experiments and machines.

Where: ``--cell-cache DIR``, else ``$ISDM_CELL_CACHE``, else ``.isdm/cells`` under the current
directory (:func:`resolve_root`): outside every DVC output, since DVC deletes a stage's outputs
before it runs the stage. Layout, readable without isdm::

    <root>/<key>/record.json   the spec, the fit (best step, best validation mIoU, history of
                               validations, steps, images seen, seconds), how it ran (threads,
                               device, torch), the test metrics, and the digests of the files:
    <root>/<key>/counts.npz    ``counts``: per test image (tp, fp, fn) ``[N, C, 3]`` (tested cells)
    <root>/<key>/weights.pt    the selected weights (real-only cells: label fidelity of a new
                               synthetic set and the curation scorer reuse the model)
    <root>/.progress/<key>.pt  a cell in training: its resumable state (:mod:`.cell`; a
                               calibration's run: the key of the cell's spec with steps 0)
    <root>/.calibration/<key>.json  a calibration of ``evaluate.steps: auto`` (:mod:`.calibration`)
    <root>/.locks/<key>.lock   held while a process trains the cell (others wait, then reuse)
    <root>/.tmp/               records being written

A record is written into ``.tmp/`` and renamed into place whole (a folder rename is atomic), so
a killed writer leaves only a temp folder, never a half record; a record whose files are
missing or differ from the sizes / digests in its ``record.json`` does not count as present and
is replaced by the next run. Temps of dead writers (this host, pid gone) or older than a day
are removed when a store is opened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from isdm.evaluation.spec import CellSpec

__all__ = ["ENV", "DEFAULT_ROOT", "resolve_root", "CellRecord", "CellStore"]

ENV = "ISDM_CELL_CACHE"
DEFAULT_ROOT = ".isdm/cells"
FORMAT = 1
_HOST = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname()) or "host"
_STALE_S = 24 * 3600


def resolve_root(cell_cache: Optional[str | Path] = None) -> Path:
    """The store folder: ``cell_cache``, else ``$ISDM_CELL_CACHE``, else ``./.isdm/cells``."""
    chosen = cell_cache or os.environ.get(ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def _finite(tree: Any) -> Any:
    """Non-finite floats -> None (strict JSON); numpy scalars -> Python numbers."""
    if isinstance(tree, Mapping):
        return {str(k): _finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_finite(v) for v in tree]
    if isinstance(tree, (float, np.floating)):
        return float(tree) if math.isfinite(tree) else None
    if isinstance(tree, np.integer):
        return int(tree)
    return tree


@dataclass(frozen=True)
class CellRecord:
    """A finished cell as stored: ``fit`` (``best_step``, ``best_val_miou``, ``steps``,
    ``images_seen``, ``epochs``, ``val_every``, ``train_seconds``, ``history``), ``run``
    (``threads``, ``device``, ``seconds``, ``torch``, ``host``, ``created``), ``test`` (the
    test metrics, None for an untested cell), ``counts`` (test counts ``[N, C, 3]`` or None)
    and ``weights`` (the path of the selected weights, or None)."""

    key: str
    spec: dict
    fit: dict
    run: dict
    test: Optional[dict]
    counts: Optional[np.ndarray]
    weights: Optional[Path]

    @property
    def best_val_miou(self) -> float:
        v = self.fit["best_val_miou"]
        return float("nan") if v is None else float(v)

    def load_weights(self) -> dict:
        """The selected weights (a state dict on the CPU); checks the file's digest."""
        import torch

        from isdm.errors import EvaluationError
        from isdm.utils.io import sha256_file

        if self.weights is None:
            raise EvaluationError(f"cell {self.key} ({self.spec.get('mix')}) kept no weights: only "
                                  "real-only cells store theirs")
        if sha256_file(self.weights) != self.run["files"]["weights.pt"]["sha256"]:
            raise EvaluationError(f"{self.weights} does not match its record (changed or torn); "
                                  f"delete {self.weights.parent} and run again to retrain the cell")
        return torch.load(self.weights, map_location="cpu", weights_only=True)


class CellStore:
    """The records under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._swept = False

    def __repr__(self) -> str:
        return f"CellStore({str(self.root)!r})"

    # ------------------------------------------------------------------ reading
    def folder(self, spec: CellSpec | str) -> Path:
        return self.root / (spec if isinstance(spec, str) else spec.key)

    def get(self, spec: CellSpec | str) -> Optional[CellRecord]:
        """The record of ``spec`` (or of a key), or None when absent or torn."""
        folder = self.folder(spec)
        try:
            meta = json.loads((folder / "record.json").read_text())
        except (OSError, ValueError):
            return None
        files = meta.get("run", {}).get("files", {})
        for name, info in files.items():
            try:
                if (folder / name).stat().st_size != info["bytes"]:
                    return None
            except OSError:
                return None
        counts = None
        if "counts.npz" in files:
            try:
                with np.load(folder / "counts.npz") as z:
                    counts = z["counts"]
            except (OSError, ValueError, KeyError):
                return None
        weights = folder / "weights.pt" if "weights.pt" in files else None
        return CellRecord(meta["key"], meta["spec"], meta["fit"], meta["run"], meta.get("test"),
                          counts, weights)

    def has(self, spec: CellSpec) -> bool:
        return self.get(spec) is not None

    def count(self, specs: list[CellSpec]) -> int:
        return sum(self.has(s) for s in specs)

    # ------------------------------------------------------------------ writing
    def put(self, spec: CellSpec, fit: Mapping[str, Any], run: Mapping[str, Any],
            test: Optional[Mapping[str, float]] = None, counts: Optional[np.ndarray] = None,
            weights: Optional[Mapping[str, Any]] = None) -> CellRecord:
        """Write the record of ``spec`` atomically (replacing a torn one) and return it."""
        import torch

        from isdm.errors import WriteError
        from isdm.utils.io import sha256_file

        self._sweep()
        tmp = self.root / ".tmp" / f"{spec.key}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            files: dict[str, dict[str, Any]] = {}
            if counts is not None:
                with open(tmp / "counts.npz", "wb") as f:
                    np.savez_compressed(f, counts=np.asarray(counts))
            if weights is not None:
                torch.save(dict(weights), tmp / "weights.pt")
            for name in ("counts.npz", "weights.pt"):
                if (tmp / name).exists():
                    files[name] = {"bytes": (tmp / name).stat().st_size,
                                   "sha256": sha256_file(tmp / name)}
            meta = {"format": FORMAT, "key": spec.key, "spec": spec.identity(),
                    "fit": _finite(dict(fit)), "test": _finite(dict(test)) if test else None,
                    "run": _finite({**run, "files": files, "host": _HOST,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})}
            (tmp / "record.json").write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n")
            self._publish(tmp, self.folder(spec))
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WriteError(f"cannot write the cell record {self.folder(spec)}: {e}; earlier "
                             "records are intact") from e
        record = self.get(spec)
        assert record is not None, f"record {spec.key} vanished after it was written"
        return record

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``; a torn ``final`` is moved aside first, a valid one
        (another process finished the same cell) wins and ``tmp`` is dropped."""
        for _ in range(3):
            try:
                os.rename(tmp, final)
                return
            except OSError:
                if not final.exists():
                    raise
            if self.get(final.name) is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            aside = self.root / ".tmp" / f"{final.name}.torn.{uuid.uuid4().hex[:8]}"
            with contextlib.suppress(OSError):
                os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        raise OSError(f"could not rename {tmp} to {final}")

    def _sweep(self) -> None:
        """Remove temp folders of dead writers on this host, and any older than a day."""
        if self._swept:
            return
        from isdm.utils.io import pid_running

        self._swept = True
        for entry in (self.root / ".tmp").glob("*"):
            parts = entry.name.split(".")
            dead = len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit() \
                and not pid_running(int(parts[2]))
            with contextlib.suppress(OSError):
                if dead or time.time() - entry.stat().st_mtime > _STALE_S or ".torn." in entry.name:
                    shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ cells in training
    @contextlib.contextmanager
    def lock(self, spec: CellSpec) -> Iterator[None]:
        """Hold the cell's lock (an OS file lock: released when its process dies); a process
        waiting for it says so every :data:`isdm.utils.locks.WAIT_LINE_EVERY_S` seconds."""
        from isdm.utils.locks import lock

        with lock(self.root / ".locks" / f"{spec.key}.lock",
                  what=f"cell {spec.describe()}, trained by another process"):
            yield

    def progress_path(self, spec: CellSpec) -> Path:
        return self.root / ".progress" / f"{spec.key}.pt"

    def save_progress(self, spec: CellSpec, state: Mapping[str, Any]) -> None:
        """The resumable state of a cell in training (atomic; replaces the previous one)."""
        import torch

        from isdm.utils.io import atomic_path

        with atomic_path(self.progress_path(spec)) as tmp:
            torch.save(dict(state), tmp)

    def load_progress(self, spec: CellSpec) -> Optional[dict]:
        """The saved state of a cell in training, or None (absent or unreadable)."""
        import torch

        path = self.progress_path(spec)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start the cell again
            return None

    def drop_progress(self, spec: CellSpec) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.progress_path(spec).unlink()
