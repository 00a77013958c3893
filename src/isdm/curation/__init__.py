"""Curation of synthetic pairs: keep the pairs that teach, drop the ones that mislead.

A segmenter trained on the REAL train split (the scorer) scores every synthetic pair against the
mask it was generated from; pairs it cannot recognise are dropped, pixels it finds far harder
than their class's average are ignored (FreeMask, Yang et al., NeurIPS 2023), and each source
mask gets a re-sampling weight by hardness. The result is a new folder with the layout of a
sampling output (``evaluate`` and ``tune`` read it like any synthetic set) and a dataset card
(counts, fidelity, best and worst pairs, class shares, generator, memorisation check).

Modules: :mod:`.scorer` (the scorer: a cell of the cell store, and its per-pixel scores), :mod:`.filters` (the arithmetic),
:mod:`.memorisation` (nearest real image, near-copies), :mod:`.folder` (reading the synthetic
folder, writing the curated one), :mod:`.card` and :mod:`.figures` (the card),
:mod:`.run` (:func:`curate_folder`, :func:`run_curation`).
"""

from isdm.curation.run import curate_folder, run_curation
from isdm.curation.scorer import Scorer, load_scorer

__all__ = ["curate_folder", "run_curation", "load_scorer", "Scorer"]
