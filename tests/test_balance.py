"""Class balancing: exact greedy choices on hand-made masks, every option, binary and multi-class."""

from __future__ import annotations

import numpy as np
import pytest

from isdm.sampling.balance import (Choice, balance, class_counts, counted_classes, imbalance,
                                  priority)

# Three 2x2 multi-class masks (classes 0, 1, 2):
#   m0: three pixels of class 1      -> pixels [1, 3, 0], images [1, 1, 0]
#   m1: one pixel of class 2         -> pixels [3, 0, 1], images [1, 0, 1]
#   m2: one pixel each of 1 and 2    -> pixels [2, 1, 1], images [1, 1, 1]
M0 = np.array([[1, 1], [1, 0]], np.uint8)
M1 = np.array([[2, 0], [0, 0]], np.uint8)
M2 = np.array([[1, 2], [0, 0]], np.uint8)
MASKS = [M0, M1, M2]
POOL = [Choice(i) for i in range(3)]


def run(masks, num_samples, pixels=True, **kw):
    counts = np.stack([class_counts(m, 3 if masks is MASKS else 2, pixels=pixels) for m in masks])
    return balance(counts, [Choice(i) for i in range(len(masks))], counts.sum(0), num_samples,
                   basis="pixels" if pixels else "images", **kw)


def sources(result):
    return [c.source for c in result.choices]


def test_class_counts_pixels_images_and_ignore():
    m = np.array([[0, 1, 255], [1, 1, 2]], np.uint8)
    assert class_counts(m, 3, pixels=True).tolist() == [1, 3, 1]
    assert class_counts(m, 3, pixels=False).tolist() == [1, 1, 1]
    assert class_counts(np.zeros((2, 2), np.uint8), 3, pixels=False).tolist() == [1, 0, 0]


def test_imbalance_closed_form():
    assert imbalance(np.array([5.0, 5.0])) == 0.0
    assert imbalance(np.array([4.0, 2.0])) == pytest.approx(2 * (1 / 6) ** 2)
    assert imbalance(np.array([0.0, 0.0, 0.0])) == pytest.approx(2 / 3)  # 1 - 1/K


def test_counted_classes_binary_rule_and_errors():
    assert counted_classes(3, [0]) == (1, 2)
    assert counted_classes(3, []) == (0, 1, 2)
    assert counted_classes(2, [0]) == (0, 1)  # binary: background is compared with the defect
    with pytest.raises(ValueError, match="ejection_classes"):
        counted_classes(3, [5])


@pytest.mark.parametrize("seed", range(4))
def test_multiclass_pixels_exact_choices(seed):
    # real counted totals n = [c1 4, c2 2], L = sum (p - 1/2)^2. Helpful (L drops) at step 1:
    # m1 -> [4,3] and m2 -> [5,3]; the seeded priority decides which comes first. Hand-computed:
    # m1 first: m1 [4,3], m2 [5,4], (round over) m1 [5,5] balanced, only m2 keeps it: m2, m2
    # m2 first: m2 [5,3], m1 [5,4], (round over) m2 [6,5], m1 [6,6] balanced, then m2 only
    rank = priority(seed, 3)
    expect = [1, 2, 1, 2, 2] if rank[1] < rank[2] else [2, 1, 2, 1, 2]
    r = run(MASKS, 5, max_class_dif=0.1, seed=seed)
    assert sources(r) == expect
    gen = sum(class_counts(MASKS[i], 3, pixels=True) for i in expect)
    assert r.generated.tolist() == gen.tolist()
    rep = r.report()
    assert rep["before"]["counts"] == [6, 4, 2]
    assert rep["after"]["counts"] == (gen + np.array([6, 4, 2])).tolist()
    assert rep["after"]["imbalance"] < rep["before"]["imbalance"]


def test_priority_is_seeded_permutation():
    assert sorted(priority(0, 5).tolist()) == [0, 1, 2, 3, 4]
    assert priority(3, 5).tolist() == priority(3, 5).tolist()
    assert len({tuple(priority(s, 5).tolist()) for s in range(10)}) > 1


def test_generated_only_starts_from_zero():
    # from n = [0, 0] only m2 (one pixel of each class) balances; it stays the only one that keeps it
    r = run(MASKS, 3, based_on_generated_data_only=True)
    assert sources(r) == [2, 2, 2]
    assert r.report()["after"]["counts"] == r.generated.tolist() == [6, 3, 3]


def test_large_tolerance_gives_variety_by_seeded_priority():
    # with d = 10 every mix counts as balanced once both classes are present: choices follow the
    # seeded priority without repetition inside a round
    a = run(MASKS, 6, max_class_dif=10.0, seed=1)
    b = run(MASKS, 6, max_class_dif=10.0, seed=1)
    assert sources(a) == sources(b)
    assert sorted(sources(a)[:3]) == [0, 1, 2] and sorted(sources(a)[3:]) == [0, 1, 2]
    orders = {tuple(sources(run(MASKS, 3, max_class_dif=10.0, seed=s))) for s in range(8)}
    assert len(orders) > 1


def test_image_count_basis():
    # presence counts: a, b contain class 1, c contains class 2. real n = [2, 1] -> c balances it
    a = np.array([[1, 0]], np.uint8)
    c = np.array([[0, 2]], np.uint8)
    counts = np.stack([class_counts(m, 3, pixels=False) for m in (a, a, c)])
    r = balance(counts, [Choice(i) for i in range(3)], counts.sum(0), 1, basis="images")
    assert sources(r) == [2]
    assert r.report()["after"]["counts"] == [4, 2, 2]  # every mask also contains background
    assert r.report()["basis"] == "images"


