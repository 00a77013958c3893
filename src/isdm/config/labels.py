"""The ``labels`` section: the label-efficiency curve (``pipelines/labels/``, ``isdm labels``)."""

from __future__ import annotations

from dataclasses import dataclass

from isdm.config.checks import NON_EMPTY, Section, each, in_range
from isdm.config.schema import SEED

__all__ = ["LabelsConfig"]


@dataclass(frozen=True)
class LabelsConfig(Section):
    """How many real labels is the synthetic data worth?

    Each of ``fractions`` (in (0, 1)) is a point of the curve below 100 %: a seeded subset of
    that fraction of the real train split (``isdm data subset``; the subsets of one ``seed``
    are nested: the 25 % subset lies inside the 50 % one), on which an SDM of its own is trained,
    finetuned and sampled, and the real-only and real + synthetic rows of ``isdm evaluate`` are
    measured (the validation split carved from the subset, the test split the full one). The
    100 % point is always on the curve: the main pipeline's SDM and samples, whose inputs are
    those a 100 % point would have. ``isdm labels`` reads the points' reports and draws the
    curve; the number of real images the synthetic data is worth, with its bootstrap interval
    (``evaluate.bootstrap`` replicates over seeds and test images).
    """

    SECTION = "labels"
    RULES = {"fractions": (NON_EMPTY, each(in_range(0, 1, open_lo=True, open_hi=True))),
             "seed": (SEED,)}

    fractions: tuple[float, ...] = (0.25, 0.5)
    seed: int = 0
