"""One cell as a job: what it trains on (:class:`CellJob`, built by :func:`make_job`), and
:func:`run_job`, which a pool worker (or the calling process) runs: take the cell from the
store, or train it under the cell's lock (resuming saved progress), test it and store it.

Data are loaded once per process and kept (:func:`load_real`, :func:`load_synthetic_set`),
keyed by the files' digests and the config keys that decode them, so a worker that runs many
cells of one dataset decodes it once, and an edited folder is never served stale.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from isdm.config import Config, to_dict
from isdm.evaluation.cell import Cell
from isdm.evaluation.spec import CellSpec, cell_spec
from isdm.evaluation.store import CellRecord, CellStore

__all__ = ["CellJob", "Digests", "make_job", "run_job", "load_real", "load_synthetic_set",
           "SAVE_EVERY_S"]

SAVE_EVERY_S = 300.0  # a cell in training saves its progress at most this often
_CHUNK = 10  # steps between checks of the clock (chunks change no bit of a run)
_MEMO: "OrderedDict[tuple, Any]" = OrderedDict()
_MEMO_SIZE = 6  # real train, real test and a few synthetic sets per process


@dataclass(frozen=True)
class CellJob:
    """A cell to run: the config (its ``evaluate`` recipe and ``data`` keys), the real dataset,
    the plan, the spec (its key), the synthetic folder it trains on (None: none), whether the
    record keeps the selected weights, the store, and how often progress is saved (None: never)."""

    cfg: Config
    data_root: str
    cell: Cell
    spec: CellSpec
    synthetic: Optional[str]
    keep_weights: bool
    store: str
    save_every_s: Optional[float] = SAVE_EVERY_S


class Digests:
    """The digests of one dataset's splits and of synthetic folders, computed once each."""

    def __init__(self, data_root: str | Path) -> None:
        self.root = Path(data_root)
        self._cache: dict[str, str] = {}

    def split(self, name: str) -> str:
        """The digest of ``<root>/<name>`` ('' when the split is absent)."""
        from isdm.data.digest import dataset_digest

        if name not in self._cache:
            found = (self.root / name).is_dir()
            self._cache[name] = dataset_digest(self.root, name) if found else ""
        return self._cache[name]

    def synthetic(self, folder: str | Path) -> str:
        """The digest of a synthetic folder's ``samples/`` + ``labels/``, computed again when
        either folder changed (a rewritten file is renamed into place: the folder's mtime)."""
        from isdm.data.digest import synthetic_digest

        stamps = [(Path(folder) / sub).stat().st_mtime_ns if (Path(folder) / sub).is_dir() else 0
                  for sub in ("samples", "labels")]
        key = f"synthetic:{Path(folder).resolve()}:{stamps}"
        if key not in self._cache:
            self._cache[key] = synthetic_digest(folder)
        return self._cache[key]


def make_job(cfg: Config, data_root: str | Path, cell: Cell, *, digests: Digests,
             synthetic: Optional[str | Path], test: bool, device_type: str, store: CellStore,
             save_every_s: Optional[float] = SAVE_EVERY_S,
             steps: Optional[int] = None) -> CellJob:
    """The job of ``cell`` of ``cfg`` on ``data_root`` (+ the ``synthetic`` folder when its mix
    draws synthetic images); ``test``: the record holds test counts (needs ``<root>/test``).
    Real-only records keep their weights. ``steps``: the cell's optimiser steps (default
    ``evaluate.steps``; with ``auto`` the calibrated steps of its architecture,
    :func:`isdm.evaluation.calibration.resolve_steps`)."""
    uses = cell.plan.mix.uses_synthetic
    spec = cell_spec(cfg, cell.arch, cell.mix, cell.seed, real=digests.split("train"),
                     test=digests.split("test") if test else "",
                     synthetic=digests.synthetic(synthetic) if uses and synthetic else "",
                     device=device_type, steps=steps, protocol=cell.protocol.code)
    return CellJob(cfg, str(data_root), cell, spec, str(synthetic) if uses and synthetic else None,
                   keep_weights=not uses, store=str(store.root), save_every_s=save_every_s)