def test_ejection_classes_empty_counts_background():
    # background counted too: real [6,4,2]; adding m0 -> [7,7,2] or m1 -> [9,4,3] raises L,
    # only m2 -> [8,5,3] lowers it (0.0556 -> 0.0494)
    r = run(MASKS, 1, ejection_classes=())
    assert sources(r) == [2]
    assert r.counted == (0, 1, 2)


@pytest.mark.parametrize("seed", range(4))
def test_binary_favours_larger_defect_share(seed):
    # 4x4 binary masks with 1, 2, 4 and 0 defect pixels; background ejected -> binary rule.
    # real share 7/64 = 0.109: helpful are the 2-px (0.125) and 4-px (0.25) masks. After the
    # 4-px mask the share is above 0.125, so only the 4-px mask helps from then on.
    masks = []
    for k in (1, 2, 4, 0):
        m = np.zeros((4, 4), np.uint8)
        m.flat[:k] = 1
        masks.append(m)
    rank = priority(seed, 4)
    r = run(masks, 4, seed=seed)
    assert sources(r) == ([1, 2, 2, 2] if rank[1] < rank[2] else [2, 2, 2, 2])
    rep = r.report()
    assert rep["counted_classes"] == [0, 1]
    assert any("binary rule" in n for n in rep["notes"])
    assert rep["after"]["shares"]["1"] > rep["before"]["shares"]["1"]
    assert rep["after"]["imbalance"] < rep["before"]["imbalance"]


def test_no_candidates_falls_back_uniformly():
    masks = [np.zeros((2, 2), np.uint8)] * 3
    counts = np.stack([class_counts(m, 3, pixels=True) for m in masks])
    r = balance(counts, [Choice(i) for i in range(3)], counts.sum(0), 7, seed=3)
    assert len(r.choices) == 7 and {c.source for c in r.choices} <= {0, 1, 2}
    assert any("uniformly" in n for n in r.notes)
    assert sources(r) == sources(balance(counts, [Choice(i) for i in range(3)], counts.sum(0), 7,
                                         seed=3))


def test_exact_count_and_augmented_choices_are_returned():
    pool = [Choice(0), Choice(0, aug_seed=11), Choice(1, aug_seed=12)]
    counts = np.array([[3, 1, 0], [2, 1, 1], [3, 0, 1]])
    r = balance(counts, pool, np.array([3, 1, 0]), 4)
    assert len(r.choices) == 4
    # real counted [1, 0]: both augmented variants help, the seeded priority picks one
    rank = priority(0, 3)
    assert r.choices[0] == (pool[1] if rank[1] < rank[2] else pool[2])
    with pytest.raises(ValueError, match="max_class_dif"):
        balance(counts, pool, np.array([3, 1, 0]), 4, max_class_dif=-1)


# ---- the distribution moves toward balance on real binary and synthetic multi-class masks ----


def _plan_report(root, mode, num_classes, size, **balance_opts):
    from isdm.config import Config, from_dict
    from isdm.sampling.mask_sources import load_mask_set
    from isdm.sampling.plan import make_plan

    cfg = from_dict(Config, {
        "data": {"dataset_mode": mode, "num_classes": num_classes, "image_size": size},
        "sample": {"num_samples": 40, "balance": {"enabled": True, **balance_opts}}})
    plan = make_plan(cfg, load_mask_set(cfg, root, size))
    assert len(plan.choices) == 40
    return plan.distribution.report(), plan


@pytest.mark.crackforest
@pytest.mark.parametrize("opts", [{}, {"based_on_generated_data_only": True},
                                  {"use_mask_augmentation": True, "augment_variants": 2}])
def test_crackforest_binary_moves_toward_balance(crackforest_dir, opts):
    rep, plan = _plan_report(crackforest_dir, "binary", 2, 64, **opts)
    assert rep["counted_classes"] == [0, 1]
    assert rep["after"]["shares"]["1"] > rep["before"]["shares"]["1"]
    assert rep["after"]["imbalance"] < rep["before"]["imbalance"]
    if opts.get("use_mask_augmentation"):
        assert any(c.aug_seed is not None for c in plan.choices)


@pytest.mark.crackforest
def test_crackforest_image_count_is_already_balanced(crackforest_dir):
    # every CrackForest mask holds background and crack: image counts are equal, and stay so
    rep, _ = _plan_report(crackforest_dir, "binary", 2, 64, based_on_pixel_count=False)
    assert rep["basis"] == "images" and rep["before"]["max_over_min"] == 1.0
    assert rep["after"]["max_over_min"] == 1.0


@pytest.mark.parametrize("opts", [{}, {"based_on_pixel_count": False},
                                  {"based_on_generated_data_only": True},
                                  {"use_mask_augmentation": True, "augment_variants": 2}])
def test_synthetic_multiclass_moves_toward_balance(synth_dir, opts):
    rep, _ = _plan_report(synth_dir, "multi-class", 5, 32, **opts)
    assert rep["counted_classes"] == [1, 2, 3, 4]
    assert rep["after"]["imbalance"] < rep["before"]["imbalance"]
