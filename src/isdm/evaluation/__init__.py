"""Downstream evaluation: does synthetic data raise a segmenter's mIoU on the real test set?

:func:`run_evaluation` trains smp segmenters on ``R<a>F<b>`` real/synthetic mixes (each mix with
synthetic images once per synthetic set) over several seeds, every cell for the same
``evaluate.steps`` optimiser steps, tests each once on the real test split, and reports mean ±
std, the paired-bootstrap gain over the real-only baseline ``RALLF000`` (per architecture and
for the mean over architectures), further sets against the first, and label fidelity.
Modules: :mod:`.mixes` (grammar, seeded draws, row labels), :mod:`.segmenter` (model + loop),
:mod:`.cell` (one architecture x mix x seed, shared with ``isdm tune``), :mod:`.metrics`
(IoU/Dice from counts), :mod:`.stats` (bootstrap), :mod:`.summary` (statistics over cells),
:mod:`.fidelity`, :mod:`.loading` (real data, synthetic sets), :mod:`.report` (headline
``metrics.json``, ``report.json``, CSV, chart), :mod:`.markdown` (``report.md``), :mod:`.run`
(orchestration), :mod:`.protocols` (how a mix uses its synthetic images), :mod:`.labels` and
:mod:`.labels_report` (the label-efficiency curve, ``isdm labels``)."""

from isdm.evaluation.run import EvaluationError, run_evaluation

__all__ = ["run_evaluation", "EvaluationError"]
