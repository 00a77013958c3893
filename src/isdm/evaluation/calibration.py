"""``evaluate.steps: auto``: the optimiser steps of each architecture, chosen by its real-only
baseline's validation curve.

:func:`calibrate` trains the real-only cells (``RALLF000``) of one architecture, one per
``evaluate.seeds``, in lockstep chunks of K = ``check_every`` x ``val_every`` steps on the
worker pool (:meth:`isdm.evaluation.pool.CellPool.map`, :mod:`.calibration_jobs`: each chunk
resumes the run's saved progress in the cell store), and after each chunk applies the rule of
:mod:`.plateau_rule` to the seed-mean validation mIoU curve; the first check that says
``plateau`` (or the cap) fixes N. The cells are then finished at N through the ordinary cell
jobs (:func:`isdm.evaluation.worker.run_job`, tested when the dataset has a test split): they
ARE the table's real-only cells at N, stored under the key of a cell trained straight to N,
with the same bits, so no cell is trained twice. Every architecture calibrates at once (one
round trains one chunk of every cell still calibrating).

The result (:class:`Calibration`: N, why, every check, the curves) is cached in the store as
``<store>/.calibration/<key>.json``, keyed by what decides it: the architecture, the seeds,
the real train and test files, the data keys, the evaluate recipe, the device type and the
rule (:func:`calibration_key`). ``evaluate``, ``curate`` (its scorer) and ``tune``
(``tune.eval_steps: auto``) read it, so the same recipe is calibrated once; two processes wait
on the calibration's lock and the second reads the first's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from isdm.config import Config
from isdm.errors import EvaluationError
from isdm.evaluation.plateau_rule import Check, PlateauRule, check

__all__ = ["Calibration", "calibrate", "resolve_steps", "calibration_key", "load_calibration",
           "FOLDER"]

FOLDER = ".calibration"
FORMAT = 1


@dataclass(frozen=True)
class Calibration:
    """The calibrated steps of one architecture and the evidence.

    ``reason``: ``plateau`` or ``cap``; ``void``: the cap was reached with the baseline still
    at the background-only level (the comparison at N says nothing); ``checks``: every check
    (:class:`isdm.evaluation.plateau_rule.Check` as dicts), the last one at N; ``curve``:
    ``{"step": [...], "val_miou": [[seed 0], ...], "val_miou_nobg": [...]}`` up to N;
    ``cells``: the store keys of the real-only cells at N (one per seed)."""

    arch: str
    key: str
    steps: int
    reason: str
    void: bool
    seeds: list[int]
    rule: dict
    checks: list[dict]
    curve: dict
    cells: list[str]
    seconds: float = 0.0
    created: str = ""
    identity: dict = field(default_factory=dict)

    @property
    def last(self) -> Check:
        return Check.from_dict(self.checks[-1])

    def evidence(self) -> str:
        return self.last.evidence()

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class _Arch:
    """One architecture in calibration: its cells (one per seed), their runs and rule."""

    arch: str
    cells: list[Any]
    runs: list[Any]
    rule: PlateauRule
    key: str
    identity: dict
    histories: list[list[dict]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def calibration_key(identity: dict[str, Any]) -> str:
    """The first hex digits of the SHA-256 of ``identity`` as canonical JSON (as a cell key)."""
    import hashlib

    from isdm.evaluation.spec import KEY_LENGTH

    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def _path(store: Any, key: str) -> Path:
    return Path(store.root) / FOLDER / f"{key}.json"


def load_calibration(store: Any, key: str) -> Optional[Calibration]:
    """The cached calibration of ``key``, or None (absent, torn or of another format)."""
    try:
        data = json.loads(_path(store, key).read_text())
    except (OSError, ValueError):
        return None
    if data.get("format") != FORMAT or data.get("key") != key:
        return None
    return Calibration.from_json(data)


@contextlib.contextmanager
def _locked(store: Any, keys: Sequence[str]) -> Iterator[None]:
    """Hold the calibration locks of ``keys`` (sorted: two processes never deadlock)."""
    from filelock import FileLock

    folder = Path(store.root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for key in sorted(set(keys)):
            stack.enter_context(FileLock(str(folder / f"calibration-{key}.lock")))
        yield


def _setup(cfg: Config, data_root: str | Path, arch: str, real: Any, digests: Any, store: Any,
           device_type: str) -> _Arch:
    """The cells, runs, resolved rule and key of ``arch``."""
    from isdm.evaluation.calibration_jobs import run_spec
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.loop import val_windows
    from isdm.evaluation.mixes import BASELINE
    from isdm.evaluation.segmenter import validation_interval
    from isdm.evaluation.worker import make_job

    e = cfg.evaluate
    cells = [plan_cell(cfg, arch, BASELINE, seed, real.keys, []) for seed in e.seeds]
    intervals = {validation_interval(e.val_every, e.batch_size,
                                     val_windows(real.subset(c.plan.val_keys))) for c in cells}
    if len(intervals) > 1:
        raise EvaluationError(f"evaluate.val_every=0 resolves to {sorted(intervals)} for the "
                              f"seeds {list(e.seeds)} of {arch} (their validation images differ "
                              "in size): calibration needs one interval, set evaluate.val_every")
    rule = PlateauRule.from_config(e.calibration, intervals.pop())
    runs = [run_spec(make_job(cfg, data_root, c, digests=digests, synthetic=None,
                              test=bool(digests.split("test")), device_type=device_type,
                              store=store, steps=1).spec) for c in cells]
    shared = {k: v for k, v in runs[0].identity().items() if k not in ("seed", "steps")}
    identity = {"what": "calibration", "seeds": list(e.seeds), "run": shared,
                "rule": dataclasses.asdict(rule)}
    return _Arch(arch, cells, runs, rule, calibration_key(identity), identity,
                 histories=[[] for _ in cells])


def resolve_steps(cfg: Config, data_root: str | Path, archs: Sequence[str], *, store: Any,
                  device: Any, progress: bool = False,
                  ) -> tuple[dict[str, int], dict[str, Calibration]]:
    """``({arch: steps}, {arch: Calibration})``: ``evaluate.steps`` for every architecture, or
    with ``auto`` the calibrated steps (:func:`calibrate`; the second dict is empty for a
    number)."""
    steps = cfg.evaluate.steps
    if isinstance(steps, int):
        return {a: steps for a in archs}, {}
    calibrations = calibrate(cfg, data_root, archs, store=store, device=device, progress=progress)
    return {a: c.steps for a, c in calibrations.items()}, calibrations


def calibrate(cfg: Config, data_root: str | Path, archs: Sequence[str], *, store: Any,
              device: Any, progress: bool = False, pool: Any = None) -> dict[str, Calibration]:
    """The calibration of every architecture of ``archs`` with the recipe and seeds of
    ``cfg.evaluate``: read from the store, else computed (see the module docstring) on
    ``pool`` (default: a pool sized by ``evaluate.workers`` / ``evaluate.threads``)."""
    from isdm.evaluation.worker import Digests, load_real

    digests = Digests(data_root)
    real = load_real(cfg, data_root, "train", digests.split("train"))
    setups = {a: _setup(cfg, data_root, a, real, digests, store, device.type)
              for a in dict.fromkeys(archs)}
    found = {a: load_calibration(store, s.key) for a, s in setups.items()}
    todo = [a for a, c in found.items() if c is None]
    if todo:
        with _locked(store, [setups[a].key for a in todo]):
            found.update({a: load_calibration(store, setups[a].key) for a in todo})
            todo = [a for a in todo if found[a] is None]
            if todo:
                found.update(_run(cfg, data_root, [setups[a] for a in todo], digests, store,
                                  device, progress, pool))
    return {a: found[a] for a in dict.fromkeys(archs)}


def _run(cfg: Config, data_root: str | Path, setups: list[_Arch], digests: Any, store: Any,
         device: Any, progress: bool, pool: Any) -> dict[str, Calibration]:
    """The rounds: one chunk of every cell still calibrating, then the rule per architecture."""
    from isdm.evaluation.pool import CellPool

    t0 = time.perf_counter()
    n_cells = sum(len(s.cells) for s in setups)
    own = pool is None
    pool = CellPool.for_cells(cfg.evaluate, device, n_cells) if own else pool
    done: dict[str, Calibration] = {}
    try:
        active = list(setups)
        while active:
            targets = {s.arch: s.rule.checks()[len(s.checks)] for s in active}
            _round(cfg, data_root, active, targets, store, pool)
            for s in list(active):
                result = _check(s, targets[s.arch])
                s.checks.append(result)
                if progress:
                    print(f"calibrate {s.arch}: {result.decision} at {result.step} steps "
                          f"({result.evidence()})", file=sys.stderr, flush=True)
                if result.decision != "continue":
                    done[s.arch] = _finish(cfg, data_root, s, digests, store, device, pool,
                                           time.perf_counter() - t0)
                    active.remove(s)
    finally:
        if own:
            pool.close()
    return done


def _round(cfg: Config, data_root: str | Path, active: list[_Arch], targets: dict[str, int],
           store: Any, pool: Any) -> None:
    """Advance every cell of ``active`` to its architecture's next check (side by side)."""
    from isdm.evaluation.calibration_jobs import ChunkJob, advance_chunk

    jobs = [(s, i, ChunkJob(cfg, str(data_root), cell, run, targets[s.arch], str(store.root)))
            for s in active for i, (cell, run) in enumerate(zip(s.cells, s.runs))]
    for (s, i, _), result in zip(jobs, pool.map(advance_chunk, [j for _, _, j in jobs])):
        s.histories[i] = result["history"]


