"""The evaluation's headline metrics, per-architecture values and synthetic set names, on
hand-made summaries (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from isdm.errors import EvaluationError
from isdm.evaluation.loading import synthetic_sets
from isdm.evaluation.report import headline, mlflow_metrics, per_architecture


def _stats(miou: float, gain: tuple[float, float, float] | None = None) -> dict:
    out = {"miou_mean": miou, "miou_nobg_mean": miou / 2}
    if gain:
        out.update(gain=gain[0], gain_lo=gain[1], gain_hi=gain[2], verdict="gain",
                   gain_nobg=0.0, gain_nobg_lo=-0.1, gain_nobg_hi=0.1,
                   verdict_nobg="no significant difference")
    return out


def _summary() -> dict:
    return {
        "main_mix": "RALLFALL", "sets": ["synthetic", "curated"],
        "architectures": {
            "FPN": {"RALLF000": _stats(0.30), "RALLFALL[synthetic]": _stats(0.40, (0.10, 0.02, 0.20)),
                    "RALLFALL[curated]": _stats(0.45, (0.15, 0.05, 0.25)),
                    "R10F000": _stats(0.20, (-0.10, -0.2, 0.0))},
            "UnetPlusPlus": {"RALLF000": _stats(0.50), "RALLFALL[synthetic]": _stats(0.54, (0.04, -0.01, 0.09)),
                             "RALLFALL[curated]": _stats(0.51, (0.01, -0.03, 0.05)),
                             "R10F000": _stats(0.40, (-0.10, -0.2, 0.0))}},
        "overall": {"RALLF000": _stats(0.40), "RALLFALL[synthetic]": _stats(0.47, (0.07, 0.03, 0.12)),
                    "RALLFALL[curated]": _stats(0.48, (0.08, 0.02, 0.13)),
                    "R10F000": _stats(0.30, (-0.10, -0.15, -0.05))},
        "comparisons": [{"arch": "mean", "mix": "RALLFALL", "set": "curated", "reference": "synthetic",
                         "gain": 0.01, "gain_lo": -0.02, "gain_hi": 0.04,
                         "verdict": "no significant difference", "gain_nobg": 0.0,
                         "gain_nobg_lo": 0.0, "gain_nobg_hi": 0.0,
                         "verdict_nobg": "no significant difference"}],
        "fidelity": {"synthetic": {"FPN": {"miou": 0.6}, "UnetPlusPlus": {"miou": 0.7}},
                     "curated": {"FPN": {"miou": 0.9}, "UnetPlusPlus": {"miou": 0.8}}},
    }


def test_headline_holds_the_means_over_architectures_under_stable_names():
    assert headline(_summary()) == {
        "miou_real_only": 0.40, "miou_with_synthetic": 0.47, "miou_gain": 0.07,
        "miou_gain_lo": 0.03, "miou_gain_hi": 0.12, "miou_gain_curated": 0.08,
        "miou_gain_curated_lo": 0.02, "miou_gain_curated_hi": 0.13,
        "label_fidelity": pytest.approx(0.65)}


def test_per_architecture_values_use_the_same_names():
    per = per_architecture(_summary())
    assert per["FPN"] == {"miou_real_only": 0.30, "miou_with_synthetic": 0.40, "miou_gain": 0.10,
                          "miou_gain_lo": 0.02, "miou_gain_hi": 0.20, "miou_gain_curated": 0.15,
                          "miou_gain_curated_lo": 0.05, "miou_gain_curated_hi": 0.25,
                          "label_fidelity": 0.6}
    assert set(per["UnetPlusPlus"]) == set(per["FPN"])


def test_headline_without_synthetic_rows_or_with_undefined_values_leaves_keys_out():
    s = _summary()
    s.update(main_mix=None, sets=[], fidelity={})
    assert headline(s) == {"miou_real_only": 0.40}
    s = _summary()
    s["overall"]["RALLFALL[synthetic]"]["gain_lo"] = float("nan")  # bootstrap 0
    assert "miou_gain_lo" not in headline(s) and headline(s)["miou_gain"] == 0.07


def test_mlflow_metrics_are_flat_numbers_with_valid_names():
    import re

    flat = mlflow_metrics({**_summary(), "headline": headline(_summary()),
                           "per_architecture": per_architecture(_summary())})
    assert flat["FPN.miou_gain"] == 0.10 and flat["mean.RALLFALL_curated.gain_hi"] == 0.13
    assert flat["mean.RALLFALL.curated_vs_synthetic.significant"] == 0.0
    assert flat["FPN.RALLFALL_synthetic.significant_nobg"] == 0.0
    assert all(re.fullmatch(r"[\w.\- /:]+", k) and isinstance(v, float) for k, v in flat.items())


def test_synthetic_set_names():
    assert synthetic_sets(None) == {}
    assert synthetic_sets("data/x") == {"synthetic": Path("data/x")}
    got = synthetic_sets(["data/synthetic", "curated=data/curated", "odd=b/c=d"])
    assert {k: str(v) for k, v in got.items()} == {"synthetic": "data/synthetic",
                                                   "curated": "data/curated", "odd": "b/c=d"}
    assert list(got) == ["synthetic", "curated", "odd"]  # the order given: the first is the reference
    assert synthetic_sets(["./run=2"]) == {"synthetic": Path("./run=2")}  # "./run" is no name
    with pytest.raises(EvaluationError, match="given twice"):
        synthetic_sets(["data/a", "data/b"])
    for bad in ({"lo": "x"}, {"1st": "x"}, {"a b": "x"}):
        with pytest.raises(EvaluationError, match="synthetic set name"):
            synthetic_sets(bad)
