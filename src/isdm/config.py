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
      tune       TuneConfig        Optuna search space and budget
      tracking   TrackingConfig    MLflow

Loading is strict: an unknown key or a value of the wrong type raises :class:`ConfigError`, naming
the dotted key and, for unknown keys, the closest valid key ("did you mean weight_decay?").
The original ISDM tool's flat JSON configs are mapped onto the same tree by :mod:`isdm.legacy`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union, get_args, get_origin

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
    "TuneConfig",
    "TrackingConfig",
    "MODEL_PRESETS",
    "load_config",
    "from_dict",
    "to_dict",
    "flatten",
    "apply_overrides",
    "default_channel_mult",
    "canonical_dataset_mode",
]


DatasetMode = Literal["binary", "multi-class"]
_MODE_ALIASES = {
    "binary": "binary",
    "lemon-binary": "binary",
    "multi-class": "multi-class",
    "multiclass": "multi-class",
    "lemon-multi-class": "multi-class",
}


def canonical_dataset_mode(mode: str) -> str:
    """Map ``lemon-binary`` / ``lemon-multi-class`` aliases onto ``binary`` / ``multi-class``."""
    try:
        return _MODE_ALIASES[mode]
    except KeyError:
        raise ConfigError(
            f"data.dataset_mode: unknown mode {mode!r}; use one of 'binary', 'multi-class' "
            "(aliases 'lemon-binary', 'lemon-multi-class')"
        ) from None


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Dataset layout ``<root>/{train,test}/{images,masks}`` and preprocessing.

    Binary masks: any value > 0 is the defect class 1 (so {0,1} and {0,255} both work).
    Multi-class masks: 8-bit gray or palette PNG holding class ids ``0..num_classes-1``;
    ``ignore_index`` pixels are excluded from losses and metrics.
    """

    root: str = "data/synth"
    dataset_mode: str = "multi-class"
    num_classes: int = 5
    ignore_index: Optional[int] = 255
    image_size: int = 64
    keep_aspect: bool = False
    hflip: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset_mode", canonical_dataset_mode(self.dataset_mode))
        if self.dataset_mode == "binary" and self.num_classes != 2:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but data.dataset_mode='binary' needs 2; "
                "set data.num_classes=2 or dataset_mode='multi-class'"
            )
        if self.num_classes < 2:
            raise ConfigError(f"data.num_classes={self.num_classes}: need at least 2 (background + 1)")
        if self.num_classes > 255:
            raise ConfigError(
                f"data.num_classes={self.num_classes}: class ids live in 8-bit label maps, so at "
                "most 255; masks holding larger values (16-bit PNGs) must be re-saved as 8-bit "
                "class ids (`isdm data check` says how)")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"data.image_size={self.image_size}: use a multiple of 8, at least 8")
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(
                f"data.ignore_index={self.ignore_index} collides with a class id "
                f"(0..{self.num_classes - 1}); use 255 or null"
            )


@dataclass(frozen=True)
class SynthConfig:
    """The embedded procedural dataset written by ``isdm data synth``."""

    seed: int = 0
    num_train: int = 40
    num_test: int = 20
    image_size: int = 64
    binary: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"synth.image_size={self.image_size}: use at least 16 px")
        if self.num_train < 1 or self.num_test < 1:
            raise ConfigError(
                f"synth.num_train={self.num_train}, synth.num_test={self.num_test}: both must be >= 1"
            )


# Channel multipliers chosen by image size, as in guided-diffusion / SDM.
_CHANNEL_MULT_BY_SIZE = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2),
}


def default_channel_mult(image_size: int) -> tuple[float, ...]:
    """The guided-diffusion channel multipliers for ``image_size`` (32/64/128/256/512)."""
    if image_size in _CHANNEL_MULT_BY_SIZE:
        return _CHANNEL_MULT_BY_SIZE[image_size]
    raise ConfigError(
        f"model.channel_mult is empty and image_size={image_size} has no default; "
        f"set model.channel_mult explicitly (defaults exist for {sorted(_CHANNEL_MULT_BY_SIZE)})"
    )


@dataclass(frozen=True)
class ModelConfig:
    """SDM UNet sizes. ``attention_resolutions`` are feature-map sizes in pixels (e.g. 16 = 16x16).

    ``preset`` (``tiny`` / ``default`` / ``original``) fills every key not given explicitly in
    the same section; see :data:`MODEL_PRESETS`. An empty ``channel_mult`` means "chosen by
    image size" (256 -> 1,1,2,2,4,4; 128 -> 1,1,2,3,4; 64 -> 1,2,3,4; 32 -> 1,2,2).
    """

    preset: str = ""
    num_channels: int = 32
    channel_mult: tuple[float, ...] = (1, 1, 2, 3)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16,)
    num_head_channels: int = 32
    dropout: float = 0.0
    resblock_updown: bool = True
    use_scale_shift_norm: bool = True
    learn_sigma: bool = True
    spade_hidden: int = 32
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.num_channels % 32:
            raise ConfigError(
                f"model.num_channels={self.num_channels}: must be a multiple of 32 (GroupNorm(32))"
            )
        if self.preset and self.preset not in MODEL_PRESETS:
            raise ConfigError(_unknown("model.preset", self.preset, MODEL_PRESETS))


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: 0.52 M params, 0.48 GFLOP per 32 px image; attention only in the middle block,
    # so it builds at any even image size
    "tiny": dict(
        num_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_resolutions=(),
        num_head_channels=32, resblock_updown=True, spade_hidden=16,
    ),
    # the embedded pipeline: 2.86 M params, 2.52 GFLOP per 64 px image (35% in SPADE), ~0.5 s
    # per batch-8 training step on 2 CPU cores; needs image_size divisible by 8. SPADE hidden 16
    # (not 32) is 1.2x faster to train and still plenty for 5 classes
    "default": dict(
        num_channels=32, channel_mult=(1, 1, 2, 3), num_res_blocks=1, attention_resolutions=(16,),
        num_head_channels=32, resblock_updown=True, spade_hidden=16,
    ),
    # the original ISDM 256 px configuration (~652 M parameters): GPU only
    "original": dict(
        num_channels=256, channel_mult=(), num_res_blocks=2, attention_resolutions=(32, 16, 8),
        num_head_channels=64, resblock_updown=True, spade_hidden=128, use_checkpoint=True,
    ),
}


@dataclass(frozen=True)
class DiffusionConfig:
    """The trained Markov chain: ``T = diffusion_steps`` steps of a ``linear``/``cosine`` schedule.

    ``prediction`` is what the network's first 3 output channels mean: ``eps`` (the noise, the
    original's choice) or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022),
    converted to eps before every loss and sampler, so the hybrid loss (MSE on eps + L_vb) and
    the samplers are the same for both. ``v`` learns far faster in short runs: an untrained
    network's zero output means x0 ~ 0 at high noise instead of the huge x0 = x_t / sqrt(abar_t)
    of eps (see README "Results").
    """

    diffusion_steps: int = 1000
    noise_schedule: Literal["linear", "cosine"] = "linear"
    prediction: Literal["eps", "v"] = "eps"

    def __post_init__(self) -> None:
        if self.diffusion_steps < 2:
            raise ConfigError(f"diffusion.diffusion_steps={self.diffusion_steps}: need at least 2")
        if self.noise_schedule == "linear" and self.diffusion_steps <= 20:
            raise ConfigError(
                f"diffusion.diffusion_steps={self.diffusion_steps} with the linear schedule makes "
                "the last beta 0.02 * 1000 / T >= 1 (alpha_bar_T = 0); use at least 21 steps or "
                "diffusion.noise_schedule=cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Training / finetuning. ``drop_rate`` > 0 replaces a sample's mask by the null label.

    Checkpoint rule: after each epoch, if the epoch's mean loss (``select_on``) improved on the
    best, write the ``best`` checkpoint atomically and remove the previous one; stop after
    ``max_epochs`` epochs or ``patience`` epochs without improvement (0 = never stop early).
    ``max_steps`` > 0 ends the run after that many optimiser steps (the partial epoch counts).
    ``ema_warmup``: EMA decay ``min(rate, (1+n)/(10+n))`` after n updates, so short runs get a
    useful average. ``precision``: fp16 needs CUDA (falls back to fp32 on CPU); bf16 runs on both.
    ``device``: ``auto`` / ``cpu`` / ``cuda`` (under torchrun each process takes its LOCAL_RANK GPU).
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    max_epochs: int = 30
    patience: int = 10
    grad_clip: float = 1.0
    ema_rates: tuple[float, ...] = (0.999,)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    drop_rate: float = 0.0
    seed: int = 0
    save_last: bool = True
    select_on: Literal["train_loss", "val_loss"] = "train_loss"
    val_fraction: float = 0.0
    max_steps: int = 0
    log_every: int = 10
    ema_warmup: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate={self.drop_rate}: must be in [0, 1)")
        if self.select_on == "val_loss" and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                "select_on='val_loss' needs a held-out split: set val_fraction in (0, 1), e.g. 0.2"
            )
        if any(not 0.0 < r < 1.0 for r in self.ema_rates):
            raise ConfigError(f"ema_rates={self.ema_rates}: each rate must be in (0, 1)")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise ConfigError("batch_size and max_epochs must be >= 1")


_FINETUNE_DEFAULTS = dict(lr=1e-4, max_epochs=10, patience=5, drop_rate=0.2)


@dataclass(frozen=True)
class BalanceConfig:
    """Class-pixel balancing of the conditioning masks (the original's ``balance_args``).

    ``augment_variants``: augmented variants of each mask added to the candidate pool when
    ``use_mask_augmentation`` (see :mod:`isdm.sampling.balance` for the algorithm)."""

    enabled: bool = False
    max_class_dif: float = 0.1
    based_on_generated_data_only: bool = False
    based_on_pixel_count: bool = True
    ejection_classes: tuple[int, ...] = (0,)
    use_mask_augmentation: bool = False
    augment_variants: int = 4

    def __post_init__(self) -> None:
        if self.max_class_dif < 0:
            raise ConfigError(f"sample.balance.max_class_dif={self.max_class_dif}: must be >= 0")
        if self.augment_variants < 0:
            raise ConfigError(f"sample.balance.augment_variants={self.augment_variants}: >= 0")


@dataclass(frozen=True)
class AugmentConfig:
    """Mask augmentation that creates new layouts: flips, 90-degree rotations, translations and
    copy-paste of defect instances between masks (each applied with its probability)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    translate: float = 0.5
    max_shift: float = 0.25
    copy_paste: float = 0.5

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "rot90", "translate", "copy_paste"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"sample.augment.{name}={getattr(self, name)}: a probability "
                                  "in [0, 1]")
        if not 0.0 <= self.max_shift <= 1.0:
            raise ConfigError(f"sample.augment.max_shift={self.max_shift}: a fraction in [0, 1]")