def _curves(s: _Arch, at: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(steps, val_miou [S, n], val_miou_nobg [S, n]) of the validations up to ``at``."""
    rows = [[h for h in history if h["step"] <= at] for history in s.histories]
    steps = [int(h["step"]) for h in rows[0]]
    if any([int(h["step"]) for h in r] != steps for r in rows):
        raise EvaluationError(f"the calibration runs of {s.arch} validated at different steps; "
                              "delete their progress (<store>/.progress) and run again")
    values = {k: np.array([[np.nan if h[k] is None else h[k] for h in r] for r in rows], float)
              for k in ("val_miou", "val_miou_nobg")}
    return steps, values["val_miou"], values["val_miou_nobg"]


def _check(s: _Arch, at: int) -> Check:
    steps, miou, nobg = _curves(s, at)
    return check(s.rule, steps, miou, nobg, at=at)


def _finish(cfg: Config, data_root: str | Path, s: _Arch, digests: Any, store: Any, device: Any,
            pool: Any, seconds: float) -> Calibration:
    """Hand the runs over to their cells at N, finish those (select, test, store) and save the
    calibration."""
    from isdm.evaluation.calibration_jobs import hand_over
    from isdm.evaluation.worker import make_job
    from isdm.utils.io import atomic_write_json

    last = s.checks[-1]
    n = last.step
    jobs = [make_job(cfg, data_root, cell, digests=digests, synthetic=None,
                     test=bool(digests.split("test")), device_type=device.type, store=store,
                     steps=n) for cell in s.cells]
    for run, job in zip(s.runs, jobs):
        hand_over(store, run, job.spec)
    records = {id(o.job): o.record for o in pool.run(jobs)}
    steps, miou, nobg = _curves(s, n)
    result = Calibration(
        arch=s.arch, key=s.key, steps=n, reason="plateau" if last.decision == "plateau" else "cap",
        void=last.decision == "cap" and last.background_only, seeds=list(cfg.evaluate.seeds),
        rule=dataclasses.asdict(s.rule), checks=[c.as_dict() for c in s.checks],
        curve={"step": steps, "val_miou": miou.tolist(), "val_miou_nobg": nobg.tolist()},
        cells=[records[id(j)].key for j in jobs], seconds=seconds,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), identity=s.identity)
    atomic_write_json(_path(store, s.key), _finite(result.to_json()))
    return result


def _finite(tree: Any) -> Any:
    """NaN / inf -> None: the calibration file is strict JSON."""
    from isdm.evaluation.store import _finite as finite

    return finite(tree)
