"""The adaptive repeats of `isdm tune` on hand-made repeat values: prune what cannot reach the
best, go on to tune.repeats, extend a leader when the saved repeats pay for it, and count the
segmenter cells a study used."""

from __future__ import annotations

import math

import optuna
import pytest

from isdm.config import load_config
from isdm.tuning.repeats import (
    Decision,
    RepeatRule,
    StudyState,
    decide,
    pooled_sd,
    segmenter_cells,
    study_state,
)

RULE = RepeatRule(repeats=3, min_repeats=1, max_repeats=6, z=1.645, startup=2)


def _state(best=0.01, sigma=0.02, credit=0, baseline=3) -> StudyState:
    return StudyState(best, sigma, credit, baseline)


def test_pooled_sd_weights_each_trial_by_its_degrees_of_freedom():
    # trial a: var 0.0002 (dof 2), trial b: var 0.0008 (dof 1), c: one repeat (no dof)
    a, b, c = [0.0, 0.01, 0.02], [0.0, 0.04], [0.5]
    assert pooled_sd([a, b, c]) == pytest.approx(math.sqrt((2 * 0.0001 + 0.0008) / 3))
    assert pooled_sd([[0.1], []]) is None


def test_fixed_repeats_and_no_decision_before_the_startup_trials():
    fixed = RepeatRule(repeats=3, adaptive=False)
    assert fixed.first == 3 and decide(fixed, [0.0] * 3, _state()).action == "stop"
    assert RULE.first == 1
    assert decide(RULE, [-0.5], _state(best=None)) == Decision(
        "more", 3, "no decision before 2 complete trials and a noise estimate")
    assert decide(RULE, [-0.5, -0.5, -0.5], _state(sigma=None)).action == "stop"


def test_a_trial_whose_upper_bound_cannot_reach_the_best_is_pruned():
    # after 1 repeat: -0.03 + 1.645 * 0.02 = 0.0029 < best 0.01
    d = decide(RULE, [-0.03], _state())
    assert (d.action, d.target) == ("prune", 1) and d.upper == pytest.approx(0.0029)
    # 0.0 + 0.0329 >= 0.01: it may reach the best, on to tune.repeats
    assert (decide(RULE, [0.0], _state()).action, decide(RULE, [0.0], _state()).target) == (
        "more", 3)
    # after 3 repeats the bound is tighter: mean -0.01 + 1.645 * 0.02 / sqrt(3) = 0.009 < 0.01
    assert decide(RULE, [-0.01, -0.01, -0.01], _state()).action == "prune"


def test_a_leader_is_extended_only_when_the_saved_repeats_pay_for_it():
    lead = [0.02, 0.03, 0.025]  # mean 0.025 >= best 0.01
    # 3 more repeats + 3 real-only cells of seeds 3..5 the study has not computed yet
    assert decide(RULE, lead, _state(credit=6)).target == 6
    short = decide(RULE, lead, _state(credit=5))
    assert (short.action, short.target) == ("stop", 3) and "credit 5 < cost 6" in short.reason
    # the real-only cells of seeds 3..5 exist already: the extension costs 3
    assert decide(RULE, lead, _state(credit=3, baseline=6)).target == 6
    # a contender below the best completes with tune.repeats
    assert decide(RULE, [0.005] * 3, _state(credit=99)) == Decision(
        "stop", 3, "complete after 3 repeats", pytest.approx(0.005 + 1.645 * 0.02 / math.sqrt(3)))
    # a leader at max_repeats stops
    assert decide(RULE, [0.02] * 6, _state(credit=99)).action == "stop"


def _trial(number, state, diffs, value=None, planned=None):
    attrs = {"gain_repeats": diffs}
    if planned is not None:
        attrs["repeats_planned"] = planned
    t = optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=value or 0.0,
                                  user_attrs=attrs)
    # create_trial builds complete trials only: set the state and number by hand
    t.state, t.number = state, number
    if state != optuna.trial.TrialState.COMPLETE:
        t.values = None
    return t


def test_study_state_reads_best_noise_and_credit_from_the_trials():
    S = optuna.trial.TrialState
    trials = [_trial(0, S.COMPLETE, [0.01, 0.03, 0.02], 0.02),      # 3 repeats: credit 0
              _trial(1, S.COMPLETE, [0.04] * 6, 0.04),               # extended: -3
              _trial(2, S.PRUNED, [-0.1]),                          # +2
              _trial(3, S.PRUNED, [-0.1]),                          # +2
              _trial(4, S.PRUNED, [-0.2, -0.1, -0.15]),             # +0
              _trial(5, S.RUNNING, [0.05, 0.05, 0.05], planned=6),  # planned 3 beyond: -3
              _trial(6, S.FAIL, [0.9, -0.9]),                       # counts neither way
              _trial(7, S.RUNNING, [0.0])]                          # this trial
    state = study_state(trials, 7, RULE, [0.0], baseline_cells=6)
    assert state.best == 0.04
    # 0 - 3 + 2 + 2 + 0 - 3, minus the 3 real-only cells computed beyond tune.repeats
    assert (state.credit, state.baseline_cells) == (-5, 6)
    expected = pooled_sd([[0.01, 0.03, 0.02], [0.04] * 6, [-0.1], [-0.1], [-0.2, -0.1, -0.15],
                          [0.05] * 3, [0.0]])
    assert state.sigma == pytest.approx(expected)
    # fewer complete trials than the startup: no best
    assert study_state(trials[:1], 7, RULE, [0.0], 3).best is None


def test_segmenter_cells_count_the_repeats_and_the_real_only_cells():
    S = optuna.trial.TrialState
    trials = [_trial(0, S.COMPLETE, [0.0] * 3), _trial(1, S.PRUNED, [0.0]),
              _trial(2, S.COMPLETE, [0.0] * 6), _trial(3, S.FAIL, [0.0] * 2)]
    # 10 trial cells (the failed trial's cells are read by its retry) + 6 real-only; fixed
    # repeats: 3 per trial + 3 real-only
    assert segmenter_cells(trials, 6, 3) == {"trials": 10, "baseline": 6, "total": 16,
                                             "fixed_total": 12}


def test_the_rule_follows_the_config():
    cfg = load_config(None, ["tune.repeats=4", "tune.min_repeats=2", "tune.max_repeats=3"])
    rule = RepeatRule.from_config(cfg.tune)
    assert (rule.first, rule.repeats, rule.max_repeats, rule.adaptive) == (2, 4, 4, True)
    two = load_config(None, ["tune.objectives=[gain, cost]"])
    assert not RepeatRule.from_config(two.tune).adaptive and RepeatRule.from_config(
        two.tune).first == 3
    from isdm.errors import ConfigError

    with pytest.raises(ConfigError, match="min_repeats=4: must be <= tune.repeats=3"):
        load_config(None, ["tune.min_repeats=4"])