@dataclass(frozen=True)
class SampleConfig:
    """Sampling. ``steps`` respaced steps of the trained chain, placed by ``spacing``
    (``uniform`` in t, ``logsnr`` uniform in log-SNR, ``auto`` = the sampler's own: logsnr for
    dpmpp2m, uniform for ddpm / ddim); ``s`` the guidance scale
    (``eps = eps_u + s (eps_c - eps_u)``: s=1 conditional, s=0 unconditional)."""

    num_samples: int = 40
    batch_size: int = 8
    sampler: Literal["ddpm", "ddim", "dpmpp2m"] = "dpmpp2m"
    steps: int = 20
    spacing: Literal["auto", "uniform", "logsnr"] = "auto"
    eta: float = 0.0
    s: float = 1.5
    seed: int = 0
    clip_denoised: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    mask_source: Literal["train", "folder", "augment"] = "train"
    mask_dir: str = ""
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1 or self.steps < 1:
            raise ConfigError("sample.num_samples, sample.batch_size and sample.steps must be >= 1")
        if self.mask_source == "folder" and not self.mask_dir:
            raise ConfigError("sample.mask_source='folder' needs sample.mask_dir=<folder of masks>")


@dataclass(frozen=True)
class EvaluateConfig:
    """Downstream segmentation: smp models trained on ``R<a>F<b>`` mixes, tested on real test."""

    architectures: tuple[str, ...] = ("UnetPlusPlus", "FPN", "DeepLabV3Plus")
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None
    mixes: tuple[str, ...] = ("RALLF000", "RALLFALL")
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 8
    image_size: int = 64
    loss: Literal["dice", "dice_ce"] = "dice_ce"
    augment: bool = True
    val_fraction: float = 0.2
    bootstrap: int = 1000
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"evaluate.image_size={self.image_size}: smp encoders downsample by "
                              f"32; use a multiple of 32 (e.g. {max(32, round(self.image_size / 32) * 32)})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"evaluate.val_fraction={self.val_fraction}: must be in (0, 1); "
                              "model selection needs a real validation split")
        if self.epochs < 1 or self.batch_size < 2 or self.bootstrap < 0:
            raise ConfigError("evaluate: need epochs >= 1, batch_size >= 2 (BatchNorm) and "
                              "bootstrap >= 0")
        if not self.architectures or not self.seeds or not self.mixes:
            raise ConfigError("evaluate.architectures, evaluate.seeds and evaluate.mixes must not be empty")


