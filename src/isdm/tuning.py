"""Optuna search of the generator's knobs against the downstream VALIDATION mIoU.

The only module that imports optuna (lazily, inside functions). One trial:

1. draws ``sample.s`` in ``[tune.s_low, tune.s_high]`` and categorical ``finetune.drop_rate``,
   ``sample.steps`` and ``sample.sampler`` (parameter names are params.yaml's dotted keys);
2. finetunes the ``--checkpoint`` with that drop rate for ``tune.finetune_epochs`` epochs, once
   per rate: ``<out>/finetune_dr<rate>/best.pt`` is cached and shared by every worker on the
   same ``--out`` (a lock file makes the others wait instead of training it twice);
3. samples ``tune.num_samples`` pairs into ``<out>/trials/<number>/synthetic``;
4. trains ``tune.architecture`` on mix ``tune.mix`` for ``tune.eval_epochs`` epochs and returns
   the best validation mIoU over epochs (validation = a split carved from the REAL train images
   with ``evaluate.val_fraction``; the test split is never read). Every epoch reports the running
   best to Optuna; a MedianPruner stops trials that fall below the median of earlier ones.

Storage: ``''`` = a journal file ``<out>/study.journal``; a URL with ``://`` (``sqlite:///...``,
``postgresql://...``) = an RDB; any other string = a journal file path. Several ``isdm tune``
processes on one storage and study name share the study (TPE with ``constant_liar``).

MLflow: one study run (``tune <study>``), shared by all workers (its id is a study user
attribute), with one child run per trial; the finetune and sample runs of a trial are children
of the trial run. The best parameters go to ``<out>/best_params.yaml`` as dotted keys
(``dvc exp run -S sample.s=...``), plus ``trials.csv`` and PNG plots of the optimisation
history and parameter importances.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from isdm.config import Config, flatten
from isdm.errors import CheckpointError, ConfigError
from isdm.utils.io import atomic_write_text

__all__ = ["run_study", "open_study", "resolve_storage", "suggest", "trial_config",
           "finetuned_checkpoint", "validation_miou", "best_params_yaml", "STUDY_RUN_ATTR"]

STUDY_RUN_ATTR = "isdm.mlflow_run_id"


# --------------------------------------------------------------------------------------------
# study
# --------------------------------------------------------------------------------------------


def resolve_storage(storage: str, out_dir: str | Path) -> str:
    """``''`` -> ``<out_dir>/study.journal``; URLs are returned as given; paths made absolute."""
    if not storage:
        return str((Path(out_dir) / "study.journal").resolve())
    if "://" in storage:
        return storage
    return str(Path(storage).resolve())


def _storage(spec: str) -> Any:
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def _seeded_tpe(seed: int, n_startup_trials: int) -> Any:
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


def open_study(cfg: Config, storage: str, study_name: str) -> Any:
    """Create the study or join the existing one (seeded TPE, see :func:`_seeded_tpe`)."""
    import optuna

    t = cfg.tune
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=t.pruning_startup_trials)
              if t.pruning else optuna.pruners.NopPruner())
    return optuna.create_study(storage=_storage(storage), study_name=study_name,
                               direction="maximize", load_if_exists=True, pruner=pruner,
                               sampler=_seeded_tpe(t.seed, t.sampler_startup_trials))


def suggest(trial: Any, cfg: Config) -> dict[str, Any]:
    """The trial's draw, keyed by params.yaml dotted keys."""
    t = cfg.tune
    return {
        "sample.s": trial.suggest_float("sample.s", t.s_low, t.s_high),
        "finetune.drop_rate": trial.suggest_categorical("finetune.drop_rate", list(t.drop_rates)),
        "sample.steps": trial.suggest_categorical("sample.steps", list(t.steps)),
        "sample.sampler": trial.suggest_categorical("sample.sampler", list(t.samplers)),
    }


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """``cfg`` with the trial's knobs and the tune section's short budgets applied."""
    t = cfg.tune
    return cfg.replace(
        finetune=dataclasses.replace(cfg.finetune, drop_rate=float(params["finetune.drop_rate"]),
                                     max_epochs=t.finetune_epochs),
        sample=dataclasses.replace(cfg.sample, s=float(params["sample.s"]),
                                   steps=int(params["sample.steps"]),
                                   sampler=params["sample.sampler"], num_samples=t.num_samples,
                                   seed=t.seed),
        evaluate=dataclasses.replace(cfg.evaluate, epochs=t.eval_epochs),
    )


