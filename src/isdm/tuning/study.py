"""Create or join a study, run this worker's trials and write the study's results.

Several ``isdm tune`` processes on one storage and study name share the study: trial numbers
come from the storage, TPE is seeded per trial number (:func:`seeded_tpe`), a killed worker's
trial is failed and retried (:mod:`isdm.tuning.storage`), the real-only baseline is trained by
one of them (:func:`isdm.tuning.paired.study_baseline`), and all of them log under ONE MLflow
study run: the worker whose ``create_study`` succeeded creates it and publishes its id as the
study user attribute :data:`STUDY_RUN_ATTR`; the others wait for that attribute.

``tune.objectives``: ``[gain]`` maximises the paired gain, with adaptive repeats
(:mod:`isdm.tuning.repeats`: the objective prunes and extends trials itself, so the study's
pruner is Optuna's NopPruner); ``[gain, cost]`` also minimises the sampling seconds per image
(multi-objective TPE, fixed repeats: Optuna prunes single-objective studies only).
``tune.eval_steps: auto`` is resolved first (:func:`isdm.tuning.paired.resolve_budget`: the
cached calibration of ``tune.architecture``). ``summary.json`` and the study's MLflow run count
the segmenter cells and steps the study used (:func:`isdm.tuning.repeats.segmenter_cells`).
After its trials, each worker writes the study's results and, with ``tune.final_check``, runs
(or reuses) :mod:`isdm.tuning.final_check`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from isdm.config import Config, flatten
from isdm.errors import CheckpointError, TuningError
from isdm.tuning import objective as objective_mod
from isdm.tuning import paired, plots, repeats, results
from isdm.tuning.storage import (
    fail_stale_trials,
    open_storage,
    resolve_storage,
    retry_storage,
    storage_errors,
)
from isdm.utils.dburl import safe_url
from isdm.utils.io import atomic_write_json, atomic_write_text

__all__ = ["run_study", "open_study", "seeded_tpe", "STUDY_RUN_ATTR", "STUDY_RUN_WAIT",
           "METRIC_NAMES"]

STUDY_RUN_ATTR = "isdm.mlflow_run_id"
STUDY_RUN_WAIT = 120.0  # seconds a joining worker waits for the creator's MLflow study run
#: the study's objective names (``study.metric_names``), in the order of ``tune.objectives``
METRIC_NAMES = ("val_miou_gain", "seconds_per_image")


def seeded_tpe(seed: int, n_startup_trials: int) -> Any:
    """TPE whose random state is re-seeded with ``seed + trial.number`` before every trial.

    Trial numbers are handed out atomically by the storage, so workers sharing a study never
    repeat each other's draws, and a trial's draw depends only on (seed, number, history):
    a one-worker study is reproducible, resumed or not.
    """
    import optuna

    class PerTrialSeedTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._inner = self._tpe(seed)

        @staticmethod
        def _tpe(s: int) -> Any:
            return optuna.samplers.TPESampler(seed=s, constant_liar=True,
                                              n_startup_trials=n_startup_trials)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._inner = self._tpe(seed + trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self._inner.sample_independent(study, trial, name, dist)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._inner.after_trial(study, trial, state, values)

    return PerTrialSeedTPE()


def open_study(cfg: Config, spec: str, study_name: str) -> tuple[Any, bool]:
    """``(study, created)``: create the study, or join it when another process already did.

    ``created`` is true in exactly one process per study, however many start at once.
    """
    import optuna

    t = cfg.tune
    storage = open_storage(spec, t.heartbeat_interval, t.heartbeat_grace)
    single = t.objectives == ("gain",)
    kwargs = dict(storage=storage, study_name=study_name,
                  pruner=optuna.pruners.NopPruner(),  # the objective prunes (tuning.repeats)
                  sampler=seeded_tpe(t.seed, t.sampler_startup_trials))
    directions = ["maximize"] if single else ["maximize", "minimize"]

    def create_or_load() -> tuple[Any, bool]:
        try:
            study = optuna.create_study(directions=directions, **kwargs)
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(**kwargs), False
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRIC_NAMES[:len(directions)]))  # dashboard, dataframe
        return study, True

    study, created = retry_storage(create_or_load, spec)
    if len(study.directions) != len(directions):
        raise TuningError(f"study {study_name!r} in {safe_url(spec)} has {len(study.directions)} "
                          f"objective(s) but tune.objectives={list(t.objectives)}; give another "
                          "--study-name or the study's objectives")
    return study, created


def _study_run_id(study: Any, created: bool, tracking_on: bool) -> Optional[str]:
    """The MLflow study run to log under, or None for "start it here".

    The creator starts it; a joining worker with tracking on waits up to
    :data:`STUDY_RUN_WAIT` seconds for the creator to publish it (the creator may still be
    importing mlflow), then starts one itself (its creator stopped before publishing).
    """
    if created or not tracking_on:
        return study.user_attrs.get(STUDY_RUN_ATTR) or None
    deadline = time.monotonic() + STUDY_RUN_WAIT
    if STUDY_RUN_ATTR not in study.user_attrs:
        print(f"tune: waiting (up to {STUDY_RUN_WAIT:g} s) for the worker that created study "
              f"{study.study_name!r} to start its MLflow study run", file=sys.stderr, flush=True)
    while STUDY_RUN_ATTR not in (attrs := study.user_attrs):
        if time.monotonic() > deadline:
            print(f"tune: study {study.study_name!r} has no MLflow study run after "
                  f"{STUDY_RUN_WAIT:g} s; starting one in this worker")
            return None
        time.sleep(0.5)
    return attrs[STUDY_RUN_ATTR] or None


def run_study(cfg: Config, data_root: str | Path, checkpoint: str | Path, out_dir: str | Path,
              n_trials: Optional[int] = None, storage: Optional[str] = None,
              study_name: Optional[str] = None, progress: Optional[bool] = None,
              cell_cache: Optional[str | Path] = None) -> dict[str, Any]:
    """Run ``n_trials`` trials (default ``tune.n_trials``) of the study in this process.

    Writes ``<out_dir>/best_params.yaml``, ``trials.csv``, ``summary.json`` and the plots of
    :func:`isdm.tuning.plots.write_plots`, then (``tune.final_check``, once a trial completed)
    ``final_check.json`` / ``.md``; returns the summary (with ``final_check``). ``n_trials=0``
    only creates (or joins) the study and its MLflow run, fails the trials of killed workers
    and writes the results of the trials so far. ``progress``: None = ``runtime.progress``.
    ``cell_cache``: the cell store of the downstream cells (default
    :func:`isdm.evaluation.store.resolve_root`), shared with evaluate and curate.
    """
    import optuna

    data_root, checkpoint, out_dir = Path(data_root), Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise CheckpointError(f"--checkpoint {checkpoint} does not exist; train one with "
                              "`isdm train` (models/sdm/best.pt)")
    n_trials = cfg.tune.n_trials if n_trials is None else n_trials
    progress = cfg.runtime.progress if progress is None else progress
    study_name = study_name or cfg.tune.study_name
    spec = resolve_storage(storage if storage is not None else cfg.tune.storage, out_dir)
    check_sqlite_storage(spec)
    claim_out(out_dir, spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with storage_errors(spec):
        return _run_study(cfg, data_root, checkpoint, out_dir, n_trials, spec, study_name,
                          progress, cell_cache)


def _run_study(cfg: Config, data_root: Path, checkpoint: Path, out_dir: Path, n_trials: int,
               spec: str, study_name: str, progress: bool,
               cell_cache: Optional[str | Path]) -> dict[str, Any]:
    from isdm import tracking
    from isdm.tuning.final_check import run_final_check

    study, created = open_study(cfg, spec, study_name)
    fail_stale_trials(study, spec)
    study_run_id = _study_run_id(study, created, cfg.tracking.enabled)
    t = cfg.tune
    how = f"{t.repeats} seeds" if not repeats.RepeatRule.from_config(t).adaptive else \
        f"{t.min_repeats}-{max(t.max_repeats, t.repeats)} seeds"
    name = (f"tune {study_name}: {t.architecture} x {how}, {t.eval_steps} steps, "
            f"{'+'.join(t.objectives)}")
    params = {**flatten(cfg), "tune.storage": safe_url(t.storage)}  # no password in MLflow
    with tracking.start_run(cfg.tracking, name=name, action="tune", dataset=str(data_root),
                            params=None if study_run_id else params, run_id=study_run_id,
                            tags={"optuna.study": study_name,
                                  "optuna.storage": safe_url(spec)}) as run:
        if not study_run_id and (run.run_id or created):
            study.set_user_attr(STUDY_RUN_ATTR, run.run_id or "")
        if n_trials > 0:
            _optimize(cfg, study, data_root, checkpoint, out_dir, run, n_trials, progress,
                      cell_cache)
        summary = _write_results(study, spec, out_dir, run, t.repeats)
        if not t.final_check:
            _no_final_check(out_dir)
        elif summary["complete"]:
            check = run_final_check(cfg, data_root, checkpoint, out_dir, study, progress=progress,
                                    cell_cache=cell_cache)
            summary["final_check"] = {k: check[k] for k in ("verdict", "tuned_vs_current")
                                      if k in check}
            if "tuned_vs_current" in check:
                c = check["tuned_vs_current"]
                run.log_metrics({"final_gain": c["gain"], "final_gain_lo": c["gain_lo"],
                                 "final_gain_hi": c["gain_hi"]})
            atomic_write_json(out_dir / "summary.json", summary)
            for path in ("final_check.json", "final_check.md", "summary.json"):
                run.log_artifact(out_dir / path)
        return summary


def check_sqlite_storage(spec: str) -> None:
    """An SQLite study storage must name a file in a writable folder: ``sqlite:///`` (no path)
    would keep the study in memory and lose it when the process ends.

    Raises:
        TuningError: naming the storage and the fix.
    """
    import os

    if not spec.startswith("sqlite:"):
        return
    path = spec[len("sqlite:///"):].split("?", 1)[0] if spec.startswith("sqlite:///") else ""
    if not path or ":memory:" in spec:
        raise TuningError(
            f"--storage {spec!r} names no database file: SQLite would keep the study in memory "
            "and lose every trial when this process ends. Give a file, e.g. --storage "
            "sqlite:///reports/tune/study.db, or leave --storage out (a journal file in --out)")
    folder = Path(path).resolve().parent
    if folder.is_dir() and not os.access(folder, os.W_OK):
        raise TuningError(f"--storage {spec}: its folder {folder} is not writable (read-only "
                          "file system or permissions; SQLite writes a journal beside the "
                          "database); choose a writable place")


# what a study writes into --out (workers share it: no exclusive lock)
OUTPUTS = ("best_params.yaml", "trials.csv", "summary.json", "plots/", "final_check.json",
           "final_check.md", "final_check/", "finetunes/", "baselines/", "curate_cache/",
           "trials/", "study.journal", "study.journal.lock*", "*.lock")  # workers' locks


def claim_out(out_dir: Path, spec: str) -> None:
    """Make ``out_dir`` the study's folder (:mod:`isdm.utils.ownership`): an earlier study's
    files there are kept (the study resumes), any other file is refused; an SQLite storage
    inside it is the study's too."""
    from isdm.utils import ownership

    entries = list(OUTPUTS)
    if spec.startswith("sqlite:///"):
        db = Path(spec.removeprefix("sqlite:///")).resolve()
        if db.parent == out_dir.resolve():
            entries.append(f"{db.name}*")  # with its -journal / -wal / -shm files

    def legacy(root: Path) -> list[str]:  # a study of an isdm without the record
        ours = (root / "summary.json").is_file() or (root / "study.journal").is_file()
        return entries if ours else []

    output = ownership.claim(out_dir, "tune", legacy=legacy)
    ownership.make_folder(out_dir)
    output.record(entries)


