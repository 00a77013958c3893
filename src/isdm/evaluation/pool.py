"""Cells side by side: a pool of worker processes that run cell jobs (:mod:`.worker`) into the
cell store (:mod:`.store`), used by ``evaluate``, ``curate``'s scorer, ``tune`` and the plateau
bench.

Why processes: one small segmenter step (64 px, batch 8) keeps one core busy but leaves a
second thread mostly waiting, so two cells on one thread each train about 1.5x as many steps per
second as one cell on two threads (FPN on a quiet 2-core AVX2 machine). Workers are spawned (not forked: torch's thread pools do not
survive a fork) and each loads the data once (:func:`isdm.evaluation.worker.load_real`).

:func:`plan_workers`: ``evaluate.threads`` (0 = auto: 1 on CPU; on CUDA the cores shared among
the workers) and ``evaluate.workers`` (0 = auto: one per core / ``threads`` on CPU, up to half as many again
when that fills the last round of cells (:func:`fill_rounds`), one per visible GPU on CUDA,
each worker on its own GPU), never more than the cells to run. One worker
runs the cells in the calling process (no spawn) at ``threads`` threads, so ``workers: 1`` and
``workers: 2`` give the same bits for the same threads per cell.

:meth:`CellPool.run` yields each cell as it comes: first those already in the store (no worker
is started when all are), then the trained ones in the order they finish; a cell is in the store
before it is yielded, so a killed run loses only the cells in training (whose progress is saved
every :data:`isdm.evaluation.worker.SAVE_EVERY_S` seconds). One progress bar counts cells done,
trained and taken from the store (:mod:`isdm.utils.progress`).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from isdm.errors import EvaluationError
from isdm.evaluation.store import CellRecord, CellStore
from isdm.evaluation.worker import CellJob, run_job

__all__ = ["CellOutcome", "CellPool", "plan_workers", "fill_rounds", "available_cpus",
           "calm_parent"]

_WORKER: dict[str, Any] = {}  # the device of this worker process


@dataclass(frozen=True)
class CellOutcome:
    """A job's record and whether this run trained it (False: it came from the store)."""

    job: CellJob
    record: CellRecord
    trained: bool


