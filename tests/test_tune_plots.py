"""The study's objective names and its plots (optuna.visualization.matplotlib), on studies
built from hand-made trials: no trial is run."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

optuna = pytest.importorskip("optuna")

from isdm.config import Config  # noqa: E402
from isdm.tuning import plots  # noqa: E402
from isdm.tuning.study import METRIC_NAMES, open_study  # noqa: E402


def _study(values: list, directions=("maximize",)):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(directions=list(directions))
    dists = {"sample.s": FloatDistribution(0.5, 4.0),
             "sample.sampler": CategoricalDistribution(["ddim", "dpmpp2m"])}
    for i, v in enumerate(values):
        params = {"sample.s": 0.5 + 0.7 * i, "sample.sampler": ["ddim", "dpmpp2m"][i % 2]}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  values=list(v)))
    return study


@pytest.mark.parametrize("objectives", [("gain",), ("gain", "cost")])
def test_a_new_study_names_its_objectives(tmp_path, objectives):
    cfg = Config()
    cfg = cfg.replace(tune=dataclasses.replace(cfg.tune, objectives=objectives))
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        study, created = open_study(cfg, str(tmp_path / "study.journal"), "s")
        joined, again = open_study(cfg, str(tmp_path / "study.journal"), "s")
    assert (created, again) == (True, False)
    assert joined.metric_names == list(METRIC_NAMES[:len(objectives)])
    assert METRIC_NAMES[0] == "val_miou_gain"


@pytest.mark.slow  # the first plot imports scipy (~3 s)
def test_plots_follow_the_complete_trials(tmp_path):
    assert plots.write_plots(_study([]), tmp_path) == []
    one = [p.name for p in plots.write_plots(_study([(0.01,)]), tmp_path)]
    assert one == ["optimization_history.png", "slice.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # optuna's ExperimentalWarning stays inside write_plots
        three = plots.write_plots(_study([(0.01,), (0.03,), (-0.02,)]), tmp_path)
    assert [p.name for p in three] == ["optimization_history.png", "slice.png",
                                       "param_importances.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in three)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure closed


@pytest.mark.slow
def test_two_objectives_add_the_pareto_front(tmp_path):
    written = plots.write_plots(_study([(0.01, 2.0), (0.03, 3.0)],
                                       ("maximize", "minimize")), tmp_path)
    assert [p.name for p in written] == ["optimization_history.png", "slice.png",
                                         "pareto_front.png", "param_importances.png"]
