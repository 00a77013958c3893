"""One typed, frozen config tree mirroring the sections of ``params.yaml``.

Every hyperparameter of isdm lives here, in frozen dataclasses, one per ``params.yaml`` section::

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
      tune       TuneConfig        Optuna search space and budget
      tracking   TrackingConfig    MLflow
      runtime    RuntimeConfig     device, loader workers, progress bars (no stage lists it)

Loading is strict: an unknown key, a key written twice, a value of the wrong type or out of its
range (``nan`` and ``inf`` included) raises :class:`ConfigError` naming the dotted key, the value
and the valid range; unknown keys get the closest valid key ("did you mean weight_decay?").

Modules: :mod:`.checks` (rules, the section base class), :mod:`.model` (``model`` section and
presets), :mod:`.data` (``data``: geometry), :mod:`.schema` (the other sections but ``runtime``:
:mod:`.runtime`, and ``curate``: :mod:`.curation`), :mod:`.tree` (:class:`Config`, dict
conversion), :mod:`.files` (strict YAML/JSON), :mod:`.loading` (:func:`load_config`),
:mod:`.legacy` (the original ISDM tool's flat JSON configs).
"""

from isdm.config.curation import CurateConfig
from isdm.config.files import save_config
from isdm.config.legacy import legacy_paths, legacy_to_tree
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
                                TuneConfig,
                                canonical_dataset_mode,
)
from isdm.config.tree import Config, config_from_json, flatten, from_dict, to_dict
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
    "TrackingConfig",
    "RuntimeConfig",
    "MODEL_PRESETS",
    "load_config",
    "save_config",
    "config_from_json",
    "from_dict",
    "to_dict",
    "flatten",
    "apply_overrides",
    "is_sectioned",
    "default_channel_mult",
    "canonical_dataset_mode",
    "legacy_to_tree",
    "legacy_paths",
]
