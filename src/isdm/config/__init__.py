"""One typed, frozen config tree; ``params.yaml`` holds the knobs a user changes.

Every hyperparameter of isdm and every default lives here, in frozen dataclasses, one per
section (the defaults are the embedded pipeline's values)::

    Config
      data       DataConfig        dataset layout, classes, resize
      synth      SynthConfig       the embedded procedural dataset
      model      ModelConfig       SDM UNet sizes (presets: tiny / default / original)
      diffusion  DiffusionConfig   the trained chain
      train      TrainConfig       training from scratch
      finetune   TrainConfig       classifier-free-guidance finetuning (drop_rate > 0)
      sample     SampleConfig      samplers, guidance, mask sources, balancing
      evaluate   EvaluateConfig    downstream segmentation
      curate     CurateConfig      the quality gate on synthetic pairs
      tune       TuneConfig        Optuna search space and budget (pipelines/tune/params.yaml)
      labels     LabelsConfig      the label-efficiency curve (pipelines/labels/params.yaml)
      tracking   TrackingConfig    MLflow (ISDM_* variables, --set; not in params.yaml)
      runtime    RuntimeConfig     device, loader workers, progress bars (likewise)

Loading is strict: an unknown key, a key written twice, a value of the wrong type or out of its
range (``nan`` and ``inf`` included) raises :class:`ConfigError` naming the dotted key, the value
and the valid range; unknown keys get the closest valid key ("did you mean weight_decay?").
Configs layer (defaults, ``-c`` files in order, ``ISDM_*`` variables, ``--set``) and every
resolved value knows its source: :mod:`.layers`; ``finetune`` inherits from ``train`` what it
does not set (:func:`isdm.config.tree.finetune_tree`).

Modules: :mod:`.checks` (rules, the section base class), :mod:`.model` (``model`` section and
presets), :mod:`.data` (``data``: geometry), :mod:`.schema` (the other sections but ``runtime``:
:mod:`.runtime`, ``curate``: :mod:`.curation`, and ``labels``: :mod:`.labels`), :mod:`.tree` (:class:`Config`, dict
conversion), :mod:`.files` (strict YAML/JSON), :mod:`.loading` (:func:`load_config`),
:mod:`.layers` (overlays, sources), :mod:`.edit` (writing values into params.yaml). The original
ISDM tool's flat JSON configs are read by :mod:`isdm.original.configs`, which the CLI passes in
(``flat=``).
"""

from isdm.config.curation import CurateConfig
from isdm.config.labels import LabelsConfig
from isdm.config.files import save_config
from isdm.config.layers import ENV_VARS, Resolved, resolve
from isdm.config.loading import apply_overrides, is_sectioned, load_config
from isdm.config.model import MODEL_PRESETS, ModelConfig, default_channel_mult
from isdm.config.runtime import RuntimeConfig
from isdm.config.schema import (
                                AugmentConfig,
                                BalanceConfig,
                                DataConfig,
                                DiffusionConfig,
                                EvaluateConfig,
                                SampleConfig,
                                SynthConfig,
                                TrackingConfig,
                                TrainConfig,
                                canonical_dataset_mode,
)
from isdm.config.tune import TuneConfig
from isdm.config.tree import (
                              FORMER_DEFAULTS,
                              Config,
                              config_from_json,
                              flatten,
                              from_dict,
                              to_dict,
)
from isdm.errors import ConfigError

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "SynthConfig",
    "ModelConfig",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "BalanceConfig",
    "AugmentConfig",
    "EvaluateConfig",
    "CurateConfig",
    "TuneConfig",
    "LabelsConfig",
    "TrackingConfig",
    "RuntimeConfig",
    "MODEL_PRESETS",
    "load_config",
    "resolve",
    "Resolved",
    "ENV_VARS",
    "FORMER_DEFAULTS",
    "save_config",
    "config_from_json",
    "from_dict",
    "to_dict",
    "flatten",
    "apply_overrides",
    "is_sectioned",
    "default_channel_mult",
    "canonical_dataset_mode",
]