@dataclass(frozen=True)
class TuneConfig:
    """Optuna search over the generator's knobs against validation mIoU.

    Each trial finetunes with a ``drop_rates`` choice (cached per rate for ``finetune_epochs``),
    samples ``num_samples`` pairs with guidance ``s`` in ``[s_low, s_high]`` and a ``steps`` /
    ``samplers`` choice, trains ``architecture`` on mix ``mix`` for ``eval_epochs`` and returns its
    validation mIoU (never the test split). ``storage`` '' = a journal file under ``--out``.
    With ``pruning``, a MedianPruner stops a trial whose per-epoch validation mIoU falls below the
    median of earlier trials, after ``pruning_startup_trials`` complete trials. TPE samples at
    random for the first ``sampler_startup_trials`` trials. ``n_trials`` 0 only creates the study
    (and its MLflow run) for workers to join.
    """

    n_trials: int = 10
    study_name: str = "isdm"
    storage: str = ""
    s_low: float = 0.0
    s_high: float = 5.0
    drop_rates: tuple[float, ...] = (0.1, 0.2, 0.3)
    steps: tuple[int, ...] = (10, 20, 30)
    samplers: tuple[str, ...] = ("dpmpp2m", "ddim")
    num_samples: int = 16
    finetune_epochs: int = 2
    eval_epochs: int = 5
    architecture: str = "FPN"
    mix: str = "RALLFALL"
    seed: int = 0
    pruning: bool = True
    pruning_startup_trials: int = 2
    sampler_startup_trials: int = 5

    def __post_init__(self) -> None:
        if not self.s_low <= self.s_high:
            raise ConfigError(f"tune.s_low={self.s_low} > tune.s_high={self.s_high}")
        if not (self.drop_rates and self.steps and self.samplers):
            raise ConfigError("tune.drop_rates, tune.steps and tune.samplers need >= 1 value each")
        if any(not 0.0 <= r < 1.0 for r in self.drop_rates):
            raise ConfigError(f"tune.drop_rates={self.drop_rates}: each rate must be in [0, 1)")
        if self.n_trials < 0 or self.num_samples < 1 or self.eval_epochs < 1:
            raise ConfigError("tune.num_samples and tune.eval_epochs must be >= 1, tune.n_trials >= 0")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. Empty ``tracking_uri`` = ``$MLFLOW_TRACKING_URI`` or the embedded local store."""

    enabled: bool = True
    tracking_uri: str = ""
    experiment: str = ""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**_FINETUNE_DEFAULTS))
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def channel_mult(self) -> tuple[float, ...]:
        """The resolved channel multipliers (empty config value = chosen by image size)."""
        return tuple(self.model.channel_mult) or default_channel_mult(self.data.image_size)

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


# --------------------------------------------------------------------------------------------
# strict conversion
# --------------------------------------------------------------------------------------------


def _unknown(key: str, value: str, valid: Sequence[str] | Mapping[str, Any]) -> str:
    names = list(valid)
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{key}: unknown key {value!r}{hint} (valid: {', '.join(names)})"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            # "32,16,8" (the original's string lists) or a single scalar
            value = [v for v in str(value).split(",") if v.strip()] if isinstance(value, str) else [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (elem,) = get_args(tp)[:1] or (Any,)
        return tuple(_coerce(_parse_scalar(v) if isinstance(v, str) else v, elem, f"{key}[{i}]")
                     for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text.strip())


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys and wrong types raise.

    ``ModelConfig`` applies ``preset`` first, then the explicit keys. ``Config.finetune``
    starts from the finetune defaults (drop_rate 0.2, lr 1e-4, ...).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    if cls is ModelConfig and data.get("preset"):
        preset = data["preset"]
        if preset not in MODEL_PRESETS:
            raise ConfigError(_unknown(f"{prefix}.preset", preset, MODEL_PRESETS))
        kwargs.update(MODEL_PRESETS[preset])
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(_unknown(dotted, str(key), names))
        if cls is Config and key == "finetune" and isinstance(value, Mapping):
            kwargs[key] = from_dict(TrainConfig, {**_FINETUNE_DEFAULTS, **value}, prefix=dotted)
            continue
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix + ': ' if prefix and not str(e).startswith(prefix) else ''}{e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-ready nested dict (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys exactly as in params.yaml (``train.lr``, ``sample.balance.max_class_dif``)."""
    out: dict[str, Any] = {}
    for key, value in (to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg).items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=1e-4")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        if "." not in dotted:
            raise ConfigError(
                f"--set {item!r}: use a dotted key section.key (sections: "
                f"{', '.join(f.name for f in dataclasses.fields(Config))})"
            )
        _set_dotted(tree, dotted, _parse_scalar(raw))
    return tree


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"config file {path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