# --------------------------------------------------------------------------------------------
# one finetuned checkpoint per drop rate, shared by workers
# --------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


@contextlib.contextmanager
def _file_lock(path: Path, poll: float = 1.0) -> Iterator[None]:
    """Exclusive lock by atomic creation of ``path`` (holding the owner's pid); a lock whose
    owner died on this machine is taken over."""
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                owner = int(path.read_text() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and not _alive(owner):
                path.unlink(missing_ok=True)
                continue
            time.sleep(poll)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def finetuned_checkpoint(cfg: Config, data_root: str | Path, checkpoint: str | Path,
                         out_dir: str | Path, drop_rate: float) -> Path:
    """``<out_dir>/finetune_dr<rate>/best.pt``, finetuned from ``checkpoint`` on first use.

    Training goes to a temporary folder that is renamed into place, so a folder with
    ``best.pt`` is always complete; concurrent workers wait on ``finetune_dr<rate>.lock``.
    """
    from isdm.training import train

    out_dir = Path(out_dir)
    final_dir = out_dir / f"finetune_dr{drop_rate:g}"
    best = final_dir / "best.pt"
    if best.exists():
        return best
    out_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(out_dir / f"finetune_dr{drop_rate:g}.lock"):
        if best.exists():  # another worker finished it while we waited
            return best
        tmp = out_dir / f".finetune_dr{drop_rate:g}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        train(cfg, data_root, tmp, action="finetune", init_from=checkpoint, progress=False)
        if not (tmp / "best.pt").exists():
            raise RuntimeError(f"finetuning with drop_rate={drop_rate:g} wrote no {tmp}/best.pt")
        shutil.rmtree(final_dir, ignore_errors=True)  # a torn folder of a killed run
        os.replace(tmp, final_dir)
    return best


# --------------------------------------------------------------------------------------------
# objective
# --------------------------------------------------------------------------------------------


def validation_miou(cfg: Config, real_train: Any, synthetic_dir: str | Path,
                    on_epoch: Optional[Callable[[int, float], None]] = None) -> float:
    """Best validation mIoU of ``tune.architecture`` trained on mix ``tune.mix``.

    Args:
        real_train: the real TRAIN images as an :class:`isdm.evaluation.segmenter.TensorSet`
            at ``evaluate.image_size`` (loaded once per worker by :func:`run_study`).
        synthetic_dir: a sampling output folder (``samples/`` + ``labels/``).
        on_epoch: called with ``(epoch, best validation mIoU so far)`` after every epoch; it
            may raise ``optuna.TrialPruned``.
    """
    from isdm.data.dataset import split_keys
    from isdm.evaluation.loading import eval_data_config, load_synthetic
    from isdm.evaluation.mixes import plan_mix
    from isdm.evaluation.segmenter import TensorSet, build_segmenter, train_segmenter
    from isdm.utils.runtime import resolve_device

    e, t = cfg.evaluate, cfg.tune
    synth = load_synthetic(synthetic_dir, eval_data_config(cfg.data, e.image_size))
    pool, val_keys = split_keys(real_train.keys, e.val_fraction, t.seed)
    if not val_keys:
        raise ConfigError(f"evaluate.val_fraction={e.val_fraction} leaves no validation image out "
                         f"of {len(real_train)}: tuning needs a real validation split")
    plan = plan_mix(t.mix, pool, val_keys, synth.keys, t.seed)
    train = TensorSet.concat([real_train.subset(plan.real_keys), synth.subset(plan.synthetic_keys)])
    val = real_train.subset(plan.val_keys)
    best = float("-inf")

    def report(row: dict[str, float]) -> None:
        nonlocal best
        if row["val_miou"] == row["val_miou"]:  # not NaN
            best = max(best, row["val_miou"])
        if on_epoch is not None:
            on_epoch(int(row["epoch"]), best)

    model = build_segmenter(t.architecture, e.encoder, e.encoder_weights, cfg.data.num_classes, t.seed)
    result = train_segmenter(model, train, val, epochs=t.eval_epochs, lr=e.lr,
                             batch_size=e.batch_size, loss=e.loss, augment=e.augment,
                             num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index,
                             seed=t.seed, device=resolve_device(e.device),
                             encoder_weights=e.encoder_weights, on_epoch=report)
    return float(result.best_val_miou)


def load_real_train(cfg: Config, data_root: str | Path) -> Any:
    """The real train images at ``evaluate.image_size``, loaded once per worker."""
    from isdm.evaluation.loading import eval_data_config, load_real

    return load_real(data_root, "train", eval_data_config(cfg.data, cfg.evaluate.image_size))


def _trial_name(number: int, p: dict[str, Any]) -> str:
    return (f"trial {number}: s={p['sample.s']:.2f} drop={p['finetune.drop_rate']:g} "
            f"{p['sample.sampler']} {p['sample.steps']} steps")


def _objective(cfg: Config, data_root: Path, checkpoint: Path, out_dir: Path, real_train: Any,
               study_run_id: Optional[str]) -> Callable[[Any], float]:
    import optuna

    from isdm import tracking
    from isdm.sampling import run_sampling

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg)
        tcfg = trial_config(cfg, params)
        with tracking.start_run(cfg.tracking, name=_trial_name(trial.number, params),
                                action="trial", dataset=str(data_root), params=params,
                                tags={"optuna.trial": trial.number}, parent_run_id=study_run_id) as run:
            ckpt = finetuned_checkpoint(tcfg, data_root, checkpoint, out_dir,
                                        params["finetune.drop_rate"])
            synthetic = out_dir / "trials" / f"{trial.number:04d}" / "synthetic"
            run_sampling(tcfg, data_root, ckpt, synthetic, overwrite=True)

            def on_epoch(epoch: int, best: float) -> None:
                run.log_metrics({"val_miou": best}, step=epoch)
                trial.report(best, epoch)
                if trial.should_prune():
                    run.set_tags({"optuna.state": "PRUNED"})
                    raise optuna.TrialPruned(f"epoch {epoch}: validation mIoU {best:.4f}")

            try:
                value = validation_miou(tcfg, real_train, synthetic, on_epoch)
            except optuna.TrialPruned as pruned:
                prune = pruned  # leave the run FINISHED: pruning is not a failure
            else:
                prune = None
                run.log_metrics({"val_miou": value})
                run.set_tags({"optuna.state": "COMPLETE"})
        if prune is not None:
            raise prune
        return value

    return objective


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


