"""The ``curate`` section: the quality gate between ``isdm sample`` and ``isdm evaluate``."""

from __future__ import annotations

from dataclasses import dataclass

from isdm.config.checks import Section, at_least, in_range
from isdm.config.schema import SEED, TEXT

__all__ = ["CurateConfig"]


@dataclass(frozen=True)
class CurateConfig(Section):
    """Score every synthetic pair with a segmenter trained on the REAL train split, then filter.

    The scorer is the ``architecture`` cell of the real-only mix ``RALLF000`` with seed ``seed``,
    trained with the ``evaluate`` recipe (its validation split selects the epoch). Per pixel, the
    loss is the cross-entropy of the scorer's logits against the synthetic label; per sample,
    fidelity is the mean IoU of the scorer's prediction against the conditioning mask over the
    classes the mask holds.

    - ``min_fidelity``: a sample with fidelity below it is dropped (0 keeps every sample; a
      label without any class, all ``ignore_index``, has no fidelity and is kept);
    - ``pixel_threshold`` ``tau`` (FreeMask, Yang et al. 2023): a label pixel of class ``c`` whose
      loss is above ``tau * mean loss of class c`` (over the whole synthetic set) becomes
      ``data.ignore_index``; 0 = off. Needs multi-class labels and an ``ignore_index``;
    - ``hardness_power`` ``p``: re-sampling weight of a source mask = (mean loss of its samples)
      ^ p, normalised to mean 1 over masks; 0 = uniform;
    - ``copy_quantile`` ``q``: a synthetic image is a near-copy when its distance to the nearest
      real train image is below the ``q`` quantile of the real images' own nearest-neighbour
      distances (leave-one-out).
    """

    SECTION = "curate"
    RULES = {
        "architecture": (TEXT,),
        "seed": (SEED,),
        "min_fidelity": (in_range(0, 1),),
        "pixel_threshold": (at_least(0),),
        "hardness_power": (at_least(0),),
        "copy_quantile": (in_range(0, 1),),
    }

    architecture: str = "FPN"
    seed: int = 0
    min_fidelity: float = 0.2
    pixel_threshold: float = 2.0
    hardness_power: float = 1.0
    copy_quantile: float = 0.05
