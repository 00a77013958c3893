"""Checkpoints: one self-contained file that can resume a run or rebuild its model.

A checkpoint is a dict saved with ``torch.save`` (loadable with ``weights_only=True``)::

    model        state_dict of the raw (trained) network
    ema          EMA.state_dict(): {"rates": [0.999, ...], "num_updates": n, "warmup": bool,
                 "shadows": {"0.999": state_dict, ...}}, one averaged copy per rate
    optimizer    AdamW state;  scaler: GradScaler state or None
    step, epoch  optimiser steps and completed epochs
    best_loss, bad_epochs   the checkpoint-on-best rule's state (patience counter)
    rng          {"python", "numpy", "torch", "cuda"} generator states
    history      [{"epoch", "train_loss", "val_loss", "improved", ...}] one row per epoch
    config       isdm.config.to_dict(cfg): the resolved config of the run
    meta         {"image_size", "num_classes", "num_params", "dataset", "action", "world_size",
                 "precision", "torch", "weights_sha256", "state_sha256"} (+ "init_from",
                 "init_sha256", "init_epoch", "init_step" after ``isdm finetune --init``)

Integrity: :func:`save` writes ``meta["state_sha256"]`` (:func:`state_digest`: everything a
resume loads, i.e. the weights, EMA, optimiser, scaler, counters, RNG states, history and
config) and ``meta["weights_sha256"]`` (:func:`weights_digest`: raw + EMA weights only).
:func:`load` checks the state digest, so a file damaged after writing is refused wherever the
damage is (torch does not check the zip CRCs). Files written before the state digest existed
are checked by their weights digest (they still sample and finetune; a resume additionally
checks that their optimiser state is finite); files without either load unchecked.

Numerical health: :func:`save` refuses weights with NaN / inf (a diverged run never writes
them) and :func:`load` refuses a file holding them (written by another tool or an older isdm):
:class:`~isdm.errors.NumericalError` / :class:`CheckpointError`.

The model is always rebuilt from the checkpoint's OWN config (``config``), never from today's
``params.yaml``: :func:`load_model` is what sampling and tuning use.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Union

import torch

from isdm.config import Config, ConfigError, config_from_json, flatten
from isdm.errors import CheckpointError
from isdm.utils.io import atomic_path, sha256_file

__all__ = [
    "CheckpointError",
    "save",
    "load",
    "load_model",
    "checkpoint_hash",
    "weights_digest",
    "state_digest",
    "peek",
    "architecture_mismatches",
    "check_compatible",
    "adopt_architecture",
    "REQUIRED_KEYS",
]

REQUIRED_KEYS = ("model", "ema", "optimizer", "scaler", "step", "epoch", "best_loss",
                 "bad_epochs", "rng", "config", "meta")


def save(state: Mapping[str, Any], *paths: str | Path) -> None:
    """Write ``state`` to each of ``paths`` atomically (temp file beside it + rename), with
    ``meta["weights_sha256"]`` (:func:`weights_digest`) and ``meta["state_sha256"]``
    (:func:`state_digest`) set, computed once.

    Raises:
        NumericalError: the raw or EMA weights hold NaN / inf (nothing is written).
        WriteError: a file could not be written (disk full, ...); its previous version is intact.
    """
    from isdm.errors import NumericalError
    from isdm.utils.numerics import nonfinite

    bad = nonfinite({"model": state["model"], "ema": state.get("ema") or {}})
    if bad:
        raise NumericalError(
            f"refusing to write {', '.join(map(str, paths))}: {len(bad)} weight tensor(s) hold "
            f"NaN or inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the run "
            "diverged. Lower the learning rate (or use precision fp32) and train again; the "
            "files already on disk are unchanged.")
    meta = {k: v for k, v in state.get("meta", {}).items() if k not in _DIGESTS}
    state = {**state, "meta": {**meta, "weights_sha256": weights_digest(state)}}
    state["meta"]["state_sha256"] = state_digest(state)
    for path in paths:
        # through a Python file object, so a failed write raises OSError with its errno
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)


def load(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; clear :class:`CheckpointError` otherwise
    (missing, unreadable, corrupt, holding objects other than tensors and plain data, not
    written by isdm, or holding non-finite weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the best.pt / last.pt written by `isdm train`"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, pickle, EOF and storage errors: "not a readable checkpoint"
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):
            raise CheckpointError(_unpickling_message(path, e)) from None
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({_torch_reason(e)}); the file is "
            "corrupt or not an isdm checkpoint; re-run `isdm train` or pick another file"
        ) from None
    missing = [k for k in ("model", "config", "meta") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}: not written by `isdm train`. A "
            "checkpoint of the original ISDM tool (model*.pt / ema_*.pt: bare weights, no config) "
            "must be converted first: `isdm import-checkpoint`"
        )
    _verify(state, path)
    return state


_DIGESTS = ("weights_sha256", "state_sha256")


def _verify(state: Mapping[str, Any], path: Path) -> None:
    """The stored digest (state, else weights) matches and the weights are finite."""
    from isdm.utils.numerics import nonfinite

    meta = state["meta"]
    if meta.get("state_sha256") is not None:
        ok, what = state_digest(state) == meta["state_sha256"], "contents (weights, optimiser, RNG states)"
    elif meta.get("weights_sha256") is not None:
        ok, what = weights_digest(state) == meta["weights_sha256"], "weights"
    else:
        ok, what = True, ""
    if not ok:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its {what} do not match the SHA-256 digest stored "
            "when it was written, so the file changed afterwards (a disk, copy or transfer "
            "error). Use another copy (last.pt, `dvc checkout`, a backup) or train again."
        )
    bad = nonfinite({"model": state["model"], "ema": state.get("ema") or {}})
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights (NaN or inf in {len(bad)} tensor(s): "
            f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): it was written by a run "
            "that diverged, and would generate black or noise images. Use an earlier "
            "checkpoint, or train again with a lower learning rate."
        )


def state_digest(state: Mapping[str, Any]) -> str:
    """Hex SHA-256 over everything in a checkpoint ``state`` but the digests themselves:
    tensors by name, dtype, shape and row-major value bytes (device and memory layout do not
    matter), plain values by type and ``repr``, mappings in sorted key order, tuples as lists."""
    h = hashlib.sha256()
    meta = {k: v for k, v in state.get("meta", {}).items() if k not in _DIGESTS}
    _feed(h, {**state, "meta": meta})
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        h.update(f"D|{len(value)}\n".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            h.update(f"K|{key!r}\n".encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L|{len(value)}\n".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(f"V|{type(value).__name__}|{value!r}\n".encode())


def peek(path: Path) -> tuple[str, Optional[str]]:
    """``("epoch 16, step 80", "train")``: where a checkpoint stands and the command that wrote
    it, read without loading its tensors (``("unreadable", None)`` when it cannot be read)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return f"epoch {state['epoch']}, step {state['step']}", state["meta"].get("action")
    except Exception:  # only describes the refusal: any unreadable file is just "unreadable"
        return "unreadable", None


