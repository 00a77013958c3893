"""Training mixes in the original ISDM grammar ``R<a>F<b>`` and their seeded subset draws.

``R<a>F<b>`` trains the segmenter on ``a`` real plus ``b`` synthetic ("fake") images, where each
count is a non-negative integer (``000`` = none, leading zeros allowed) or ``ALL``::

    RALLF000   real-only baseline            R000FALL   synthetic only
    RALLFALL   all real + all synthetic      R20F100    20 real + 100 synthetic

Unlike the original harness (which took the FIRST n files in glob order), subsets are seeded
random draws: for seed ``s`` the real pool is permuted once with ``s`` and ``R<a>`` takes the first
``a`` of that permutation, so with one seed ``R10`` is contained in ``R20`` (nested, which makes
mixes of one seed comparable). The synthetic pool is drawn the same way with an independent stream.

Real images held out for validation (model selection) are removed from the real pool BEFORE the
draw, so they are never in a training mix. Asking for more images than the pool holds is an error
(no silent clamping): the message says how many are available.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from isdm.errors import EvaluationError
from isdm.seeds import Stream, generator

__all__ = ["Mix", "parse_mix", "draw_subset", "MixPlan", "plan_mix", "mix_label", "BASELINE"]

BASELINE = "RALLF000"
_GRAMMAR = re.compile(r"^R(ALL|\d+)F(ALL|\d+)$")


def mix_label(mix: str, synthetic_set: str = "", protocol: str = "mix") -> str:
    """A mix as reports name it: ``RALLFALL`` of the set ``curated`` -> ``RALLFALL[curated]``;
    a mix without synthetic images (no set) keeps its code; a training protocol other than
    ``mix`` (:mod:`isdm.evaluation.protocols`) follows: ``RALLFALL[curated] pretrain 0.5``."""
    label = f"{mix}[{synthetic_set}]" if synthetic_set else mix
    return label if protocol == "mix" else f"{label} {protocol}"


@dataclass(frozen=True)
class Mix:
    """A parsed mix code. ``n_real`` / ``n_fake``: a count, or None for ALL."""

    code: str
    n_real: Optional[int]
    n_fake: Optional[int]

    @property
    def uses_synthetic(self) -> bool:
        return self.n_fake is None or self.n_fake > 0


def parse_mix(code: str) -> Mix:
    """Parse ``R<a>F<b>`` strictly (``a``, ``b``: digits or ``ALL``, upper case).

    Raises:
        EvaluationError: on anything else (``'R10F'``, ``'RxF2'``, ``'r10f0'``) or a mix with no images
            (``R000F000``).
    """
    if not isinstance(code, str):
        raise EvaluationError(f"mix {code!r}: expected a string like 'RALLF000' or 'R20F100'")
    m = _GRAMMAR.match(code)
    if not m:
        raise EvaluationError(
            f"mix {code!r} is not R<a>F<b>: a and b must each be digits or ALL (upper case), "
            "e.g. RALLF000 (real only), RALLFALL, R20F100, R000FALL (synthetic only)"
        )
    n_real, n_fake = (None if g == "ALL" else int(g) for g in m.groups())
    if n_real == 0 and n_fake == 0:
        raise EvaluationError(f"mix {code!r} trains on no images at all; give a or b > 0")
    return Mix(code, n_real, n_fake)


def draw_subset(keys: Sequence[str], n: Optional[int], seed: int,
                stream: Stream = Stream.MIX_REAL, what: str = "images") -> list[str]:
    """A seeded random draw of ``n`` keys (None = all, in permuted order).

    The draw depends only on ``(sorted(keys), seed, stream)``: the same call returns the same
    list, and ``draw_subset(keys, a, s)`` is a prefix of ``draw_subset(keys, b, s)`` for a <= b.

    Raises:
        EvaluationError: if ``n`` exceeds ``len(keys)``.
    """
    pool = sorted(keys)
    if n is not None and n > len(pool):
        raise EvaluationError(f"asked for {n} {what} but only {len(pool)} are available; "
                       f"use a smaller count or ALL")
    order = generator(stream, seed).permutation(len(pool))
    chosen = [pool[i] for i in order]
    return chosen if n is None else chosen[:n]


@dataclass(frozen=True)
class MixPlan:
    """Which files one (mix, seed) cell trains and selects on."""

    mix: Mix
    seed: int
    real_keys: tuple[str, ...]
    synthetic_keys: tuple[str, ...]
    val_keys: tuple[str, ...]


def plan_mix(mix: Mix | str, real_pool: Sequence[str], val_keys: Sequence[str],
             synthetic_pool: Sequence[str], seed: int) -> MixPlan:
    """Draw the training files of ``mix`` for ``seed``.

    Args:
        real_pool: real TRAIN keys not used for validation (the caller carved ``val_keys`` off).
        val_keys: real validation keys; checked to be disjoint from ``real_pool``.
        synthetic_pool: keys of the synthetic folder (``samples/`` + ``labels/``).
    """
    mix = parse_mix(mix) if isinstance(mix, str) else mix
    overlap = set(real_pool) & set(val_keys)
    if overlap:
        raise EvaluationError(f"validation keys also in the real training pool: {sorted(overlap)[:5]}")
    try:
        real = draw_subset(real_pool, mix.n_real, seed, Stream.MIX_REAL, "real training images")
        fake = draw_subset(synthetic_pool, mix.n_fake, seed, Stream.MIX_FAKE, "synthetic images")
    except EvaluationError as e:
        raise EvaluationError(f"mix {mix.code}: {e} (after holding out {len(val_keys)} real images "
                       f"for validation; {len(real_pool)} real and {len(synthetic_pool)} synthetic "
                       "remain)") from None
    if not real and not fake:
        raise EvaluationError(f"mix {mix.code}: no training images (the synthetic folder is empty?)")
    return MixPlan(mix, seed, tuple(real), tuple(fake), tuple(val_keys))
