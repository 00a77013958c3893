"""Mix grammar R<a>F<b> and seeded, validation-disjoint subset draws."""

from __future__ import annotations

import pytest

from isdm.errors import EvaluationError
from isdm.evaluation.mixes import Mix, draw_subset, parse_mix, plan_mix


@pytest.mark.parametrize("code, real, fake", [
    ("RALLF000", None, 0), ("RALLFALL", None, None), ("R000FALL", 0, None),
    ("R100F300", 100, 300), ("R5F0", 5, 0),
])
def test_parse_valid(code, real, fake):
    assert parse_mix(code) == Mix(code, real, fake)


@pytest.mark.parametrize("code", ["R10F", "RxF2", "r10f0", "R10", "F10R2", "R-1F2", "RALLF 10",
                                  "R1.5F0", "", "RallF0"])
def test_parse_invalid_says_the_grammar(code):
    with pytest.raises(EvaluationError, match="R<a>F<b>"):
        parse_mix(code)


def test_mix_without_images_is_an_error():
    with pytest.raises(EvaluationError, match="no images"):
        parse_mix("R000F000")


KEYS = [f"img{i:02d}" for i in range(20)]


def test_draw_is_seeded_nested_and_independent_of_listing_order():
    a = draw_subset(KEYS, 5, seed=3)
    assert a == draw_subset(list(reversed(KEYS)), 5, seed=3)
    assert draw_subset(KEYS, 12, seed=3)[:5] == a               # R5 is inside R12 for one seed
    assert draw_subset(KEYS, 5, seed=4) != a                    # another seed, another draw
    assert a != sorted(KEYS)[:5]                                # not the first n files
    assert sorted(draw_subset(KEYS, None, seed=3)) == sorted(KEYS)


def test_asking_for_more_than_available_is_an_error():
    with pytest.raises(EvaluationError, match="only 20 are available"):
        draw_subset(KEYS, 21, seed=0)


def test_plan_never_trains_on_validation_images():
    val, pool = KEYS[:4], KEYS[4:]
    synth = [f"s{i}" for i in range(10)]
    for seed in range(5):
        plan = plan_mix("RALLF7", pool, val, synth, seed)
        assert set(plan.real_keys) == set(pool) and not set(plan.real_keys) & set(val)
        assert len(plan.synthetic_keys) == 7 and set(plan.synthetic_keys) <= set(synth)
    assert plan_mix("R3F2", pool, val, synth, 1) == plan_mix("R3F2", pool, val, synth, 1)
    with pytest.raises(EvaluationError, match="R17F000.*after holding out 4"):
        plan_mix("R17F000", pool, val, synth, 0)
    with pytest.raises(EvaluationError, match="validation keys also"):
        plan_mix("RALLF000", KEYS, val, synth, 0)
    with pytest.raises(EvaluationError, match="no training images"):
        plan_mix("R000FALL", pool, val, [], 0)


def test_resolve_mixes_puts_the_baseline_first_and_rejects_duplicates():
    from isdm.evaluation.run import resolve_mixes

    assert resolve_mixes(("RALLFALL", "R000FALL")) == ["RALLF000", "RALLFALL", "R000FALL"]
    assert resolve_mixes(("RALLFALL", "RALLF000")) == ["RALLF000", "RALLFALL"]
    assert resolve_mixes(("RALLFALL",), fidelity_only=True) == ["RALLF000"]
    with pytest.raises(EvaluationError, match="more than once"):
        resolve_mixes(("RALLF5", "RALLF5"))