def available_cpus() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def plan_workers(workers: int, threads: int, device: torch.device,
                 n_cells: int) -> tuple[int, int, list[str]]:
    """``(workers, threads per worker, device of each worker)`` (see the module docstring)."""
    cpus = available_cpus()
    if device.type == "cuda":
        gpus = ([f"cuda:{device.index}"] if device.index is not None
                else [f"cuda:{i}" for i in range(max(1, torch.cuda.device_count()))])
        n = workers or len(gpus)
        t = threads or max(1, cpus // n)
        devices = [gpus[i % len(gpus)] for i in range(n)]
    else:
        t = threads or 1
        n = workers or fill_rounds(max(1, cpus // t), n_cells)
        devices = [str(device)] * n
    n = max(1, min(n, n_cells))
    return n, t, devices[:n]


def fill_rounds(cores: int, n_cells: int) -> int:
    """Auto CPU workers for ``n_cells`` cells of one thread on ``cores`` cores: the count in
    ``[cores, cores + max(1, cores // 2)]`` with the fewest idle slots in the last round
    (``ceil(n_cells / w) * w`` smallest; ties: fewer workers).

    With one worker per core, 3 cells on 2 cores run as 2 rounds with one core idle in the
    second; 3 workers share the 2 cores (the OS time-slices them) and finish all 3 in about
    1.5 rounds. Measured 2026-12-07 on 2 quiet cores, 3 DeepLabV3Plus cells of 100 steps:
    workers 2: 90.6 s, workers 3: 72.4 s (the same CPU seconds, 128 vs 126 s). The bound keeps
    the extra processes (their memory) to half the cores."""
    if n_cells <= cores:
        return max(1, n_cells)
    most = cores + max(1, cores // 2)
    return min(range(cores, most + 1), key=lambda w: (-(-n_cells // w) * w, w))


def calm_parent(workers: int, threads: int, device: torch.device) -> bool:
    """One torch thread in THIS process when its cells will run in worker processes on the CPU;
    call it before the process runs any torch op (the CLI does, for evaluate and curate).

    An OpenMP thread team, once the parent created it, keeps its threads, and under
    ``OMP_WAIT_POLICY=ACTIVE`` (what ``make`` chooses on an idle machine) they spin on a core
    for the whole life of the pool: measured 2026-12-07 on 2 cores, two 100-step FPN cells side
    by side took 63 s instead of 41 s after the parent had run one 2-thread op (setting the
    threads to 1 later does not stop them). The parent itself only loads data, scores and
    reports. Returns whether it changed anything."""
    if device.type != "cpu" or plan_workers(workers, threads, device, 1 << 10)[0] < 2:
        return False
    torch.set_num_threads(1)
    return True


@contextlib.contextmanager
def _settings(threads: int, device: torch.device) -> Iterator[None]:
    """This process at ``threads`` torch threads (and cuDNN autotuning on CUDA) for a while."""
    before = torch.get_num_threads()
    bench = torch.backends.cudnn.benchmark
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.backends.cudnn.benchmark = bench


def _watch_parent(parent: int) -> None:
    """End this worker when its parent is gone (``kill -9`` of the command): an orphan would
    wait for work forever. A cell in training keeps its saved progress."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(devices: Any, threads: int) -> None:
    """A spawned worker: take a device, set the threads (for its whole life), and watch the
    parent."""
    import threading

    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    device = torch.device(devices.get())
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    _WORKER["device"] = device


def _work(job: CellJob) -> tuple[CellRecord, bool]:
    return run_job(job, _WORKER["device"])


def _call(fn: Callable[[Any, torch.device], Any], item: Any) -> Any:
    return fn(item, _WORKER["device"])


class _Progress:
    """Cells done / trained / from the store (:func:`isdm.utils.progress.bar`: a bar on a
    terminal, else plain lines)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from isdm.utils import progress

        self.trained = self.stored = 0
        self.bar = progress.bar(total=total, desc=desc, unit="cells",
                                enabled=enabled and total > 0)

    def update(self, trained: bool) -> None:
        self.trained += trained
        self.stored += not trained
        self.bar.set_postfix_str(f"{self.trained} trained, {self.stored} from the store")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _key(job: CellJob) -> tuple[str, str]:
    """A job's cell: its store and its spec's key."""
    return str(job.store), job.spec.key


class CellPool:
    """Runs cell jobs on ``workers`` processes of ``threads`` threads each (see the module
    docstring); a context manager (the workers stop at its end)."""

    def __init__(self, *, workers: int, threads: int, devices: Sequence[str],
                 progress: bool = False, desc: str = "cells") -> None:
        self.workers, self.threads, self.devices = workers, threads, list(devices)
        self.progress, self.desc = progress, desc
        self._executor: Optional[ProcessPoolExecutor] = None
        self.trained = self.from_store = 0

    @classmethod
    def for_cells(cls, evaluate: Any, device: torch.device, n_cells: int, *,
                  progress: bool = False, desc: str = "cells") -> "CellPool":
        """A pool sized by ``evaluate.workers`` / ``evaluate.threads`` for ``n_cells`` cells."""
        workers, threads, devices = plan_workers(evaluate.workers, evaluate.threads, device,
                                                 n_cells)
        return cls(workers=workers, threads=threads, devices=devices, progress=progress,
                   desc=desc)

    def __enter__(self) -> "CellPool":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(terminate=exc_type is not None)

    def close(self, terminate: bool = False) -> None:
        """Stop the workers: after their cells (default), or at once (``terminate``: an error
        or an interrupt, whose cells in training keep their saved progress)."""
        if self._executor is None:
            return
        if terminate:  # the executor has no public way to stop a running task
            for process in list(getattr(self._executor, "_processes", {}).values()):
                process.terminate()
        self._executor.shutdown(wait=not terminate, cancel_futures=True)
        self._executor = None

    def describe(self) -> str:
        return (f"{self.workers} worker{'s' * (self.workers > 1)} x {self.threads} "
                f"thread{'s' * (self.threads > 1)} ({', '.join(sorted(set(self.devices)))})")

    def run(self, jobs: Sequence[CellJob]) -> Iterator[CellOutcome]:
        """Every job's outcome: stored ones first, then as trained cells finish."""
        progress = _Progress(len(jobs), self.desc, self.progress)
        missing: dict[tuple[str, str], list[CellJob]] = {}
        try:
            for job in jobs:
                record = CellStore(job.store).get(job.spec)
                if record is None:
                    missing.setdefault(_key(job), []).append(job)
                    continue
                yield self._done(CellOutcome(job, record, False), progress)
            # a cell asked for twice (two rows on sets of the same content) trains once, by the
            # job that keeps its weights if one does; the others get its record, from the store
            first = [next((j for j in group if j.keep_weights), group[0])
                     for group in missing.values()]
            runner = self._inline if self.workers == 1 or len(first) == 1 else self._parallel
            for outcome in runner(first):
                yield self._done(outcome, progress)
                for job in missing[_key(outcome.job)]:
                    if job is not outcome.job:
                        yield self._done(CellOutcome(job, outcome.record, False), progress)
        finally:
            progress.close()

    def _done(self, outcome: CellOutcome, progress: _Progress) -> CellOutcome:
        self.trained += outcome.trained
        self.from_store += not outcome.trained
        progress.update(outcome.trained)
        return outcome

    def _inline(self, jobs: Sequence[CellJob]) -> Iterator[CellOutcome]:
        device = torch.device(self.devices[0])
        for job in jobs:
            with _settings(self.threads, device):
                record, trained = run_job(job, device)
            yield CellOutcome(job, record, trained)

    def map(self, fn: Callable[[Any, torch.device], Any], items: Sequence[Any]) -> list[Any]:
        """``fn(item, device)`` for every item on the workers (in this process with one
        worker or one item), results in the order of ``items``: work that is not a whole
        cell, e.g. the calibration's chunks (:mod:`isdm.evaluation.calibration`). ``fn``
        must be a module-level function (it is pickled to the workers)."""
        if self.workers == 1 or len(items) <= 1:
            device = torch.device(self.devices[0])
            out = []
            for item in items:
                with _settings(self.threads, device):
                    out.append(fn(item, device))
            return out
        futures = [self._pool().submit(_call, fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool:
            self._executor = None
            raise EvaluationError(
                "a cell worker process died (killed, or out of memory: lower evaluate.workers); "
                "saved progress is kept, run the command again") from None
        finally:
            for future in futures:
                future.cancel()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            import multiprocessing as mp

            from isdm.utils.cpu import keep_freed_memory

            keep_freed_memory()  # the workers reuse freed pages (bit-identical; utils.cpu)
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            for device in self.devices:
                queue.put(device)
            self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                                 initializer=_init_worker,
                                                 initargs=(queue, self.threads))
        return self._executor

    def _parallel(self, jobs: Sequence[CellJob]) -> Iterator[CellOutcome]:
        pool = self._pool()
        futures: dict[Future, CellJob] = {pool.submit(_work, job): job for job in jobs}
        order = {f: i for i, f in enumerate(futures)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=order.__getitem__):
                    record, trained = future.result()
                    yield CellOutcome(futures[future], record, trained)
        except BrokenProcessPool:
            self._executor = None
            raise EvaluationError(
                "a cell worker process died (killed, or out of memory: lower evaluate.workers); "
                "the cells finished so far are in the store, run the command again") from None
        finally:
            for future in pending:
                future.cancel()