def best_params_yaml(study: Any) -> str:
    """The best trial's parameters as params.yaml dotted keys, with how to apply them."""
    best = study.best_trial
    sets = " ".join(f"-S {k}={v}" for k, v in best.params.items())
    lines = [f"# Best trial {best.number} of Optuna study {study.study_name!r}: "
             f"validation mIoU {best.value:.4f}.",
             f"# Apply to the pipeline with:  dvc exp run {sets}",
             "# or to one command with --set (e.g. isdm sample ... --set sample.s=...)."]
    lines += [f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in best.params.items()]
    return "\n".join(lines) + "\n"


def _write_trials_csv(study: Any, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for tr in trials for k in tr.params})
    rows = [[tr.number, tr.state.name, "" if tr.value is None else tr.value,
             *[tr.params.get(k, "") for k in names],
             "" if tr.duration is None else round(tr.duration.total_seconds(), 2)] for tr in trials]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "value", *names, "seconds"])
        writer.writerows(rows)


def _write_plots(study: Any, out_dir: Path) -> list[Path]:
    """Optimisation history (>= 1 complete trial) and parameter importances (>= 2) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    plots = [("optimization_history.png", vis.plot_optimization_history, 1),
             ("param_importances.png", vis.plot_param_importances, 2)]
    for name, fn, need in plots:
        if len(complete) < need:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of optuna's matplotlib backend
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as e:  # e.g. importances of a constant parameter
                print(f"tune: skipped {name}: {e}")
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def _summary(study: Any, storage: str) -> dict[str, Any]:
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = {s.name.lower(): states.count(s) for s in optuna.trial.TrialState}
    out: dict[str, Any] = {"study_name": study.study_name, "storage": storage,
                           "n_trials": len(states), "complete": count["complete"],
                           "pruned": count["pruned"], "failed": count["fail"]}
    if count["complete"]:
        out.update(best_trial=study.best_trial.number, best_value=study.best_value,
                   best_params=study.best_params)
    return out


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def run_study(cfg: Config, data_root: str | Path, checkpoint: str | Path, out_dir: str | Path,
              n_trials: Optional[int] = None, storage: Optional[str] = None,
              study_name: Optional[str] = None) -> dict[str, Any]:
    """Run ``n_trials`` trials (default ``tune.n_trials``) of the study in this process.

    Writes ``<out_dir>/best_params.yaml``, ``trials.csv``, ``optimization_history.png``,
    ``param_importances.png`` (when enough trials completed) and ``summary.json``; returns the
    summary. ``n_trials=0`` only creates the study and its MLflow run (for workers to join).
    """
    import optuna

    from isdm import tracking
    from isdm.utils.io import atomic_write_json

    data_root, checkpoint, out_dir = Path(data_root), Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise CheckpointError(f"--checkpoint {checkpoint} does not exist; train one with "
                                "`isdm train` (models/sdm/best.pt)")
    n_trials = cfg.tune.n_trials if n_trials is None else n_trials
    study_name = study_name or cfg.tune.study_name
    spec = resolve_storage(storage if storage is not None else cfg.tune.storage, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, spec, study_name)
    study_run_id = study.user_attrs.get(STUDY_RUN_ATTR)
    t = cfg.tune
    name = f"tune {study_name}: {t.architecture} {t.mix}, {t.num_samples} samples"
    with tracking.start_run(cfg.tracking, name=name, action="tune", dataset=str(data_root),
                            params=None if study_run_id else flatten(cfg), run_id=study_run_id,
                            tags={"optuna.study": study_name, "optuna.storage": spec}) as run:
        if run.run_id and not study_run_id:
            study.set_user_attr(STUDY_RUN_ATTR, run.run_id)
        if n_trials > 0:
            real_train = load_real_train(cfg, data_root)
            objective = _objective(cfg, data_root, checkpoint, out_dir, real_train, run.run_id)
            study.optimize(objective, n_trials=n_trials, gc_after_trial=True)
        summary = _summary(study, spec)
        _write_trials_csv(study, out_dir / "trials.csv")
        files = [out_dir / "trials.csv", *_write_plots(study, out_dir)]
        if summary["complete"]:
            atomic_write_text(out_dir / "best_params.yaml", best_params_yaml(study))
            files.append(out_dir / "best_params.yaml")
            run.log_metrics({"best_val_miou": summary["best_value"]})
            run.set_tags({"optuna.best_trial": summary["best_trial"]})
        run.log_metrics({k: float(summary[k]) for k in ("n_trials", "complete", "pruned", "failed")})
        atomic_write_json(out_dir / "summary.json", summary)
        for path in [*files, out_dir / "summary.json"]:
            run.log_artifact(path)
    return summary
