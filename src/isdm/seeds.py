"""Every seed isdm derives from a user's seed, as named streams.

A stream turns ``(seed, *key)`` into independent random numbers through numpy's
``SeedSequence`` (O'Neill's seed mixing): the entropy list is ``[seed mod 2**63, *tag, *key,
*suffix]`` with the stream's fixed tag/suffix, so two streams never share a draw and a key (an
epoch, a rank, a sample index) selects one member of a stream without drawing the others.

Integer streams (:func:`derive`) fold the first two 32-bit words ``w0, w1`` of
``SeedSequence(entropy).generate_state(2)`` into one integer seed, by one of three folds:

==============  ======================================  =======================================
fold            value                                   streams
==============  ======================================  =======================================
``"mod63"``     ``(w0 << 32 | w1) mod 2**63``           training: epoch, steps, validation;
                                                        a cell's synthetic-share stream
``"xor31"``     ``((w0 << 31) ^ w1) & (2**63 - 1)``     sampling: each sample's generator
``"u64"``       ``w0 << 32 | w1`` (64 bits)             mask augmentation and crop seeds
==============  ======================================  =======================================

Generator streams (:func:`generator`) are ``numpy.random.default_rng(entropy)``: the sampling
plan's mask order, the balancer's priorities and fallback draws, the evaluation mixes' subsets,
the training crops (the SDM's and the downstream segmenter's), the nested real subsets of the
label-efficiency curve.

The tags and folds are those the streams had when each lived in its own module, so every seed,
and hence every output, is unchanged; ``tests/test_seeds.py`` pins values of each stream.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Stream", "derive", "generator"]


class Stream(enum.Enum):
    """Named random streams. Key per stream in brackets."""

    TRAIN_GLOBAL = "train_global"  # (epoch, rank): python/numpy/torch global generators
    TRAIN_STEPS = "train_steps"  # (epoch, rank): timesteps, noise and label drops of the steps
    VAL_LOSS = "val_loss"  # (rank,): t and noise of the held-out loss, the same every epoch
    SAMPLE = "sample"  # (i,): sample i's torch generator (initial noise, every sampler step)
    AUGMENT = "augment"  # (i,): mask augmentation of sample i
    AUG_VARIANT = "aug_variant"  # (j, k): k-th augmented variant of mask j in the balancing pool
    PLAN_ORDER = "plan_order"  # (): permutation of the source masks cycled by the plan
    BALANCE_PRIORITY = "balance_priority"  # (): the balancer's candidate priorities
    BALANCE_DRAW = "balance_draw"  # (): the balancer's uniform fallback draw
    MIX_REAL = "mix_real"  # (): the order real images enter a mix R<a>F<b>
    MIX_FAKE = "mix_fake"  # (): the order synthetic images enter a mix
    DATA_CROP = "data_crop"  # (epoch, index): the crop of training item `index` in `epoch`
    SAMPLE_CROP = "sample_crop"  # (i,) sample i's mask crop; (j, k) k-th crop of mask j (pool)
    EVAL_CROP = "eval_crop"  # (step, slot): a downstream cell's crop at position `slot` of `step`
    EVAL_SHARE = "eval_share"  # (): the synthetic stream of a cell with a fixed synthetic share
    LABEL_SUBSET = "label_subset"  # (): the order real train images enter the nested subsets


@dataclass(frozen=True)
class _Spec:
    tag: tuple[int, ...] = ()  # entropy words after the seed, before the key
    suffix: tuple[int, ...] = ()  # entropy words after the key
    fold: Optional[str] = None  # integer fold; None = a numpy Generator stream


_SPECS: dict[Stream, _Spec] = {
    Stream.TRAIN_GLOBAL: _Spec(suffix=(0,), fold="mod63"),
    Stream.TRAIN_STEPS: _Spec(suffix=(1,), fold="mod63"),
    Stream.VAL_LOSS: _Spec(suffix=(7,), fold="mod63"),
    Stream.SAMPLE: _Spec(fold="xor31"),
    Stream.AUGMENT: _Spec(tag=(0xA06,), fold="u64"),
    Stream.AUG_VARIANT: _Spec(tag=(0x5A1,), fold="u64"),
    Stream.PLAN_ORDER: _Spec(tag=(0x504C,)),
    Stream.BALANCE_PRIORITY: _Spec(tag=(0xBA1A,)),
    Stream.BALANCE_DRAW: _Spec(tag=(0xBA1B,)),
    Stream.MIX_REAL: _Spec(tag=(0x5EA1,)),
    Stream.MIX_FAKE: _Spec(tag=(0xFA4E,)),
    Stream.DATA_CROP: _Spec(tag=(0xC40,)),
    Stream.SAMPLE_CROP: _Spec(tag=(0xC41,), fold="u64"),
    Stream.EVAL_CROP: _Spec(tag=(0xC42,)),
    Stream.EVAL_SHARE: _Spec(tag=(0x5A4E,), fold="mod63"),
    Stream.LABEL_SUBSET: _Spec(tag=(0x1AB5,)),
}


def _entropy(spec: _Spec, seed: int, key: tuple[int, ...]) -> list[int]:
    return [int(seed) % 2**63, *spec.tag, *(int(k) for k in key), *spec.suffix]


def derive(stream: Stream, seed: int, *key: int) -> int:
    """The integer seed of member ``key`` of an integer ``stream`` (see the module docstring)."""
    spec = _SPECS[stream]
    if spec.fold is None:
        raise ValueError(f"{stream} is a generator stream; use seeds.generator()")
    w0, w1 = (int(w) for w in np.random.SeedSequence(_entropy(spec, seed, key))
              .generate_state(2, dtype=np.uint32))
    if spec.fold == "mod63":
        return (w0 << 32 | w1) % 2**63
    if spec.fold == "xor31":
        return ((w0 << 31) ^ w1) & (2**63 - 1)
    return w0 << 32 | w1


def generator(stream: Stream, seed: int, *key: int) -> np.random.Generator:
    """``numpy.random.default_rng`` of member ``key`` of a generator ``stream``."""
    spec = _SPECS[stream]
    if spec.fold is not None:
        raise ValueError(f"{stream} is an integer stream; use seeds.derive()")
    return np.random.default_rng(_entropy(spec, seed, key))