def _memo(key: tuple, load: Any) -> Any:
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = _MEMO[key] = load()
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


def _loading_key(cfg: Config) -> str:
    """The config keys that decide how images are loaded for the segmenter."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k != "root"}
    e = cfg.evaluate
    return json.dumps({"data": data, "image_size": e.image_size,
                       "window_overlap": e.window_overlap}, sort_keys=True, default=str)


def load_real(cfg: Config, data_root: str | Path, split: str, digest: str) -> Any:
    """:func:`isdm.evaluation.loading.load_split`, kept per (folder, digest, loading keys)."""
    from isdm.evaluation.loading import load_split

    key = ("real", str(Path(data_root).resolve()), split, digest, _loading_key(cfg))
    return _memo(key, lambda: load_split(cfg, data_root, split))


def load_synthetic_set(cfg: Config, folder: str | Path, digest: str) -> Any:
    """A synthetic folder at ``evaluate.image_size``, kept per (folder, digest, loading keys)."""
    from isdm.evaluation.loading import eval_data_config, load_synthetic

    key = ("synthetic", str(Path(folder).resolve()), digest, _loading_key(cfg))
    return _memo(key, lambda: load_synthetic(folder, eval_data_config(cfg.data,
                                                                      cfg.evaluate.image_size)))


def run_job(job: CellJob, device: torch.device) -> tuple[CellRecord, bool]:
    """``(record, trained here?)``: the stored record of the job's cell, or the cell trained
    (resumed from its saved progress when there is one), tested and stored."""
    store = CellStore(job.store)
    record = store.get(job.spec)
    if record is not None:
        return record, False
    with store.lock(job.spec):
        record = store.get(job.spec)  # another process finished it while we waited
        if record is not None:
            return record, False
        return _train(job, store, device), True


def _train(job: CellJob, store: CellStore, device: torch.device) -> CellRecord:
    from isdm.evaluation.cell import CellRun
    from isdm.evaluation.loading import empty_set
    from isdm.evaluation.metrics import summarize

    t0 = time.perf_counter()
    cfg, spec = job.cfg, job.spec
    real = load_real(cfg, job.data_root, "train", spec.real)
    synth = load_synthetic_set(cfg, job.synthetic, spec.synthetic) if job.synthetic \
        else empty_set(cfg)
    test = load_real(cfg, job.data_root, "test", spec.test) if spec.test else None
    steps = spec.steps
    run = CellRun(cfg, job.cell, real, synth, device=device, steps=steps)
    resumed = _resume(run, store, spec)
    if resumed < 0:  # a state that did not load may have left the run half-loaded
        run, resumed = CellRun(cfg, job.cell, real, synth, device=device, steps=steps), 0
    saved = time.perf_counter()
    while run.step < steps:
        run.advance(min(steps, run.step + min(run.val_every, _CHUNK)))
        due = job.save_every_s is not None and time.perf_counter() - saved >= job.save_every_s
        if due and run.step < steps:
            store.save_progress(spec, {"key": spec.key, "run": run.state_dict()})
            saved = time.perf_counter()
    result = run.finish(test)
    fit = result.fit
    run_info = {"threads": torch.get_num_threads(), "device": str(device),
                "seconds": time.perf_counter() - t0, "resumed_at_step": resumed,
                "torch": torch.__version__}
    record = store.put(spec, fit.summary(), run_info,
                       test=summarize(result.counts) if result.counts is not None else None,
                       counts=result.counts, weights=fit.state_dict if job.keep_weights else None)
    store.drop_progress(spec)
    return record


def _resume(run: Any, store: CellStore, spec: CellSpec) -> int:
    """Load the cell's saved progress into ``run``; the step it resumes at (0: nothing saved,
    -1: a saved state that does not load)."""
    saved = store.load_progress(spec)
    if not saved or saved.get("key") != spec.key:
        return 0
    try:
        run.load_state_dict(saved["run"])
    except Exception as e:  # noqa: BLE001 -- a state of an older isdm: start again
        print(f"[isdm] cell {spec.describe()}: its saved progress does not load ({e}); "
              "training it from the start")
        return -1
    return run.step
