"""The downstream cells of a study: evaluate's cells, run by the same pool into the same store.

:class:`StudyCells` holds one :class:`isdm.evaluation.pool.CellPool` for a ``tune`` process (its
workers start once and load the real data once) and the cell store, so that a trial's repeats
train side by side (``evaluate.workers``), a cell in the store (a baseline of an earlier study,
a trial retried after a kill) is never trained again, and two tune processes on one store never
train the same cell twice (the cell's lock). Tuning cells are never tested (the search never
reads the test split): their spec's ``test`` is ``''``; a cell that ``evaluate`` (or the
calibration of ``evaluate.steps: auto``) already trained and tested is read from its record
instead (:meth:`StudyCells.tested_twin`: the same training, only its fit is read).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from isdm.config import Config

__all__ = ["StudyCells"]


class StudyCells:
    """The pool and the store of a study's cells (a context manager).

    Args:
        cfg: the study's config (``evaluate.workers`` / ``evaluate.threads`` size the pool, at
            most the largest rung of repeats, ``tune.repeats`` or ``tune.max_repeats``: the
            cells that can run side by side).
        cell_cache: the cell store (default :func:`isdm.evaluation.store.resolve_root`).
    """

    def __init__(self, cfg: Config, data_root: str | Path, *,
                 cell_cache: Optional[str | Path] = None, device: Optional[str] = None,
                 progress: bool = False) -> None:
        from isdm.evaluation.pool import CellPool
        from isdm.evaluation.segmenter import precision_warning
        from isdm.evaluation.store import CellStore, resolve_root
        from isdm.evaluation.worker import Digests
        from isdm.utils.runtime import resolve_device

        self.data_root = Path(data_root)
        self.device = resolve_device(cfg.runtime.device if device is None else device)
        self.store = CellStore(resolve_root(cell_cache))
        self.digests = Digests(data_root)
        rung = max(cfg.tune.repeats, cfg.tune.max_repeats - cfg.tune.repeats)
        self.pool = CellPool.for_cells(cfg.evaluate, self.device, rung, progress=progress,
                                       desc="cells")
        if (warning := precision_warning(cfg.evaluate.precision, self.device)) is not None:
            print(f"warning: {warning}", file=sys.stderr)

    def __enter__(self) -> "StudyCells":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.pool.close(terminate=exc_type is not None)

    def jobs(self, cfg: Config, mix: str, seeds: Sequence[int], real: Any, synthetic: Any,
             folder: Optional[str | Path]) -> list[Any]:
        """The jobs of the cells (``tune.architecture``, ``mix``, seed) for ``seeds``, planned
        on ``real`` + ``synthetic`` (the images of ``folder``)."""
        from isdm.evaluation.cell import plan_cell
        from isdm.evaluation.worker import make_job

        return [make_job(cfg, self.data_root,
                         plan_cell(cfg, cfg.tune.architecture, mix, seed, real.keys,
                                   synthetic.keys),
                         digests=self.digests, synthetic=folder, test=False,
                         device_type=self.device.type, store=self.store)
                for seed in seeds]

    def tested_twin(self, job: Any) -> Optional[Any]:
        """The stored record of the same cell trained by ``evaluate`` (tested: its spec's
        ``test`` is the test split's digest), or None. Testing changes nothing in training, so
        its fit is the untested cell's: a real-only cell of the evaluate seeds that the
        calibration or evaluate trained is not trained again (only its fit is read here, never
        its test metrics)."""
        import dataclasses

        test = self.digests.split("test")
        if job.spec.test or not test:
            return None
        return self.store.get(dataclasses.replace(job.spec, test=test))

    def values(self, jobs: Sequence[Any]) -> Iterator[tuple[float, int]]:
        """``(best validation mIoU, steps)`` of each job, in the order of ``jobs`` (the cells
        run side by side; a cell is yielded once it and every earlier one are done; a cell
        whose :meth:`tested_twin` is stored is read from it). Closing the iterator early (a
        pruned trial) cancels the cells not yet started."""
        done: dict[int, Any] = {}
        for i, job in enumerate(jobs):
            if (twin := self.tested_twin(job)) is not None:
                done[i] = twin
        index = {id(job): i for i, job in enumerate(jobs)}
        todo = [job for i, job in enumerate(jobs) if i not in done]
        nxt = 0
        while nxt in done:
            record = done.pop(nxt)
            yield record.best_val_miou, int(record.fit["steps"])
            nxt += 1
        with contextlib.closing(self.pool.run(todo)) as outcomes:
            for outcome in outcomes:
                done[index[id(outcome.job)]] = outcome.record
                while nxt in done:
                    record = done.pop(nxt)
                    yield record.best_val_miou, int(record.fit["steps"])
                    nxt += 1
