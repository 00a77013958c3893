"""The whole config tree and its strict conversion from / to nested dicts.

:func:`from_dict` builds a section from a mapping: an unknown key is an error that suggests the
closest valid key, a value of the wrong type is an error naming the dotted key, and every value
is range-checked by the section's constructor (:mod:`isdm.config.checks`). :class:`Config` adds
the rules that tie sections together (the UNet's sizes against ``data.image_size``).
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Union, get_args, get_origin

from isdm.config.checks import Problem, Section, SectionError, type_hints, unknown_key
from isdm.config.curation import CurateConfig
from isdm.config.labels import LabelsConfig
from isdm.config.model import (
    MODEL_PRESETS,
    ModelConfig,
    default_channel_mult,
    preset_clashes,
    unet_problems,
)
from isdm.config.runtime import RuntimeConfig
from isdm.config.schema import (
    FINETUNE_DEFAULTS,
    DataConfig,
    DiffusionConfig,
    EvaluateConfig,
    SampleConfig,
    SynthConfig,
    TrackingConfig,
    TrainConfig,
)
from isdm.config.tune import TuneConfig
from isdm.errors import ConfigError

__all__ = ["Config", "SECTIONS", "MOVED", "REMOVED", "from_dict", "to_dict", "flatten",
           "config_from_json", "check_keys", "finetune_tree", "FORMER_DEFAULTS"]

# Keys that moved to the runtime section (a stored config of an earlier version still has them).
MOVED = {"data.num_workers": "runtime.num_workers", "train.device": "runtime.device",
         "finetune.device": "runtime.device", "evaluate.device": "runtime.device"}
# Keys an earlier version had and this one replaced (a stored config may still hold them).
REMOVED = {"tune.mix": "tune.ratios (the synthetic:real ratio is searched; the real part is "
                       "all real training images)",
           "tune.num_samples": "tune.ratios (a trial samples ratio x the real training images)",
           "tune.eval_epochs": "tune.eval_steps (optimiser steps of a trial's cells)",
           "evaluate.epochs": "evaluate.steps (every mix trains the same optimiser steps)"}
# The built-in defaults before the pipeline's values became the defaults (issue 23): a stored
# config of an earlier version that lacks one of these keys meant this value. configs/original.yaml
# holds the same values as an overlay.
FORMER_DEFAULTS = {
    "diffusion": {"prediction": "eps"},
    "train": {"lr": 2e-4, "max_epochs": 30, "patience": 10, "max_steps": 0},
    "finetune": {"lr": 1e-4, "max_epochs": 10, "patience": 5, "max_steps": 0},
}
_TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class Config(Section):
    """Every hyperparameter of isdm, one field per ``params.yaml`` section (in that order)."""

    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**FINETUNE_DEFAULTS))
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def _problems(self) -> Iterable[Problem]:
        yield from unet_problems(self.model, self.data.image_size)
        n = self.data.num_classes
        bad = [c for c in self.sample.balance.ejection_classes if c >= n]
        if bad:
            yield Problem("sample.balance.ejection_classes", self.sample.balance.ejection_classes,
                          f"ids {bad} are not classes 0..{n - 1} (data.num_classes={n})")
        if "folder" in self.tune.mask_sources and not self.sample.mask_dir:
            yield Problem("tune.mask_sources", self.tune.mask_sources,
                          "a trial drawing 'folder' samples from sample.mask_dir, which is "
                          "empty: set sample.mask_dir=<folder of masks> or drop 'folder'")

    def channel_mult(self) -> tuple[float, ...]:
        """The resolved channel multipliers (empty config value = chosen by image size)."""
        return tuple(self.model.channel_mult) or default_channel_mult(self.data.image_size)

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _scalar(text: str) -> Any:
    """One element of a comma-separated list such as the original's ``"32,16,8"``."""
    import yaml

    return yaml.safe_load(text.strip())


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
            value = ([v for v in value.split(",") if v.strip()] if isinstance(value, str)
                     else [value])
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (elem,) = get_args(tp)[:1] or (Any,)
        return tuple(_coerce(_scalar(v) if isinstance(v, str) else v, elem, f"{key}[{i}]")
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
    raise ConfigError(f"{key}: unsupported type {getattr(tp, '__name__', tp)}")


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys, wrong types and values out
    of range raise :class:`ConfigError` with the dotted key (under ``prefix``).

    ``Config.finetune`` inherits: see :func:`finetune_tree`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    if cls is Config:
        data = _with_finetune(data)
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    invalid: list[SectionError] = []  # of every sub-section, to report them all at once
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            _unknown(cls, dotted, str(key), names)
        if cls is Config and key == "data" and isinstance(value, Mapping):
            value = _upgrade_data(value, dotted)
        try:
            kwargs[key] = _coerce(value, hints[key], dotted)
        except SectionError as e:
            invalid.append(e)
    if invalid:
        raise SectionError("", [p._replace(key=f"{e.section}.{p.key}" if e.section else p.key)
                                for e in invalid for p in e.problems])
    try:
        return cls(**kwargs)
    except SectionError as e:
        raise e.under(prefix) if prefix else e from None


def finetune_tree(train: Mapping[str, Any] | None,
                  finetune: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``finetune`` section a config means: the ``train`` keys it gives, then the finetune
    defaults that differ from train's (:data:`isdm.config.schema.FINETUNE_DEFAULTS`: lr, max_steps,
    drop_rate), then the ``finetune`` keys it gives. So ``finetune`` states only what differs
    from ``train``: ``train.batch_size: 4`` finetunes with batch 4 too, ``train.lr`` does not
    reach finetune's own ``lr``."""
    inherited = {k: v for k, v in (train or {}).items() if k in _TRAIN_KEYS}
    return {**inherited, **FINETUNE_DEFAULTS, **(finetune or {})}


def _with_finetune(data: Mapping[str, Any]) -> Mapping[str, Any]:
    train, finetune = data.get("train"), data.get("finetune")
    sections = (Mapping, type(None))
    if not isinstance(train, sections) or not isinstance(finetune, sections):
        return data  # from_dict reports the section that is not a mapping
    if train is None and finetune is None:
        return data
    return {**data, "finetune": finetune_tree(train, finetune)}


def check_keys(data: Mapping[str, Any], prefix: str = "", cls: type = Config) -> None:
    """Check one layer of a config (a file, ``--set`` values) for unknown keys and wrong types,
    without the range rules, which need the merged tree (:func:`from_dict` applies them).

    Raises:
        ConfigError: naming the dotted key (with the closest valid key for an unknown one).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            _unknown(cls, dotted, str(key), names)
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            check_keys(value, dotted, tp)
        else:
            _coerce(value, tp, dotted)


def _unknown(cls: type, dotted: str, key: str, names: list[str]) -> None:
    if cls is DataConfig and key == "keep_aspect":
        return  # read as data.resize (_upgrade_data)
    if dotted in MOVED:
        raise ConfigError(f"{dotted}: is now {MOVED[dotted]} (the runtime section, which "
                          "no pipeline stage lists); move it there")
    if dotted in REMOVED:
        raise ConfigError(f"{dotted}: was replaced by {REMOVED[dotted]}; remove it")
    what = "section" if cls is Config else "key"
    raise ConfigError(unknown_key(dotted, key, names, what=what))


def _upgrade_data(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """Configs written before ``data.resize`` existed: ``keep_aspect: true`` is ``resize:
    crop`` (resize the short side, centre-crop) and ``false`` is ``stretch``, so their
    checkpoints and files load unchanged (with a note on the ``isdm.config`` logger)."""
    if "keep_aspect" not in data:
        return data
    import logging

    data = dict(data)
    keep = data.pop("keep_aspect")
    if not isinstance(keep, bool):
        raise ConfigError(f"{key}.keep_aspect: expected true/false, got {keep!r}")
    resize = "crop" if keep else "stretch"
    if data.setdefault("resize", resize) != resize:
        raise ConfigError(f"{key}.keep_aspect={str(keep).lower()} means resize={resize!r} but "
                          f"{key}.resize={data['resize']!r}: keep only {key}.resize")
    logging.getLogger("isdm.config").info(
        "%s.keep_aspect=%s is read as %s.resize=%s (keep_aspect is replaced by resize)",
        key, str(keep).lower(), key, resize)
    return data


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


def config_from_json(text_or_dict: str | Mapping[str, Any]) -> Config:
    """Rebuild a :class:`Config` from its JSON form (e.g. the copy stored in a checkpoint).

    A stored config is resolved: its model sizes are the truth. A preset name those sizes
    contradict (a run that overrode a preset's size before presets were enforced) is replaced
    by ``''``, so such a checkpoint still loads. The :data:`MOVED` keys of an earlier version
    are dropped (they said how that run ran, not what it computed), and so are the
    :data:`REMOVED` ones (the downstream budget's and the search's, which no stored model
    depends on). A key of :data:`FORMER_DEFAULTS` that a stored section lacks (a version before
    the key existed) takes the default of that time, not today's.
    """
    data = json.loads(text_or_dict) if isinstance(text_or_dict, str) else dict(text_or_dict)
    for dotted in [*MOVED, *REMOVED]:
        section, key = dotted.split(".")
        if isinstance(data.get(section), Mapping) and key in data[section]:
            data[section] = {k: v for k, v in data[section].items() if k != key}
    for section, former in FORMER_DEFAULTS.items():
        if isinstance(data.get(section), Mapping):
            data[section] = {**former, **data[section]}
    model = data.get("model")
    if isinstance(model, Mapping) and model.get("preset") in MODEL_PRESETS \
            and preset_clashes(model["preset"], model):
        data["model"] = {**model, "preset": ""}
    return from_dict(Config, data)
