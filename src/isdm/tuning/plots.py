"""PNG plots of a study (matplotlib object style, like :mod:`isdm.training.plots`: no pyplot
state): the optimisation history (gain ± se per complete trial, best so far), the parameter
importances for the gain and, with ``[gain, cost]``, the Pareto front."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from isdm.utils.io import atomic_path

__all__ = ["write_plots"]


def _history_figure(complete: list[Any]) -> Any:
    from matplotlib.figure import Figure

    numbers = [t.number for t in complete]
    gains = [t.user_attrs["gain"] for t in complete]
    se = [t.user_attrs.get("gain_se") or 0.0 for t in complete]
    best = [max(gains[:i + 1]) for i in range(len(gains))]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(numbers, gains, yerr=se, fmt="o", ms=4, capsize=2, label="trial (± se)")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("trial")
    ax.set_ylabel("paired validation mIoU gain")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _importance_figure(importances: dict[str, float]) -> Any:
    from matplotlib.figure import Figure

    names = list(importances)[::-1]  # most important on top
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance for the gain")
    ax.set_title("Parameter importances")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _pareto_figure(complete: list[Any], front: list[Any]) -> Any:
    """Gain against sampling seconds per image; the front's trials joined and labelled."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([t.values[1] for t in complete], [t.values[0] for t in complete], "o", ms=4,
            color="0.6", label="trial")
    front = sorted(front, key=lambda t: t.values[1])
    ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", ms=6, color="C3",
            label="Pareto front")
    for t in front:
        ax.annotate(str(t.number), (t.values[1], t.values[0]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("sampling seconds per image")
    ax.set_ylabel("paired validation mIoU gain")
    ax.set_title("Pareto front: gain vs sampling cost")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def write_plots(study: Any, out_dir: Path) -> list[Path]:
    """``<out_dir>/plots/``: ``optimization_history.png`` (>= 1 complete trial),
    ``param_importances.png`` (>= 2) and, for two objectives, ``pareto_front.png`` (>= 1);
    returns the paths written."""
    import optuna

    out_dir = Path(out_dir) / "plots"
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if complete:
        written.append(_save(_history_figure(complete), out_dir / "optimization_history.png"))
    if complete and len(study.directions) > 1:
        written.append(_save(_pareto_figure(complete, list(study.best_trials)),
                             out_dir / "pareto_front.png"))
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental / "importances will be equal"
                importances = optuna.importance.get_param_importances(
                    study, target=lambda t: t.values[0])
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