def _no_final_check(out_dir: Path) -> None:
    """``final_check.json`` / ``.md`` saying the check is off (the DVC stage versions them)."""
    note = "not run (tune.final_check: false)"
    atomic_write_json(out_dir / "final_check.json", {"verdict": note})
    atomic_write_text(out_dir / "final_check.md", f"# Final check\n\n{note}\n")


def _optimize(cfg: Config, study: Any, data_root: Path, checkpoint: Path, out_dir: Path,
              run: Any, n_trials: int, progress: bool, cell_cache: Optional[str | Path]) -> None:
    """The study's baseline (computed here or read), then this worker's trials, their cells
    on one pool (:class:`isdm.tuning.cells.StudyCells`)."""
    from isdm.tuning.cells import StudyCells
    from isdm.tuning.console import Console

    real = objective_mod.load_real_train(cfg, data_root)
    with StudyCells(cfg, data_root, cell_cache=cell_cache) as cells:
        cfg, calibration = paired.resolve_budget(cfg, data_root, cells, progress)
        run.log_metrics({"eval_steps": float(cfg.tune.eval_steps)})
        if calibration is not None:
            run.set_tags({"isdm.eval_steps": f"auto: {calibration.steps} ({calibration.reason}; "
                                             f"{calibration.evidence()})"[:5000]})
        bcfg = paired.budget_config(cfg)
        first = repeats.RepeatRule.from_config(cfg.tune).first
        baseline, computed = paired.study_baseline(bcfg, data_root, real, study, out_dir, cells,
                                                   first)
        if computed:
            for r, value in enumerate(baseline):
                run.log_metrics({"baseline_val_miou": value}, step=r)
        study.set_user_attr(results.N_REAL_ATTR, paired.real_pool_size(cfg, real.keys))
        lazy = paired.StudyBaseline(bcfg, data_root, real, study, out_dir, cells)
        objective = objective_mod.make_objective(cfg, data_root, checkpoint, out_dir, real,
                                                 lazy, run.run_id, cells)
        console = Console(n_trials, progress)
        try:
            with _interrupt_note(study, out_dir):
                study.optimize(objective, n_trials=n_trials, gc_after_trial=True,
                               callbacks=[console])
        finally:
            console.close()


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C with the traceback of wherever the trial was;
    keep its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is KeyboardInterrupt:
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def _interrupt_note(study: Any, out_dir: Path) -> Iterator[None]:
    """Ctrl-C during the trials: no traceback, and a note of what stays (the study, its
    complete trials) and how to continue; the interrupt then goes on (MLflow run KILLED,
    exit status 1)."""
    quiet = _NoInterruptTraceback()
    handlers = [*logging.getLogger("optuna").handlers, *logging.getLogger().handlers]
    for handler in handlers:  # a logger's own filters miss its children's records
        handler.addFilter(quiet)
    try:
        yield
    except KeyboardInterrupt:
        print(f"tune: interrupted; the running trial is marked failed, the complete trials stay "
              f"in study {study.study_name!r}. Run the same command to continue it (results in "
              f"{out_dir} are written when the study ends).", file=sys.stderr)
        raise
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _write_results(study: Any, spec: str, out_dir: Path, run: Any,
                   repeats_per_trial: int) -> dict[str, Any]:
    summary = results.summary(study, safe_url(spec), repeats_per_trial)
    results.write_trials_csv(study, out_dir / "trials.csv")
    files = [out_dir / "trials.csv", *plots.write_plots(study, out_dir)]
    if summary["complete"]:
        atomic_write_text(out_dir / "best_params.yaml", results.best_params_yaml(study, out_dir))
        files.append(out_dir / "best_params.yaml")
        run.log_metrics({"best_gain": summary["best_gain"]})
        run.set_tags({"optuna.best_trial": summary["best_trial"]})
    run.log_metrics({k: float(summary[k]) for k in ("n_trials", "complete", "pruned", "failed")})
    if summary.get("segmenter_steps") is not None:
        cells = summary["segmenter_cells"]
        run.log_metrics({"segmenter_steps": float(summary["segmenter_steps"]),
                         "segmenter_cells": float(cells["total"]),
                         "segmenter_cells_fixed_repeats": float(cells["fixed_total"])})
    atomic_write_json(out_dir / "summary.json", summary)
    for path in [*files, out_dir / "summary.json"]:
        run.log_artifact(path)
    return summary