_SECTIONS = frozenset(f.name for f in dataclasses.fields(Config))


def is_sectioned(data: Mapping[str, Any]) -> bool:
    """True for params.yaml-style trees; False for the original tool's flat JSON configs."""
    return bool(data) and all(k in _SECTIONS for k in data)


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    action: str | None = None,
) -> Config:
    """Load a config strictly.

    Args:
        path: ``params.yaml``-style YAML/JSON with sections, or an original ISDM flat JSON
            config (``config_train.json`` / ``config_finetune.json`` / ``config_sample.json``),
            or None for the built-in defaults.
        overrides: ``section.key=value`` strings applied last.
        action: ``train`` / ``finetune`` / ``sample``: tells the legacy mapper where flat keys
            such as ``batch_size`` or ``drop_rate`` belong. Ignored for sectioned files.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        data = _read_file(Path(path))
        if is_sectioned(data):
            tree = data
        else:
            from isdm.legacy import legacy_to_tree

            tree = legacy_to_tree(data, action=action, source=str(path))
    tree = apply_overrides(json.loads(json.dumps(tree)), overrides)
    try:
        return from_dict(Config, tree)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as JSON or YAML (by suffix), atomically."""
    from isdm.utils.io import atomic_write_text

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    else:
        text = json.dumps(to_dict(cfg), indent=2) + "\n"
    atomic_write_text(path, text)


def config_from_json(text_or_dict: str | Mapping[str, Any]) -> Config:
    """Rebuild a :class:`Config` from its JSON form (e.g. the copy stored in a checkpoint)."""
    data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else text_or_dict
    return from_dict(Config, data)
