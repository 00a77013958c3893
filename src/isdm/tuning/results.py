"""What a study leaves in ``--out``: ``best_params.yaml``, ``trials.csv``, ``summary.json`` and
PNG plots of the optimisation history and the parameter importances (matplotlib object style,
like :mod:`isdm.training.plots`: no pyplot state)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

from isdm.utils.io import atomic_path

__all__ = ["best_params_yaml", "write_trials_csv", "write_plots", "summary"]


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


def write_trials_csv(study: Any, path: Path) -> None:
    """One row per trial: number, state, value, the parameters and the duration in seconds."""
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


def _history_figure(complete: list[Any]) -> Any:
    """Validation mIoU of every complete trial against its number, and the best so far."""
    from matplotlib.figure import Figure

    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    best = [max(values[:i + 1]) for i in range(len(values))]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(numbers, values, "o", ms=4, label="trial")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation mIoU")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _importance_figure(importances: dict[str, float]) -> Any:
    """Horizontal bars of the parameter importances (Optuna's default evaluator)."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]  # most important on top
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance for validation mIoU")
    ax.set_title("Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return fig


def write_plots(study: Any, out_dir: Path) -> list[Path]:
    """Optimisation history (>= 1 complete trial) and parameter importances (>= 2) as PNG."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if complete:
        written.append(_save(_history_figure(complete), out_dir / "optimization_history.png"))
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental / "importances will be equal"
                importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as e:  # e.g. importances of a constant parameter
            print(f"tune: skipped param_importances.png: {e}")
        else:
            written.append(_save(_importance_figure(importances), out_dir / "param_importances.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def summary(study: Any, storage: str) -> dict[str, Any]:
    """Counts of trials per state and, once one completed, the best trial."""
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
