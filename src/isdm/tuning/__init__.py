"""Optuna search of the generator's knobs against the paired downstream VALIDATION gain.

The only package that imports optuna (inside functions, or in modules that nothing imports at
``import isdm.tuning`` time). Modules:

- :mod:`.objective`: one trial (draw ``sample.s``, ``finetune.drop_rate``, ``sample.steps``,
  ``sample.sampler``, ``synthetic_ratio`` and the curation gate's ``curate.min_fidelity`` /
  ``curate.pixel_threshold``; finetune (cached); sample; curate; measure);
- :mod:`.paired`: the objective's value, the mean over the trial's repeat seeds of the
  validation-mIoU gain of real + synthetic over real only at equal steps (common random
  numbers; ``tune.eval_steps: auto`` = the calibrated steps), with its standard error; the
  real-only cells are trained once per study;
- :mod:`.repeats`: how many repeats a trial runs (adaptive: pruned when its upper bound cannot
  reach the best, extended while it leads, never more cells than fixed repeats);
- :mod:`.cache`: file locks and the finetune cache keyed by checkpoint digest and config;
- :mod:`.study`: create or join the study (seeded TPE with ``constant_liar``; one or two
  objectives), one MLflow study run shared by all workers with one child run per trial,
  :func:`run_study`; :mod:`.console`: a progress bar and one line per finished trial;
- :mod:`.storage`: storage specs (``''`` = ``<out>/study.journal``, a URL = an RDB, else a
  journal file), heartbeats that fail and retry the trials of killed workers, retries of
  concurrent starts; :mod:`.journal`: the heartbeat of journal-file storages;
- :mod:`.results` / :mod:`.plots`: ``best_params.yaml`` (dotted keys), ``trials.csv``,
  ``summary.json``; PNG plots of the history, the importances and the Pareto front;
- :mod:`.final_check`: the best trial's knobs against the config's own on the TEST split;
- :mod:`.apply`: ``isdm tune --apply``, the best knobs written into a params.yaml.
"""

from isdm.tuning.apply import apply_params
from isdm.tuning.cache import finetuned_checkpoint
from isdm.tuning.objective import suggest, trial_config
from isdm.tuning.results import best_params_yaml
from isdm.tuning.storage import resolve_storage
from isdm.tuning.study import STUDY_RUN_ATTR, open_study, run_study

__all__ = ["run_study", "open_study", "resolve_storage", "suggest", "trial_config",
           "finetuned_checkpoint", "best_params_yaml", "apply_params", "STUDY_RUN_ATTR"]
