"""PNG plots of a study, drawn by ``optuna.visualization.matplotlib``: the optimisation history
of the gain, each knob's slice (gain against the knob's value), the knobs' importances for the
gain and, with ``[gain, cost]``, the Pareto front.

Optuna's matplotlib functions draw with pyplot: every figure is closed after it is saved, and
their ``ExperimentalWarning`` is silenced here (the plots are the same in every Optuna 5)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

from isdm.utils.io import atomic_path

__all__ = ["write_plots", "GAIN_NAME", "COST_NAME"]

GAIN_NAME = "paired validation mIoU gain"
COST_NAME = "sampling seconds per image"


def _gain(trial: Any) -> float:
    return trial.values[0]


def _figures(study: Any, n_complete: int) -> list[tuple[str, Callable[[], Any]]]:
    """``(file name, draw)`` of the plots a study with ``n_complete`` complete trials gets."""
    from optuna.visualization import matplotlib as vis

    plots: list[tuple[str, Callable[[], Any]]] = []
    if n_complete >= 1:
        plots.append(("optimization_history.png", lambda: vis.plot_optimization_history(
            study, target=_gain, target_name=GAIN_NAME)))
        plots.append(("slice.png", lambda: vis.plot_slice(
            study, target=_gain, target_name=GAIN_NAME)))
    if n_complete >= 1 and len(study.directions) > 1:
        plots.append(("pareto_front.png", lambda: vis.plot_pareto_front(
            study, target_names=[GAIN_NAME, COST_NAME])))
    if n_complete >= 2:  # Optuna's evaluator ranks for LOW targets: the negated gain when
        # two objectives need a target (one objective: the study's direction, maximise)
        single = len(study.directions) == 1
        plots.append(("param_importances.png", lambda: vis.plot_param_importances(
            study, target=None if single else (lambda t: -_gain(t)), target_name=GAIN_NAME)))
    return plots


def write_plots(study: Any, out_dir: Path) -> list[Path]:
    """``<out_dir>/plots/``: ``optimization_history.png`` and ``slice.png`` (>= 1 complete
    trial), ``param_importances.png`` (>= 2, when Optuna can rank the knobs) and, for two
    objectives, ``pareto_front.png`` (>= 1); returns the paths written."""
    import optuna

    out_dir = Path(out_dir) / "plots"
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE
                     for t in study.get_trials(deepcopy=False))
    written = []
    for name, draw in _figures(study, n_complete):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning; "importances equal"
                axes = draw()
        except (ValueError, RuntimeError) as e:  # e.g. importances of a constant parameter
            print(f"tune: skipped {name}: {e}")
            continue
        written.append(_save(axes, out_dir / name))
    return written


def _save(axes: Any, path: Path) -> Path:
    """Save the figure of ``axes`` (one Axes or an array of them) and close it."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig = np.ravel(axes)[0].figure
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
