"""Downstream evaluation: does synthetic data raise a segmenter's mIoU on the real test set?

:func:`run_evaluation` trains smp segmenters on ``R<a>F<b>`` real/synthetic mixes over several
seeds, tests each once on the real test split, and reports mean ± std, the paired-bootstrap gain
over the real-only baseline ``RALLF000`` and the label fidelity of the synthetic samples.
Modules: :mod:`.mixes` (grammar, seeded draws), :mod:`.segmenter` (model + loop),
:mod:`.cell` (one architecture x mix x seed, shared with ``isdm tune``), :mod:`.metrics`
(IoU/Dice from counts), :mod:`.stats` (bootstrap), :mod:`.fidelity`, :mod:`.report` (JSON, CSV,
markdown, chart), :mod:`.run` (orchestration).
"""

from isdm.evaluation.run import EvaluationError, run_evaluation

__all__ = ["run_evaluation", "EvaluationError"]
