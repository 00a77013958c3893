"""Map the original ISDM tool's flat JSON configs onto isdm's config tree.

:mod:`isdm.config` reads params.yaml-style trees only; a flat file is handed to
:func:`config_tree` by the callers that accept one (the CLI's ``-c``,
:func:`load_original_config`), through ``flat=`` of :func:`isdm.config.load_config`.

The original tool (``python main.py {train,finetune,sample} -c config.json``) used one flat
namespace. Each of its keys is mapped to a dotted isdm key here, depending on the action
(``batch_size`` is ``train.batch_size`` for train, ``finetune.batch_size`` for finetune and
``sample.batch_size`` for sample). Keys fall in four groups:

- mapped (:data:`_MAP`): ``lr`` -> ``train.lr``, ``random_flip`` -> ``data.hflip``, ...;
- bookkeeping that has no effect on results (:data:`IGNORED`): accepted silently;
- keys whose value changes results in a way isdm does not reproduce (:data:`_WARNINGS`): a
  warning on the ``isdm.config`` logger says what isdm does instead, only when the value differs
  from what isdm does (``use_kl: true`` warns, ``use_kl: false`` does not);
- anything else: an error naming the closest known key.

Sampling: ``diffusion_steps: 300`` with ``rescale_timesteps: true`` meant "300 steps that
approximate the 1000-step chain". isdm makes that exact: ``sample.steps = 300`` respaced steps of
the trained chain, while the trained chain itself (``diffusion.diffusion_steps``) comes from the
checkpoint.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from isdm.config import Config, load_config
from isdm.config.checks import show
from isdm.errors import ConfigError

__all__ = ["config_tree", "checkpoint_paths", "load_original_config", "IGNORED", "KNOWN_KEYS"]

log = logging.getLogger("isdm.config")

#: original keys that only steered the original's bookkeeping, with the reason they are ignored
IGNORED: dict[str, str] = {
    "root_log_dir": "outputs go where the CLI's --out says",
    "results_path": "outputs go where the CLI's --out says",
    "model_path": "read by `isdm sample` as the default --checkpoint",
    "class_cond": "the mask is always the condition; the null label covers the unconditional case",
    "num_heads_upsample": "num_head_channels decides the head count",
    "use_new_attention_order": "one attention implementation",
    "log_interval": "see train.log_every",
    "save_interval": "checkpoints are written on the best epoch only",
    "fp16_scale_growth": "torch.amp's GradScaler handles loss scaling",
    "is_train": "set by the action",
    "random_crop": "ignored by the original's lemon modes too",
    "deterministic": "set by the action",
}


def _set(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _floats(value: Any) -> list[float]:
    # The original's "32,16,8" / "0.9999" strings, or a single number.
    if isinstance(value, str):
        return [float(v) for v in value.split(",") if v.strip()]
    return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _train_section(action: str) -> str:
    return "finetune" if action == "finetune" else "train"


def _precision(value: Any) -> str:
    if not isinstance(value, bool):
        raise ConfigError(f"use_fp16: expected true/false, got {value!r}")
    return "fp16" if value else "fp32"


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _number(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


# key -> function(tree, value, action, raw_config)
_Mapper = Callable[[dict, Any, str, Mapping[str, Any]], None]


def _to(dotted: str, convert: Callable[[Any], Any] = lambda v: v) -> _Mapper:
    def f(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
        _set(tree, dotted, convert(v))

    return f


def _train_like(key: str, convert: Callable[[Any], Any] = lambda v: v) -> _Mapper:
    def f(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
        _set(tree, f"{_train_section(action)}.{key}", convert(v))

    return f


def _per_action(key: str, convert: Callable[[Any], Any] = lambda v: v) -> _Mapper:
    def f(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
        section = "sample" if action == "sample" else _train_section(action)
        _set(tree, f"{section}.{key}", convert(v))

    return f


def _image_size(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    _set(tree, "data.image_size", v)
    _set(tree, "evaluate.image_size", v)


def _diffusion_steps(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    if action == "sample":
        # The original rebuilt a shorter chain; isdm respaces the trained one exactly.
        if raw.get("timestep_respacing") in (None, ""):
            _set(tree, "sample.steps", int(v))
    else:
        _set(tree, "diffusion.diffusion_steps", int(v))


def _respacing(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    if v in (None, ""):
        return
    text = str(v)
    if text.startswith("ddim"):
        _set(tree, "sample.sampler", "ddim")
        text = text[4:]
    _set(tree, "sample.steps", sum(int(x) for x in text.split(",") if x.strip()))


def _use_ddim(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    if action == "sample":
        _set(tree, "sample.sampler", "ddim" if v else "ddpm")


def _rescale_timesteps(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    # Exact respacing always gives the network the original timestep values, which is what
    # rescale_timesteps approximated; nothing to set.
    return None


def _balance(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    if not isinstance(v, Mapping):
        raise ConfigError(f"balance_args: expected a mapping, got {v!r}")
    _set(tree, "sample.balance.enabled", True)
    for key, value in v.items():
        _set(tree, f"sample.balance.{key}", value)


def _use_checkpoint(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    if action != "sample":
        _set(tree, "model.use_checkpoint", v)


_MAP: dict[str, _Mapper] = {
    "data_dir": _to("data.root"),
    "dataset_mode": _to("data.dataset_mode"),
    "num_classes": _to("data.num_classes"),
    "image_size": _image_size,
    "random_flip": _to("data.hflip"),
    "lr": _train_like("lr"),
    "weight_decay": _train_like("weight_decay"),
    "batch_size": _per_action("batch_size"),
    "ema_rate": _train_like("ema_rates", _floats),
    "drop_rate": _train_like("drop_rate"),
    "use_fp16": _per_action("precision", _precision),
    "diffusion_steps": _diffusion_steps,
    "noise_schedule": _to("diffusion.noise_schedule"),
    "timestep_respacing": _respacing,
    "rescale_timesteps": _rescale_timesteps,
    "learn_sigma": _to("model.learn_sigma"),
    "num_channels": _to("model.num_channels"),
    "num_head_channels": _to("model.num_head_channels"),
    "num_res_blocks": _to("model.num_res_blocks"),
    # The original's "32,16,8" are feature-map sizes, the same meaning isdm uses.
    "attention_resolutions": _to("model.attention_resolutions",
                                 lambda v: [int(x) for x in _floats(v)]),
    "channel_mult": _to("model.channel_mult", lambda v: _floats(v) if v else []),
    "dropout": _to("model.dropout"),
    "resblock_updown": _to("model.resblock_updown"),
    "use_scale_shift_norm": _to("model.use_scale_shift_norm"),
    "use_checkpoint": _use_checkpoint,
    "num_samples": _to("sample.num_samples"),
    "s": _to("sample.s"),
    "use_ddim": _use_ddim,
    "clip_denoised": _to("sample.clip_denoised"),
    "balance_args": _balance,
}


def _resume(v: Any, raw: Mapping[str, Any], action: str) -> Optional[str]:
    if not v or action == "sample":
        return None
    if action == "finetune":
        return (f"`isdm finetune` starts from its weights (as `--init {v}`) unless --init or "
                "--resume is given")
    return f"`isdm train` continues that run (as `--resume {v}`) unless --resume is given"


def _rescaled_vb(v: Any, raw: Mapping[str, Any], action: str) -> Optional[str]:
    steps = int(_number(raw.get("diffusion_steps"), 1000))
    if not _true(v) or not _true(raw.get("learn_sigma")) or steps == 1000 or action == "sample":
        return None
    return (f"the original scaled L_vb by diffusion_steps / 1000 = {steps / 1000:g}; isdm's "
            "hybrid loss does not (as with rescale_learned_sigmas: false)")


def _heads(v: Any, raw: Mapping[str, Any], action: str) -> Optional[str]:
    if "num_head_channels" in raw:
        return None
    return (f"the original used {v} heads per attention layer (num_head_channels absent); isdm "
            "sizes the heads by model.num_head_channels (64 here: width / 64 heads)")


# key -> function(value, raw config, action) -> what isdm does instead, or None when the same
_WARNINGS: dict[str, Callable[[Any, Mapping[str, Any], str], Optional[str]]] = {
    "resume_checkpoint": _resume,
    "weights_decay": lambda v, raw, a: (
        "the original tool ignored this misspelt key (it reads weight_decay) and trained without "
        f"weight decay; isdm does the same ({_train_section(a)}.weight_decay stays "
        f"{raw.get('weight_decay', 0.0)}). Write weight_decay to use weight decay"),
    "s": lambda v, raw, a: None if not _number(v, 1.0) < 1 else (
        "the original sampled the conditional model for every s <= 1; isdm interpolates "
        f"eps_u + s (eps_c - eps_u), so s={v} is part-way to unconditional (s=0). Set s: 1 for "
        "the original's output"),
    "use_kl": lambda v, raw, a: None if not _true(v) else (
        "the original trained on the variational bound alone; isdm trains the hybrid loss "
        "(MSE on eps + L_vb)"),
    "predict_xstart": lambda v, raw, a: None if not _true(v) else (
        "the original's network predicted x0; isdm's predicts eps (diffusion.prediction: eps, "
        "or v)"),
    "rescale_learned_sigmas": _rescaled_vb,
    "schedule_sampler": lambda v, raw, a: None if v == "uniform" else (
        "isdm draws training timesteps uniformly (the original's 'uniform')"),
    "lr_anneal_steps": lambda v, raw, a: None if not _number(v) > 0 else (
        f"the original decayed the learning rate linearly to 0 over {v} steps; isdm keeps "
        f"{_train_section(a)}.lr constant"),
    "microbatch": lambda v, raw, a: None if not _number(v) > 0 or v == raw.get("batch_size") else (
        "isdm does not split batches: each optimiser step is one forward/backward pass over "
        "batch_size samples"),
    "num_heads": _heads,
    "no_instance": lambda v, raw, a: None if _true(v) else (
        "the original added instance-edge maps to the condition; isdm conditions on the mask "
        "alone (every ISDM config set no_instance: true)"),
}

KNOWN_KEYS = sorted(set(_MAP) | set(IGNORED) | set(_WARNINGS))


def _original_defaults(action: str) -> dict[str, Any]:
    """The original tool's own defaults for keys its JSON files usually omit
    (guided-diffusion ``model_and_diffusion_defaults`` and ``get_training_defaults``), so an
    original config means what it meant there: e.g. no ``channel_mult`` = chosen by image size;
    on top of :data:`isdm.config.tree.FORMER_DEFAULTS` (configs/original.yaml: eps prediction,
    epoch budgets), where isdm's defaults are the embedded pipeline's."""
    from isdm.config.tree import FORMER_DEFAULTS

    tree: dict[str, Any] = {section: dict(keys) for section, keys in FORMER_DEFAULTS.items()}
    tree |= {
        "model": {"num_channels": 128, "channel_mult": [], "num_res_blocks": 2,
                  "attention_resolutions": [16, 8], "num_head_channels": 64, "dropout": 0.0,
                  "resblock_updown": False, "use_scale_shift_norm": True, "learn_sigma": False,
                  "spade_hidden": 128, "use_checkpoint": False},
    }
    if action in ("train", "finetune"):
        tree[action] |= {"lr": 1e-4, "weight_decay": 0.0, "ema_rates": [0.9999],
                         "grad_clip": 0.0, "batch_size": 1}
    else:
        tree["sample"] = {"batch_size": 1, "sampler": "ddpm", "steps": 1000, "s": 1.0}
    return tree


def _infer_action(raw: Mapping[str, Any]) -> str:
    """``model_path`` or ``num_samples`` -> sample; ``drop_rate`` > 0 -> finetune; else train."""
    if "model_path" in raw or "num_samples" in raw:
        return "sample"
    return "finetune" if _number(raw.get("drop_rate")) > 0 else "train"


def config_tree(raw: Mapping[str, Any], action: str | None, source: str = "config") -> dict:
    """Translate an original flat config into an isdm config tree (nested dict).

    Args:
        raw: the parsed JSON of ``config_train.json`` / ``config_finetune.json`` /
            ``config_sample.json``.
        action: ``train``, ``finetune`` or ``sample``; None = inferred (:func:`_infer_action`).
        source: the file name, for messages.

    Returns:
        A nested dict for :func:`isdm.config.from_dict`. Checkpoint paths named in the file are
        not part of it: :func:`checkpoint_paths` returns them. Every key of :data:`_WARNINGS` whose
        value differs from what isdm does is logged once as a warning on ``isdm.config``.
    """
    action = action or _infer_action(raw)
    if action not in ("train", "finetune", "sample"):
        raise ConfigError(f"{source}: unknown action {action!r}; use train, finetune or sample")
    tree: dict[str, Any] = _original_defaults(action)
    errors, warnings = [], []
    for key, value in raw.items():
        if key in IGNORED:
            continue
        if key not in _MAP and key not in _WARNINGS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(f"{source}: unknown key {key!r}{hint}")
            continue
        if key in _MAP:
            _MAP[key](tree, value, action, raw)
        instead = _WARNINGS[key](value, raw, action) if key in _WARNINGS else None
        if instead:
            warnings.append(f"warning: {source}: {key}={show(value)}: {instead}")
    if errors:
        raise ConfigError("\n".join(errors))
    for text in warnings:
        log.warning(text)
    return tree


def checkpoint_paths(raw: Mapping[str, Any]) -> dict[str, Optional[str]]:
    """Checkpoint paths named in an original config: ``{"resume_checkpoint": ..., "model_path":
    ...}``, None where the file names none. isdm takes them on the command line (``--resume`` /
    ``--init`` / ``--checkpoint``); :func:`config_tree` warns about ``resume_checkpoint``."""
    return {k: raw.get(k) or None for k in ("resume_checkpoint", "model_path")}


def load_original_config(path: str | Path | Sequence[str | Path], overrides: Sequence[str] = (),
                         action: str | None = None) -> Config:
    """:func:`isdm.config.load_config` that also reads original flat configs (mapped for
    ``action`` by :func:`config_tree`), e.g. ``load_original_config("config_sample.json",
    action="sample")``."""
    return load_config(path, overrides, action=action, flat=config_tree)
