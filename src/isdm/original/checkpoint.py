"""Turn a checkpoint of the original ISDM tool into an isdm checkpoint (``isdm import-checkpoint``).

The original wrote bare state dicts and no config: ``model{step:06d}.pt`` (the trained weights)
and ``ema_{rate}_{step:06d}.pt`` (their moving average, which it sampled from). Given the
original's flat JSON config, :func:`import_original` builds isdm's network for it, maps the
weights onto it (:mod:`isdm.original.keys`) and writes a normal isdm checkpoint
(:func:`isdm.training.checkpoint.save`) that ``isdm sample`` / ``isdm finetune --init`` accept::

    model   the imported weights (an EMA file's average when importing one)
    ema     {} for ``model*.pt``; for an EMA file ``{"rates": [rate], "num_updates": step,
            "shadows": {rate: weights}}``, so sampling picks the average as usual
    step    the original's step (from the file name, 0 if absent); epoch 0
    config  the JSON through :func:`isdm.original.configs.load_original_config` (action
            ``train``), ``num_head_channels`` chosen so that every attention layer keeps the
            original's head count
    meta    image_size, num_classes, num_params, action "import", imported_from,
            imported_sha256, imported_weights ("raw" or "ema <rate>"), imported_config
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from isdm.config import Config, flatten, is_sectioned, to_dict
from isdm.errors import CheckpointError, ConfigError, OutputExistsError
from isdm.original.configs import load_original_config
from isdm.training import checkpoint
from isdm.utils.io import sha256_file

__all__ = ["import_original"]

_EMA_NAME = re.compile(r"ema_(\d*\.?\d+)_(\d+)\.pt")
_MODEL_NAME = re.compile(r"model(\d+)\.pt")


def import_original(weights: str | Path, config: str | Path, out: str | Path, *,
                    ema: Optional[bool] = None, overrides: Sequence[str] = (),
                    overwrite: bool = False) -> dict[str, Any]:
    """Write the original checkpoint ``weights`` as the isdm checkpoint ``out``.

    Args:
        weights: the original's ``model*.pt`` or ``ema_<rate>_<step>.pt``.
        config: the original's flat JSON config the weights were trained with.
        out: the isdm checkpoint to write (e.g. ``models/imported/best.pt``).
        ema: the file holds EMA weights; None = decided by the file name (``ema_<rate>_*``).
        overrides: ``section.key=value`` applied to the mapped config.
        overwrite: replace an existing ``out``.

    Returns:
        ``{"out", "weights", "step", "num_params", "tensors"}`` for the CLI's summary line.

    Raises:
        CheckpointError: the file is not a state dict, or its keys/shapes do not fit the config
            (every such key listed, with the config values the shapes point to).
        ConfigError: ``config`` is not an original flat config, or a sampling config whose
            ``diffusion_steps`` is not the trained chain.
    """
    from isdm.models import build_model, count_parameters
    from isdm.original.keys import from_original

    weights, out = Path(weights), Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it, or another --out")
    raw, cfg = _load_original_config(Path(config), overrides)
    is_ema, rate, step = _weights_kind(weights, ema, cfg)
    state = _read_state_dict(weights)
    try:
        model = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes)
    except ValueError as e:  # sizes the network cannot have; the message names the key
        raise ConfigError(f"--config {config}: {e}") from None
    legacy = not raw.get("use_new_attention_order", False)
    converted, problems = from_original(state, model, legacy_attention=legacy)
    if problems:
        raise CheckpointError(_mismatch_message(weights, config, state, cfg, raw, problems))
    model.load_state_dict(converted)  # strict: every key and shape
    which = f"ema {rate}" if is_ema else "raw"
    meta = {"image_size": cfg.data.image_size, "num_classes": cfg.data.num_classes,
            "num_params": count_parameters(model), "action": "import",
            "imported_from": str(weights), "imported_sha256": sha256_file(weights),
            "imported_weights": which, "imported_config": str(config),
            "torch": str(torch.__version__)}
    ema_state: dict[str, Any] = {}
    if is_ema:
        from isdm.training.ema import rate_key

        ema_state = {"rates": [rate], "num_updates": step, "warmup": False,
                     "shadows": {rate_key(rate): converted}}
    checkpoint.save({"model": converted, "ema": ema_state, "step": step, "epoch": 0,
                     "config": to_dict(cfg), "meta": meta}, out)
    return {"out": str(out), "weights": which, "step": step, "num_params": meta["num_params"],
            "tensors": len(converted)}


def _load_original_config(path: Path, overrides: Sequence[str]) -> tuple[dict[str, Any], Config]:
    """The raw JSON and its isdm config (:func:`load_original_config`, action ``train``), heads
    made equal."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {path}: cannot read the original JSON config: {e}") from None
    if not isinstance(raw, dict) or is_sectioned(raw):
        raise ConfigError(f"--config {path}: expected the original tool's flat JSON config "
                          "(config_train.json), not an isdm params file")
    steps_overridden = any(o.startswith("diffusion.diffusion_steps=") for o in overrides)
    if ("model_path" in raw or "num_samples" in raw) and not steps_overridden \
            and int(raw.get("diffusion_steps", 1000)) != 1000:
        raise ConfigError(
            f"--config {path} is a sampling config: its diffusion_steps="
            f"{raw['diffusion_steps']} is the sampling chain, not the trained one; pass the "
            "training config, or add --set diffusion.diffusion_steps=<trained T, usually 1000>")
    # The original accepted two settings isdm's config rejects: attention sizes no level has
    # (it skipped them) and, without num_head_channels, a fixed head count. Read the sizes with
    # neutral values, then load with the values that took effect there (--set still wins).
    probe = load_original_config(path, [*_NEUTRAL, *overrides], action="train")
    attention = _effective_attention(raw.get("attention_resolutions", "16,8"), probe)
    fixed = [f"model.attention_resolutions=[{', '.join(map(str, attention))}]",
             f"model.num_head_channels={_head_channels(raw, probe, attention)}"]
    return raw, load_original_config(path, [*fixed, *overrides], action="train")


