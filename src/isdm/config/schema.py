"""The config sections other than ``model`` and ``data``: one frozen dataclass per
``params.yaml`` section (``DataConfig`` lives in :mod:`isdm.config.data` and is re-exported).

Each field's valid range is in the class's ``RULES`` (checked on construction, see
:mod:`isdm.config.checks`); rules that tie several fields together are in ``_problems``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Optional, Union

from isdm.config.checks import (
    GREATER_0,
    NON_EMPTY,
    PROBABILITY,
    TEXT,
    Problem,
    Rule,
    Section,
    at_least,
    each,
    in_range,
)
from isdm.config.calibration import CalibrationConfig
from isdm.config.data import DataConfig, canonical_dataset_mode, image_hw, square_as_int
from isdm.config.grammar import PROTOCOL

__all__ = ["DataConfig", "image_hw", "SynthConfig", "DiffusionConfig", "TrainConfig",
           "FINETUNE_DEFAULTS",
           "BalanceConfig", "AugmentConfig", "SampleConfig", "EvaluateConfig",
           "TrackingConfig", "canonical_dataset_mode", "SEED", "STEPS"]

SEED = at_least(0)
# The grammar of isdm.evaluation.mixes.parse_mix, checked here so that a typo fails at load.
# evaluate.steps / tune.eval_steps: a number of optimiser steps, or "auto" (calibrated)
STEPS = Rule(lambda v: v == "auto" or (isinstance(v, int) and v >= 1),
             "must be an integer >= 1 or auto (calibrated: evaluate.calibration)")
MIX = Rule(lambda v: re.fullmatch(r"R(ALL|\d+)F(ALL|\d+)", v) is not None
           and re.fullmatch(r"R0+F0+", v) is None,
           "must be R<a>F<b> with a, b digits or ALL (e.g. RALLF000, R20F100), not both 0")


@dataclass(frozen=True)
class SynthConfig(Section):
    """The embedded procedural dataset written by ``isdm data synth``."""

    SECTION = "synth"
    RULES = {"seed": (SEED,), "num_train": (at_least(1),), "num_test": (at_least(1),),
             "image_size": (at_least(16),)}

    seed: int = 0
    num_train: int = 40
    num_test: int = 20
    image_size: int = 64
    binary: bool = False


@dataclass(frozen=True)
class DiffusionConfig(Section):
    """The trained Markov chain: ``T = diffusion_steps`` steps of a ``linear``/``cosine`` schedule.

    ``prediction`` is what the network's first 3 output channels mean: ``eps`` (the noise, the
    original's choice: configs/original.yaml) or
    ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022),
    converted to eps before every loss and sampler, so the hybrid loss (MSE on eps + L_vb) and
    the samplers are the same for both. ``v`` learns far faster in short runs: an untrained
    network's zero output means x0 ~ 0 at high noise instead of the huge x0 = x_t / sqrt(abar_t)
    of eps (see README "Results").
    """

    SECTION = "diffusion"
    RULES = {"diffusion_steps": (at_least(2),)}

    diffusion_steps: int = 1000
    noise_schedule: Literal["linear", "cosine"] = "linear"
    prediction: Literal["eps", "v"] = "v"

    def _problems(self) -> Iterable[Problem]:
        if self.noise_schedule == "linear" and self.diffusion_steps <= 20:
            yield Problem("diffusion_steps", self.diffusion_steps, (
                "with the linear schedule the last beta 0.02 * 1000 / T is >= 1 (alpha_bar_T = 0);"
                " use at least 21 steps or diffusion.noise_schedule=cosine"))


@dataclass(frozen=True)
class TrainConfig(Section):
    """Training / finetuning. ``drop_rate`` > 0 replaces a sample's mask by the null label.

    Checkpoint rule: after each epoch, if the epoch's mean loss (``select_on``) improved on the
    best, write the ``best`` checkpoint atomically and remove the previous one; stop after
    ``max_epochs`` epochs or ``patience`` epochs without improvement (0 = never stop early).
    ``max_steps`` > 0 ends the run after that many optimiser steps (the partial epoch counts),
    whatever the dataset's size; 0 = no step cap, ``max_epochs`` 0 = no epoch cap (one of the
    two must be set). ``grad_clip`` 0 = no clipping. ``ema_warmup``: EMA decay
    ``min(rate, (1+n)/(10+n))`` after n updates, so short runs get a useful average.
    ``precision``: fp16 needs CUDA (falls back to fp32 on CPU); bf16 runs on both.
    A step loss that is NaN / inf or above ``max_loss_ratio`` x the run's first loss stops the
    run with an error (0 = only non-finite losses stop it): :mod:`isdm.training.health`.

    The defaults are the embedded pipeline's: a budget of 1000 steps (the same work on any
    dataset), no early stopping (a 5-step epoch's mean loss is too noisy to stop on) and a
    learning rate for short CPU runs. The former epoch-based defaults: configs/original.yaml.
    """

    SECTION = "train"  # also the finetune section: from_dict puts its keys under "finetune"
    RULES = {
        "lr": (GREATER_0,),
        "weight_decay": (at_least(0),),
        "batch_size": (at_least(1),),
        "max_epochs": (at_least(0),),
        "patience": (at_least(0),),
        "grad_clip": (at_least(0),),
        "ema_rates": (NON_EMPTY, each(in_range(0, 1, open_lo=True, open_hi=True))),
        "drop_rate": (in_range(0, 1, open_hi=True),),
        "seed": (SEED,),
        "val_fraction": (in_range(0, 1, open_hi=True),),
        "max_steps": (at_least(0),),
        "log_every": (at_least(1),),
        "max_loss_ratio": (at_least(0),),
    }

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    max_epochs: int = 0
    patience: int = 0
    grad_clip: float = 1.0
    ema_rates: tuple[float, ...] = (0.999,)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    drop_rate: float = 0.0
    seed: int = 0
    save_last: bool = True
    select_on: Literal["train_loss", "val_loss"] = "train_loss"
    val_fraction: float = 0.0
    max_steps: int = 1000
    log_every: int = 10
    ema_warmup: bool = True
    max_loss_ratio: float = 1e4

    def _problems(self) -> Iterable[Problem]:
        if self.max_steps == 0 and self.max_epochs == 0:
            yield Problem("max_steps", self.max_steps, "max_steps=0 and max_epochs=0 set no "
                          "budget: give max_steps (e.g. 1000, the same on every dataset) or "
                          "max_epochs")
        if self.select_on == "val_loss" and not 0.0 < self.val_fraction < 1.0:
            yield Problem("val_fraction", self.val_fraction, "select_on='val_loss' needs a "
                          "held-out split: set val_fraction in (0, 1), e.g. 0.2")


#: Where the ``finetune`` section's defaults differ from ``train``'s: every other finetune key
#: inherits the ``train`` value of the same config (:func:`isdm.config.tree.finetune_tree`).
FINETUNE_DEFAULTS = dict(lr=5e-4, max_steps=150, drop_rate=0.2)


@dataclass(frozen=True)
class BalanceConfig(Section):
    """Class-pixel balancing of the conditioning masks (the original's ``balance_args``).

    ``augment_variants``: augmented variants of each mask added to the candidate pool when
    ``use_mask_augmentation`` (see :mod:`isdm.sampling.balance` for the algorithm)."""

    SECTION = "sample.balance"
    RULES = {"max_class_dif": (at_least(0),), "ejection_classes": (each(at_least(0)),),
             "augment_variants": (at_least(0),)}

    enabled: bool = False
    max_class_dif: float = 0.1
    based_on_generated_data_only: bool = False
    based_on_pixel_count: bool = True
    ejection_classes: tuple[int, ...] = (0,)
    use_mask_augmentation: bool = False
    augment_variants: int = 4


@dataclass(frozen=True)
class AugmentConfig(Section):
    """Mask augmentation that creates new layouts: flips, 90-degree rotations, translations and
    copy-paste of defect instances between masks (each applied with its probability);
    ``max_shift`` is the largest translation as a fraction of the image side."""

    SECTION = "sample.augment"
    RULES = {name: (PROBABILITY,)
             for name in ("hflip", "vflip", "rot90", "translate", "max_shift", "copy_paste")}

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    translate: float = 0.5
    max_shift: float = 0.25
    copy_paste: float = 0.5


@dataclass(frozen=True)
class SampleConfig(Section):
    """Sampling. ``steps`` respaced steps of the trained chain, placed by ``spacing``
    (``uniform`` in t, ``logsnr`` uniform in log-SNR, ``auto`` = the sampler's own: logsnr for
    dpmpp2m / dpmpp3m / unipc, uniform for ddpm / ddim); ``s`` the guidance scale
    (``eps = eps_u + s (eps_c - eps_u)``: s=1 conditional, s=0 unconditional). Any ``s`` != 1
    needs a checkpoint trained with the null label (``isdm finetune``, drop_rate > 0);
    ``guidance_without_null_label`` allows it anyway (it does not change the samples' identity
    for resuming)."""

    SECTION = "sample"
    RULES = {"num_samples": (at_least(1),), "batch_size": (at_least(1),),
             "steps": (at_least(1),), "eta": (at_least(0),), "s": (at_least(0),),
             "seed": (SEED,)}

    num_samples: int = 40
    batch_size: int = 8
    sampler: Literal["ddpm", "ddim", "dpmpp2m", "dpmpp3m", "unipc"] = "dpmpp2m"
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
    guidance_without_null_label: bool = False

    def _problems(self) -> Iterable[Problem]:
        if self.mask_source == "folder" and not self.mask_dir:
            yield Problem("mask_dir", self.mask_dir,
                          "sample.mask_source='folder' needs sample.mask_dir=<folder of masks>")


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """Downstream segmentation: smp models trained on ``R<a>F<b>`` mixes, tested on real test.
    Every mix trains for the same ``steps`` optimiser steps of ``batch_size`` images (epochs are
    derived: steps x batch_size / training images); ``auto`` = per architecture, the steps at
    which its real-only baseline's validation curve stops rising (``calibration``: the rule,
    :mod:`isdm.evaluation.calibration`), the same for every row of that architecture; the
    validation split (``val_fraction`` of the real train split) is scored every ``val_every``
    steps and after the last, and the best validation's weights are tested. ``batch_size`` >= 2
    because of BatchNorm; ``image_size`` a multiple of 32 because the smp encoders downsample by 32
    (an int: square; ``[H, W]``: a
    rectangle, each side a multiple of 32; whole images are brought to it by ``data.resize``);
    ``precision`` the autocast of the
    segmenter's forward pass (``bf16``: CPUs with native bf16, or CUDA). With ``data.crop``
    ``image_size`` is the segmenter's random training crop of the real images at
    ``data.scale`` (equal to ``data.image_size``, the synthetic images' size) and its window
    for sliding-window prediction on whole validation and test images; neighbouring windows
    overlap by ``window_overlap`` of a window (:mod:`isdm.evaluation.wholes`). ``val_every`` 0
    = as often as keeps validation under a tenth of the training's forward passes
    (:func:`isdm.evaluation.segmenter.validation_interval`). ``workers``: cells trained side by
    side in separate processes, ``threads``: torch threads per cell; 0 = auto (CPU: 1 thread
    per cell and one worker per core, at most one per cell; CUDA: one worker per visible GPU).
    Neither changes what a cell estimates, so neither is in a cell's key
    (:mod:`isdm.evaluation.spec`); the thread count changes a result's last bits, and the
    cell store records it. ``protocol``, ``pretrain_split``, ``synthetic_share`` (0 = none),
    ``protocols`` (extra rows): how mixes use synthetic images, :mod:`isdm.evaluation.protocols`."""

    SECTION = "evaluate"
    RULES = {
        "architectures": (NON_EMPTY, each(TEXT)),
        "encoder": (TEXT,),
        "encoder_weights": (Rule(lambda v: v is None or bool(v.strip()),
                                 "must be a weights name (e.g. imagenet) or null"),),
        "mixes": (NON_EMPTY, each(MIX)),
        "pretrain_split": (in_range(0, 1, open_lo=True, open_hi=True),),
        "synthetic_share": (in_range(0, 1, open_hi=True),),
        "protocols": (each(PROTOCOL),),
        "seeds": (NON_EMPTY, each(SEED)),
        "steps": (STEPS,),
        "val_every": (at_least(0),),
        "lr": (GREATER_0,),
        "batch_size": (at_least(2),),
        "image_size": (Rule(lambda v: (isinstance(v, int) or len(v) == 2)
                            and all(x >= 32 and x % 32 == 0 for x in image_hw(v)),
                            "smp encoders downsample by 32: use a multiple of 32 (or [H, W] of "
                            "such)"),),
        "val_fraction": (in_range(0, 1, open_lo=True, open_hi=True),),
        "bootstrap": (at_least(0),),
        "window_overlap": (in_range(0, 1, open_hi=True),),
        "workers": (at_least(0),),
        "threads": (at_least(0),),
    }

    architectures: tuple[str, ...] = ("UnetPlusPlus", "FPN", "DeepLabV3Plus")
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None
    mixes: tuple[str, ...] = ("RALLF000", "RALLFALL")
    protocol: Literal["mix", "pretrain"] = "mix"
    pretrain_split: float = 0.5
    synthetic_share: float = 0.0
    protocols: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: Union[int, Literal["auto"]] = "auto"
    val_every: int = 20
    lr: float = 1e-3
    batch_size: int = 8
    image_size: Union[int, tuple[int, ...]] = 64
    loss: Literal["dice", "dice_ce"] = "dice_ce"
    augment: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    val_fraction: float = 0.2
    bootstrap: int = 1000
    window_overlap: float = 0.25
    workers: int = 0
    threads: int = 0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def _resolve(self) -> None:
        square_as_int(self)


@dataclass(frozen=True)
class TrackingConfig(Section):
    """MLflow. Empty ``tracking_uri`` = ``$MLFLOW_TRACKING_URI`` or the embedded local store;
    empty ``experiment`` = ``isdm-<dataset folder name>``; ``register_model``: each finetune
    registers a new version of the MLflow model ``isdm-sdm``; ``system_metrics``: every run
    also logs MLflow's system metrics (CPU, memory, GPU, disk, network; ``system/*``, sampled
    every 10 s by a thread; needs ``psutil``, and ``nvidia-ml-py`` for GPUs); off, MLflow's own
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` decides. Not in ``params.yaml``: set with
    ``ISDM_TRACKING``, ``ISDM_EXPERIMENT``, ``ISDM_REGISTER_MODEL``, ``ISDM_SYSTEM_METRICS`` or
    ``--set``."""

    SECTION = "tracking"

    enabled: bool = True
    tracking_uri: str = ""
    experiment: str = ""
    register_model: bool = True
    system_metrics: bool = False
