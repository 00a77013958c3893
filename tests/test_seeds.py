"""isdm.seeds: every stream reproduces the values its formula gave before the streams were
gathered in one module (the numbers below were computed at bd16bfb with the old functions:
training.rng.derive_seed / seed_epoch, sampling.plan.sample_seed / aug_seed and its plan
permutation, sampling.balance.priority and its fallback draw, evaluation.mixes.draw_subset)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from isdm.evaluation.mixes import draw_subset
from isdm.sampling.balance import priority
from isdm.sampling.plan import aug_seed, sample_seed
from isdm.seeds import Stream, derive, generator
from isdm.training.rng import seed_epoch


def test_training_streams_keep_their_values():
    assert derive(Stream.TRAIN_GLOBAL, 0, 0, 0) == 3527577169254209511
    assert derive(Stream.TRAIN_STEPS, 5, 3, 1) == 7597553332765294589
    assert derive(Stream.VAL_LOSS, 5, 1) == 9033647970883461319
    assert derive(Stream.TRAIN_GLOBAL, 2**64 + 3, 2, 0) == 4124585228780039059  # seed mod 2**63


def test_epoch_generators_draw_what_they_drew():
    gen = seed_epoch(5, 3, 1)
    assert torch.randint(0, 1000, (3,), generator=gen).tolist() == [797, 726, 215]
    assert torch.randint(0, 1000, (2,)).tolist() == [860, 723]
    assert random.random() == 0.5094015054334405
    assert np.random.randint(0, 1000) == 316


def test_sampling_streams_keep_their_values():
    assert sample_seed(0, 5) == 346450728717391432
    assert sample_seed(7, 123) == sample_seed(2**63 + 7, 123) == 1464726228393941151
    assert aug_seed(3, 4) == 15227697480347991222  # 64 bits, as before
    assert aug_seed(3, 1, 2) == 15448901009947664551
    assert generator(Stream.PLAN_ORDER, 9).permutation(8).tolist() == [7, 4, 3, 1, 6, 5, 0, 2]
    assert priority(3, 8).tolist() == [2, 5, 4, 0, 7, 6, 1, 3]
    assert generator(Stream.BALANCE_DRAW, 3).integers(10, size=5).tolist() == [4, 0, 5, 9, 9]


def test_mix_streams_keep_their_values():
    keys = [f"k{i:02d}" for i in range(10)]
    assert draw_subset(keys, 4, 2, Stream.MIX_REAL) == ["k06", "k00", "k05", "k07"]
    assert draw_subset(keys, 4, 2, Stream.MIX_FAKE) == ["k07", "k09", "k01", "k04"]
    # the downstream segmenter's crops (data.crop): key (step, slot)
    assert generator(Stream.EVAL_CROP, 3, 1, 0).integers(100, size=5).tolist() == [7, 29, 56, 48, 44]


def test_a_stream_is_used_as_what_it_is():
    with pytest.raises(ValueError, match="generator stream"):
        derive(Stream.MIX_REAL, 0)
    with pytest.raises(ValueError, match="integer stream"):
        generator(Stream.SAMPLE, 0, 1)