def _torch_reason(error: Exception) -> str:
    """``"<type>: <cause>"`` of a torch.load failure: the cause only, without torch's advice
    around it (which suggests loading the file unsafely)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    text = text.split("WeightsUnpickler error:", 1)[-1]
    cause = next((line.strip() for line in text.splitlines() if line.strip()), "")
    cause = cause.split(". ")[0][:200]
    return f"{type(error).__name__}: {cause}" if cause else type(error).__name__


def _unpickling_message(path: Path, error: Exception) -> str:
    """Why a checkpoint holding non-tensor Python objects is refused, without torch's advice to
    load it unsafely."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" ({found.group(1)})" if found else ""
    return (
        f"checkpoint {path} holds a Python object isdm does not load{what}: isdm reads only "
        "tensors and plain data from a checkpoint, because unpickling other objects can run code "
        "hidden in the file. `isdm train` never writes such objects, so another program wrote "
        "or changed this file; use a best.pt / last.pt of `isdm train` / `isdm finetune` (an "
        "original ISDM checkpoint: convert it with `isdm import-checkpoint`)."
    )


def weights_digest(state: Mapping[str, Any]) -> str:
    """Hex SHA-256 over the raw and every EMA state_dict of a checkpoint ``state``.

    Tensors are taken in the sorted order of their names (``model.<key>``,
    ``ema.<rate>.<key>``); each contributes ``"<name>|<dtype>|<shape>\\n"`` and its values'
    bytes in row-major order, so the digest does not depend on device or memory layout.
    """
    tensors = {f"model.{k}": v for k, v in state["model"].items()}
    ema = state.get("ema") or {}
    for rate, shadow in (ema.get("shadows", {}) if isinstance(ema, Mapping) else {}).items():
        tensors.update({f"ema.{rate}.{k}": v for k, v in shadow.items()})
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def checkpoint_config(state: Mapping[str, Any], path: str | Path = "checkpoint") -> Config:
    """The :class:`Config` stored in a checkpoint."""
    try:
        return config_from_json(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: its stored config is invalid: {e}") from None


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of the checkpoint file's bytes (for manifests and MLflow tags)."""
    return sha256_file(path)


# Keys that define the network's weights or how the data/chain are interpreted. Training
# knobs (dropout, gradient checkpointing) may differ between pretraining and finetuning.
_ARCH_EXEMPT = {"model.preset", "model.dropout", "model.use_checkpoint"}
_ARCH_SECTIONS = ("model.", "diffusion.")
_ARCH_DATA = ("data.image_size", "data.num_classes")


def architecture_mismatches(stored: Config, current: Config) -> list[str]:
    """``["model.num_channels: checkpoint 64, config 32", ...]`` for every size that differs.

    ``model.channel_mult`` is compared after resolving an empty value by image size.
    """
    a, b = flatten(stored), flatten(current)
    a["model.channel_mult"] = [float(m) for m in stored.channel_mult()]
    b["model.channel_mult"] = [float(m) for m in current.channel_mult()]
    keys = [k for k in a if (k.startswith(_ARCH_SECTIONS) or k in _ARCH_DATA) and k not in _ARCH_EXEMPT]
    return [f"{k}: checkpoint {a[k]!r}, config {b.get(k)!r}" for k in keys if a[k] != b.get(k)]


def check_compatible(state: Mapping[str, Any], cfg: Config, path: str | Path) -> Config:
    """Raise :class:`CheckpointError` naming every network/data size where ``cfg`` and the
    checkpoint at ``path`` disagree; return the checkpoint's config when they agree."""
    stored = checkpoint_config(state, path)
    problems = architecture_mismatches(stored, cfg)
    if problems:
        flat = flatten(stored)
        flat["model.channel_mult"] = list(stored.channel_mult())
        fix = " ".join(f"--set {k}={_yaml(flat[k])}" for k in (p.split(":")[0] for p in problems))
        raise CheckpointError(
            f"checkpoint {path} was trained with other sizes than the config:\n  "
            + "\n  ".join(problems)
            + f"\nuse the config the checkpoint was trained with, or add: {fix}"
        )
    return stored


def adopt_architecture(state: Mapping[str, Any], cfg: Config, path: str | Path) -> tuple[Config, list[str]]:
    """``cfg`` with the network, chain and data sizes of the checkpoint at ``path`` (finetuning:
    the network is fixed by the checkpoint). Returns the new config and the differences it
    overrode (``"model.spade_hidden: checkpoint 64, config 128"``), for a printed note.
    Training knobs (``model.dropout``, ``model.use_checkpoint``) stay those of ``cfg``.
    """
    import dataclasses

    stored = checkpoint_config(state, path)
    changed = architecture_mismatches(stored, cfg)
    model = dataclasses.replace(stored.model, dropout=cfg.model.dropout,
                                use_checkpoint=cfg.model.use_checkpoint)
    try:
        data = dataclasses.replace(cfg.data, image_size=stored.data.image_size,
                                   num_classes=stored.data.num_classes)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this dataset config: {e}") from None
    return cfg.replace(model=model, diffusion=stored.diffusion, data=data), changed


def _yaml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_model(
    path: str | Path,
    ema_rate: Union[None, float, Literal["best-available", "raw"]] = None,
    device: Any = "cpu",
) -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """Rebuild the network stored in a checkpoint, in eval mode.

    Args:
        path: ``best.pt`` / ``last.pt`` written by ``isdm train`` / ``isdm finetune``.
        ema_rate: ``None`` or ``"best-available"`` -> the first EMA rate (the raw weights when
            the checkpoint holds no EMA); a float -> that EMA rate (error if absent);
            ``"raw"`` -> the trained weights without averaging.
        device: where to put the model (channels-last on CPU: :func:`isdm.models.place`).

    Returns:
        ``(model, cfg, meta)``: the model built from the checkpoint's own config, that config,
        and the checkpoint's meta dict (plus ``"weights"``: which weights were loaded).
    """
    from isdm.models import build_model, place

    state = load(path)
    cfg = checkpoint_config(state, path)
    model = build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes)
    ema = state.get("ema") or {}
    shadows = ema.get("shadows", {}) if isinstance(ema, Mapping) else {}
    if ema_rate == "raw":
        weights, which = state["model"], "raw"
    elif ema_rate is None or ema_rate == "best-available":
        if shadows:
            which = next(iter(shadows))
            weights = shadows[which]
            which = f"ema {which}"
        else:
            weights, which = state["model"], "raw"
    else:
        from isdm.training.ema import rate_key

        key = rate_key(float(ema_rate))
        if key not in shadows:
            raise CheckpointError(
                f"checkpoint {path} has no EMA rate {ema_rate}; available: {list(shadows) or 'none'}"
            )
        weights, which = shadows[key], f"ema {key}"
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit its own config: {e}") from None
    place(model, device).eval()
    meta = dict(state.get("meta", {}))
    meta["weights"] = which
    return model, cfg, meta
