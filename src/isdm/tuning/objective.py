"""One Optuna trial: draw the knobs, finetune (once per drop rate), sample, train a downstream cell.

1. :func:`suggest` draws ``sample.s`` in ``[tune.s_low, tune.s_high]`` and categorical
   ``finetune.drop_rate``, ``sample.steps`` and ``sample.sampler`` (parameter names are
   params.yaml's dotted keys); :func:`trial_config` applies them and the tune section's budgets;
2. :func:`finetuned_checkpoint` finetunes the ``--checkpoint`` with that drop rate for
   ``tune.finetune_epochs`` epochs, once per rate: ``<out>/finetune_dr<rate>/best.pt`` is cached
   and shared by every worker on the same ``--out`` (a lock file makes the others wait instead of
   training it twice);
3. sampling writes ``tune.num_samples`` pairs into ``<out>/trials/<number>/synthetic``;
4. :func:`validation_miou` trains the downstream cell (:mod:`isdm.evaluation.cell`) of
   ``tune.architecture``, ``tune.mix`` and ``tune.seed`` for ``tune.eval_steps`` optimiser steps
   and returns its best validation mIoU (validation = a split carved from the REAL train images
   with ``evaluate.val_fraction``, scored every ``evaluate.val_every`` steps; the test split is
   never read). Every validation reports the running best to Optuna (at its step), whose pruner
   may stop the trial.

MLflow: each trial is a child run of the study run; its finetune and sample runs are children of
the trial run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from isdm.config import Config

__all__ = ["suggest", "trial_config", "finetuned_checkpoint", "validation_miou",
           "load_real_train", "make_objective"]


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
        evaluate=dataclasses.replace(cfg.evaluate, steps=t.eval_steps),
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
def file_lock(path: Path, poll: float = 1.0) -> Iterator[None]:
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
    with file_lock(out_dir / f"finetune_dr{drop_rate:g}.lock"):
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
# downstream objective
# --------------------------------------------------------------------------------------------


def load_real_train(cfg: Config, data_root: str | Path) -> Any:
    """The real train images at ``evaluate.image_size`` (whole with ``data.crop``), loaded once
    per worker."""
    from isdm.evaluation.loading import load_split

    return load_split(cfg, data_root, "train")


def validation_miou(cfg: Config, real_train: Any, synthetic_dir: str | Path,
                    on_validation: Optional[Callable[[int, float], None]] = None) -> float:
    """Best validation mIoU of the cell (``tune.architecture``, ``tune.mix``, ``tune.seed``)
    trained with ``cfg.evaluate``'s recipe (in a trial, :func:`trial_config` has set
    ``evaluate.steps`` to ``tune.eval_steps``).

    Args:
        real_train: the real TRAIN images as an :class:`isdm.evaluation.segmenter.TensorSet`
            at ``evaluate.image_size`` (:func:`load_real_train`).
        synthetic_dir: a sampling output folder (``samples/`` + ``labels/``).
        on_validation: called with ``(step, best validation mIoU so far)`` after every
            validation; it may raise ``optuna.TrialPruned``.
    """
    from isdm.evaluation.cell import plan_cell, train_cell
    from isdm.evaluation.loading import eval_data_config, load_synthetic
    from isdm.utils.runtime import resolve_device

    e, t = cfg.evaluate, cfg.tune
    synth = load_synthetic(synthetic_dir, eval_data_config(cfg.data, e.image_size))
    cell = plan_cell(cfg, t.architecture, t.mix, t.seed, real_train.keys, synth.keys)
    best = float("-inf")

    def report(row: dict[str, float]) -> None:
        nonlocal best
        if row["val_miou"] == row["val_miou"]:  # not NaN
            best = max(best, row["val_miou"])
        if on_validation is not None:
            on_validation(int(row["step"]), best)

    _, fit = train_cell(cfg, cell, real_train, synth, device=resolve_device(cfg.runtime.device),
                        on_validation=report)
    return float(fit.best_val_miou)


def _trial_name(number: int, p: dict[str, Any]) -> str:
    return (f"trial {number}: s={p['sample.s']:.2f} drop={p['finetune.drop_rate']:g} "
            f"{p['sample.sampler']} {p['sample.steps']} steps")


def make_objective(cfg: Config, data_root: Path, checkpoint: Path, out_dir: Path,
                   real_train: Any, study_run_id: Optional[str]) -> Callable[[Any], float]:
    """The function ``study.optimize`` calls once per trial (see the module docstring)."""
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

            def on_validation(step: int, best: float) -> None:
                run.log_metrics({"val_miou": best}, step=step)
                trial.report(best, step)
                if trial.should_prune():
                    run.set_tags({"optuna.state": "PRUNED"})
                    raise optuna.TrialPruned(f"step {step}: validation mIoU {best:.4f}")

            try:
                value = validation_miou(tcfg, real_train, synthetic, on_validation)
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
