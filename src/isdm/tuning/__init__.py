"""Optuna search of the generator's knobs against the downstream VALIDATION mIoU.

The only package that imports optuna (inside functions, or in modules that nothing imports at
``import isdm.tuning`` time). Modules:

- :mod:`.objective`: one trial (draw ``sample.s``, ``finetune.drop_rate``, ``sample.steps``,
  ``sample.sampler``; finetune once per rate; sample; train one downstream cell of
  :mod:`isdm.evaluation.cell` and return its best validation mIoU, reported per validation to a
  MedianPruner);
- :mod:`.study`: create or join the study (seeded TPE with ``constant_liar``), one MLflow study
  run shared by all workers with one child run per trial, :func:`run_study`;
- :mod:`.storage`: storage specs (``''`` = ``<out>/study.journal``, a URL = an RDB, else a
  journal file), heartbeats that fail and retry the trials of killed workers, retries of
  concurrent starts; :mod:`.journal`: the heartbeat of journal-file storages;
- :mod:`.results`: ``best_params.yaml`` (dotted keys for ``dvc exp run -S``), ``trials.csv``,
  ``summary.json`` and PNG plots of the optimisation history and parameter importances.
"""

from isdm.tuning.objective import (
    finetuned_checkpoint,
    suggest,
    trial_config,
    validation_miou,
)
from isdm.tuning.results import best_params_yaml
from isdm.tuning.storage import resolve_storage
from isdm.tuning.study import STUDY_RUN_ATTR, open_study, run_study

__all__ = ["run_study", "open_study", "resolve_storage", "suggest", "trial_config",
           "finetuned_checkpoint", "validation_miou", "best_params_yaml", "STUDY_RUN_ATTR"]
