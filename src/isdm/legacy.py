"""Map the original ISDM tool's flat JSON configs onto isdm's config tree.

The original tool (``python main.py {train,finetune,sample} -c config.json``) used one flat
namespace. Each of its keys is mapped to a dotted isdm key here, depending on the action
(``batch_size`` is ``train.batch_size`` for train, ``finetune.batch_size`` for finetune and
``sample.batch_size`` for sample). Keys that only steered the original's bookkeeping and have no
effect in isdm are accepted and dropped (listed in :data:`IGNORED`). Anything else is an error with
the closest known key, so the original's ``weights_decay`` typo answers "did you mean
weight_decay?" instead of silently training without weight decay.

Sampling: ``diffusion_steps: 300`` with ``rescale_timesteps: true`` meant "300 steps that
approximate the 1000-step chain". isdm makes that exact: ``sample.steps = 300`` respaced steps of
the trained chain, while the trained chain itself (``diffusion.diffusion_steps``) comes from the
checkpoint.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from isdm.config import ConfigError

__all__ = ["legacy_to_tree", "IGNORED", "KNOWN_KEYS"]

#: original keys that isdm accepts and ignores, with the reason (shown by ``isdm config show``).
IGNORED: dict[str, str] = {
    "root_log_dir": "outputs go where the CLI's --out says",
    "results_path": "outputs go where the CLI's --out says",
    "class_cond": "the mask is always the condition; the null label covers the unconditional case",
    "no_instance": "instance/edge maps are not supported (all ISDM configs disabled them)",
    "num_heads": "num_head_channels decides the head count (as in the original with it set)",
    "num_heads_upsample": "num_head_channels decides the head count",
    "use_new_attention_order": "one attention implementation",
    "schedule_sampler": "timesteps are sampled uniformly (the original's only used sampler)",
    "lr_anneal_steps": "constant learning rate (the original's default 0)",
    "microbatch": "no micro-batching",
    "log_interval": "see train.log_every",
    "save_interval": "checkpoints are written on the best epoch only",
    "fp16_scale_growth": "torch.amp's GradScaler handles loss scaling",
    "use_kl": "the hybrid loss (the original's default)",
    "predict_xstart": "eps prediction (the original's default)",
    "rescale_learned_sigmas": "the hybrid loss (the original's default)",
    "is_train": "set by the action",
    "random_crop": "ignored by the original's lemon modes too",
    "random_flip": "see data.hflip",
    "deterministic": "set by the action",
}


def _set(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _attention(value: Any) -> list[int]:
    # The original's "32,16,8" are feature-map sizes, the same meaning isdm uses.
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _section(action: str) -> str:
    return {"train": "train", "finetune": "finetune", "sample": "sample"}[action]


def _ema(value: Any) -> list[float]:
    if isinstance(value, str):
        return [float(v) for v in value.split(",") if v.strip()]
    return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _precision(value: Any) -> str:
    if not isinstance(value, bool):
        raise ConfigError(f"use_fp16: expected true/false, got {value!r}")
    return "fp16" if value else "fp32"


# key -> function(tree, value, action, raw_config)
_Mapper = Callable[[dict, Any, str, Mapping[str, Any]], None]


def _to(dotted: str, convert: Callable[[Any], Any] = lambda v: v) -> _Mapper:
    return lambda tree, v, action, raw: _set(tree, dotted, convert(v))


def _to_action(key: str, convert: Callable[[Any], Any] = lambda v: v) -> _Mapper:
    return lambda tree, v, action, raw: _set(tree, f"{_section(action)}.{key}", convert(v))


def _train_like(key: str, convert: Callable[[Any], Any] = lambda v: v) -> _Mapper:
    def f(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
        section = "finetune" if action == "finetune" else "train"
        _set(tree, f"{section}.{key}", convert(v))

    return f


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


def _rescale(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    # Exact respacing always gives the network the original timestep values, which is what
    # rescale_timesteps approximated; nothing to set.
    return None


def _balance(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    if not isinstance(v, Mapping):
        raise ConfigError(f"balance_args: expected a mapping, got {v!r}")
    _set(tree, "sample.balance.enabled", True)
    for key, value in v.items():
        _set(tree, f"sample.balance.{key}", value)


def _resume(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
    # The checkpoint path is a CLI argument in isdm (--resume / --init); remembered for the CLI.
    if v:
        tree.setdefault("_paths", {})["resume_checkpoint"] = v


def _path(name: str) -> _Mapper:
    def f(tree: dict, v: Any, action: str, raw: Mapping[str, Any]) -> None:
        if v:
            tree.setdefault("_paths", {})[name] = v

    return f


_MAP: dict[str, _Mapper] = {
    "data_dir": _to("data.root"),
    "dataset_mode": _to("data.dataset_mode"),
    "num_classes": _to("data.num_classes"),
    "image_size": lambda tree, v, a, r: (_set(tree, "data.image_size", v),
                                         _set(tree, "evaluate.image_size", v)),
    "lr": _train_like("lr"),
    "weight_decay": _train_like("weight_decay"),
    "batch_size": _to_action("batch_size"),
    "ema_rate": _train_like("ema_rates", _ema),
    "drop_rate": _train_like("drop_rate"),
    "use_fp16": lambda tree, v, a, r: _set(
        tree, f"{'sample' if a == 'sample' else _section(a)}.precision", _precision(v)),
    "diffusion_steps": _diffusion_steps,
    "noise_schedule": _to("diffusion.noise_schedule"),
    "timestep_respacing": _respacing,
    "rescale_timesteps": _rescale,
    "learn_sigma": _to("model.learn_sigma"),
    "num_channels": _to("model.num_channels"),
    "num_head_channels": _to("model.num_head_channels"),
    "num_res_blocks": _to("model.num_res_blocks"),
    "attention_resolutions": _to("model.attention_resolutions", _attention),
    "channel_mult": _to("model.channel_mult",
                        lambda v: [float(x) for x in str(v).split(",") if x.strip()] if v else []),
    "dropout": _to("model.dropout"),
    "resblock_updown": _to("model.resblock_updown"),
    "use_scale_shift_norm": _to("model.use_scale_shift_norm"),
    "use_checkpoint": lambda tree, v, a, r: (_set(tree, "model.use_checkpoint", v)
                                             if a != "sample" else None),
    "resume_checkpoint": _resume,
    "model_path": _path("model_path"),
    "num_samples": _to("sample.num_samples"),
    "s": _to("sample.s"),
    "use_ddim": _use_ddim,
    "clip_denoised": _to("sample.clip_denoised"),
    "balance_args": _balance,
}

KNOWN_KEYS = sorted(set(_MAP) | set(IGNORED))


def _original_defaults(action: str) -> dict[str, Any]:
    """The original tool's own defaults for keys its JSON files usually omit
    (guided-diffusion ``model_and_diffusion_defaults`` and ``get_training_defaults``), so an
    original config means what it meant there: e.g. no ``channel_mult`` = chosen by image size."""
    tree: dict[str, Any] = {
        "model": {"num_channels": 128, "channel_mult": [], "num_res_blocks": 2,
                  "attention_resolutions": [16, 8], "num_head_channels": 64, "dropout": 0.0,
                  "resblock_updown": False, "use_scale_shift_norm": True, "learn_sigma": False,
                  "spade_hidden": 128, "use_checkpoint": False},
    }
    if action in ("train", "finetune"):
        tree[action] = {"lr": 1e-4, "weight_decay": 0.0, "ema_rates": [0.9999],
                        "grad_clip": 0.0, "batch_size": 1}
    else:
        tree["sample"] = {"batch_size": 1, "sampler": "ddpm", "steps": 1000, "s": 1.0}
    return tree


def legacy_to_tree(raw: Mapping[str, Any], action: str | None, source: str = "config") -> dict:
    """Translate an original flat config into an isdm config tree (nested dict).

    Args:
        raw: the parsed JSON of ``config_train.json`` / ``config_finetune.json`` /
            ``config_sample.json``.
        action: ``train``, ``finetune`` or ``sample``. When None it is inferred: ``model_path``
            or ``num_samples`` -> sample; ``drop_rate`` > 0 -> finetune; otherwise train.
        source: the file name, for messages.

    Returns:
        A nested dict for :func:`isdm.config.from_dict`. Checkpoint paths named in the file
        (``resume_checkpoint``, ``model_path``) are returned under the private key ``_paths``
        and removed by :func:`split_paths` before validation.
    """
    if action is None:
        if "model_path" in raw or "num_samples" in raw:
            action = "sample"
        elif float(raw.get("drop_rate", 0) or 0) > 0:
            action = "finetune"
        else:
            action = "train"
    if action not in ("train", "finetune", "sample"):
        raise ConfigError(f"{source}: unknown action {action!r}; use train, finetune or sample")
    tree: dict[str, Any] = _original_defaults(action)
    errors = []
    for key, value in raw.items():
        if key in IGNORED:
            continue
        if key not in _MAP:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(f"{source}: unknown key {key!r}{hint}")
            continue
        _MAP[key](tree, value, action, raw)
    if errors:
        raise ConfigError("\n".join(errors))
    tree.pop("_paths", None)
    return tree


def legacy_paths(raw: Mapping[str, Any]) -> dict[str, str]:
    """Checkpoint paths named in an original config (``resume_checkpoint``, ``model_path``)."""
    return {k: raw[k] for k in ("resume_checkpoint", "model_path") if raw.get(k)}