# every width is a multiple of 32 and an empty attention list fits any network
_NEUTRAL = ("model.attention_resolutions=[]", "model.num_head_channels=32")


def _effective_attention(value: Any, cfg: Config) -> list[int]:
    """The feature sizes the original attended at: it adds attention where ``image_size // r``
    is a level's down-sampling factor and skips any other ``r`` of ``attention_resolutions``."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    size, factors = cfg.data.image_size, {2 ** lv for lv in range(len(cfg.channel_mult()))}
    return sorted({size // (size // r) for r in values if 0 < r <= size and size // r in factors},
                  reverse=True)


def _head_channels(raw: Mapping[str, Any], cfg: Config, attention: Sequence[int]) -> int:
    """isdm's ``model.num_head_channels`` that gives every attention layer the original's heads.

    The original's rule (guided-diffusion): ``num_head_channels != -1`` -> ``width /
    num_head_channels`` heads; otherwise ``num_heads`` heads (``num_heads_upsample`` in the
    decoder; -1 = ``num_heads``; defaults 4 and -1). isdm has one head width for all layers, so
    fixed head counts import only where they give every attention layer the same head width.
    """
    given = int(raw.get("num_head_channels", -1))
    if given != -1:
        return given
    heads = int(raw.get("num_heads", 4))
    up = int(raw.get("num_heads_upsample", -1))
    up = heads if up == -1 else up
    widths = [int(m * cfg.model.num_channels) for m in cfg.channel_mult()]
    attn = [w for lv, w in enumerate(widths) if cfg.data.image_size // 2 ** lv in attention]
    layers = [(w, heads) for w in attn + [widths[-1]]] + [(w, up) for w in attn]
    dims = {w / h for w, h in layers}
    if len(dims) != 1 or not next(iter(dims)).is_integer():
        raise CheckpointError(
            f"the original config uses {heads} attention heads (num_heads; {up} in the decoder) "
            f"on layers of widths {sorted({w for w, _ in layers})}, i.e. head widths "
            f"{sorted(dims)}; isdm has one head width (model.num_head_channels) for all layers, "
            "so these weights cannot be imported exactly")
    return int(dims.pop())


def _weights_kind(path: Path, ema: Optional[bool], cfg: Config) -> tuple[bool, float, int]:
    """``(is_ema, rate, step)`` from the file name (``ema_<rate>_<step>.pt``, ``model<step>.pt``)
    and the ``--ema`` flag; the rate of an EMA file without one in its name is the config's."""
    m_ema, m_model = _EMA_NAME.fullmatch(path.name), _MODEL_NAME.fullmatch(path.name)
    is_ema = bool(m_ema) if ema is None else ema
    rate = float(m_ema[1]) if m_ema else float(cfg.train.ema_rates[0])
    step = int(m_ema[2]) if m_ema else int(m_model[1]) if m_model else 0
    return is_ema, rate, step


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; pass the original's model*.pt or ema_*.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and EOF errors all mean "not a readable state dict"
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                              "pass the original's model*.pt or ema_*.pt") from None
    if isinstance(state, dict) and {"model", "config", "meta"} <= set(state):
        raise CheckpointError(f"{path} already is an isdm checkpoint; use it as it is")
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path} is not a state dict (name -> tensor) of the original's "
                              "UNet; pass its model*.pt or ema_*.pt")
    return state


def _listed(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch_message(weights: Path, config: Path | str, state: Mapping[str, torch.Tensor],
                      cfg: Config, raw: Mapping[str, Any], problems: Any) -> str:
    """Every unmappable key and shape mismatch, and the config values the shapes point to."""
    from isdm.original.keys import original_sizes

    lines = [f"{weights} does not fit the network of --config {config}:"]
    if problems.shapes:
        lines.append(f"  {len(problems.shapes)} shape mismatch(es): {_listed(problems.shapes)}")
    if problems.missing:
        lines.append(f"  {len(problems.missing)} key(s) the network needs are missing: "
                     f"{_listed(problems.missing)}")
    if problems.unexpected:
        lines.append(f"  {len(problems.unexpected)} key(s) have no place in the network: "
                     f"{_listed(problems.unexpected)}")
    ours = flatten(cfg)
    ours["model.channel_mult"] = [float(m) for m in cfg.channel_mult()]
    seen = original_sizes(state, cfg.data.image_size)
    differ = [f"{k}: weights {v!r}, config {ours[k]!r}" for k, v in seen.items()
              if k in ours and _differs(v, ours[k])]
    if not raw.get("no_instance", False) and seen.get("data.num_classes") == cfg.data.num_classes + 1:
        differ = [d for d in differ if not d.startswith("data.num_classes")]
        differ.append("no_instance is false: the original added an instance-edge channel to "
                      "the mask, which isdm does not support")
    if differ:
        lines.append("  likely config mismatch: " + "; ".join(differ))
    lines.append("  fix: pass the JSON config these weights were trained with (or --set the "
                 "values above)")
    return "\n".join(lines)


def _differs(seen: Any, ours: Any) -> bool:
    if isinstance(seen, list):
        return sorted(float(x) for x in seen) != sorted(float(x) for x in ours)
    return seen != ours
