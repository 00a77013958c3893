"""The calibration's work on the worker pool: advance a real-only cell's training run by one
chunk (:func:`advance_chunk`), and hand a run that stopped at N over to its cell at N
(:func:`hand_over`).

A cell's training run does not depend on the step it will stop at (:class:`SegmenterRun` never
reads ``evaluate.steps``), so the states it passes through are those of every cell of that run,
whatever their N. The calibration saves them in the cell store's progress files under the
run's spec, the cell's spec with ``steps = 0`` (:func:`run_spec`: no cell has 0 steps). When the
rule stops at N, :func:`hand_over` saves the state at N as the progress of the cell at N, and
the cell job (:func:`isdm.evaluation.worker.run_job`) finishes it like any resumed cell: it has
no step left to train, so it selects, tests and stores the cell, bit for bit the cell trained
straight to N (:mod:`isdm.evaluation.loop`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from isdm.config import Config
from isdm.evaluation.cell import Cell
from isdm.evaluation.spec import CellSpec
from isdm.evaluation.store import CellStore
from isdm.evaluation.worker import SAVE_EVERY_S

__all__ = ["ChunkJob", "run_spec", "advance_chunk", "hand_over"]

_CHUNK = 10  # steps between checks of the clock (as the cell jobs: no bit of a run changes)


def run_spec(spec: CellSpec) -> CellSpec:
    """The spec of the training run of ``spec``'s cell: its progress key and lock."""
    return dataclasses.replace(spec, steps=0)


@dataclass(frozen=True)
class ChunkJob:
    """Advance the run ``run`` (the real-only ``cell`` of ``cfg`` on ``data_root``) to step
    ``to_step``, resuming its saved progress in the store, and save it there again."""

    cfg: Config
    data_root: str
    cell: Cell
    run: CellSpec
    to_step: int
    store: str
    save_every_s: Optional[float] = SAVE_EVERY_S


def advance_chunk(job: ChunkJob, device: torch.device) -> dict[str, Any]:
    """``{"step", "history", "val_every", "trained"}`` of the run after the chunk (a pool
    function: runs in a worker). A run saved beyond ``to_step`` (a calibration killed in the
    middle of a round) is not trained and reports its whole history."""
    from isdm.evaluation.cell import CellRun
    from isdm.evaluation.loading import empty_set
    from isdm.evaluation.worker import _resume, load_real

    store = CellStore(job.store)
    cfg = job.cfg
    with store.lock(job.run):
        real = load_real(cfg, job.data_root, "train", job.run.real)
        run = CellRun(cfg, job.cell, real, empty_set(cfg), device=device)
        resumed = _resume(run, store, job.run)
        if resumed < 0:  # a state that did not load may have left the run half-loaded
            run, resumed = CellRun(cfg, job.cell, real, empty_set(cfg), device=device), 0
        saved = time.perf_counter()
        while run.step < job.to_step:
            run.advance(min(job.to_step, run.step + min(run.val_every, _CHUNK)))
            due = job.save_every_s is not None and \
                time.perf_counter() - saved >= job.save_every_s
            if due or run.step == job.to_step:
                store.save_progress(job.run, {"key": job.run.key, "run": run.state_dict()})
                saved = time.perf_counter()
        return {"step": run.step, "history": [dict(h) for h in run.loop.history],
                "val_every": run.val_every, "trained": run.step - resumed}


def hand_over(store: CellStore, run: CellSpec, cell: CellSpec) -> bool:
    """Save the run's state as the progress of the cell ``cell`` when the run stands exactly at
    ``cell.steps`` and the cell is not in the store yet; the run's own progress is dropped
    either way (a state is ~4x the weights: not kept once the calibration is done). False:
    nothing handed over (the cell job then trains the cell straight to N: the same bits)."""
    saved = store.load_progress(run)
    done = False
    if saved and saved.get("key") == run.key and int(saved["run"]["step"]) == cell.steps \
            and not store.has(cell):
        store.save_progress(cell, {"key": cell.key, "run": saved["run"]})
        done = True
    store.drop_progress(run)
    return done
