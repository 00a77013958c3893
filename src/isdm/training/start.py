"""How a training run starts: its output folder, its checkpoint and the config it trains with.

- :func:`check_out_dir`: a folder holding an earlier run's outputs (:data:`OUTPUTS`) is not
  written over silently: only a resumed run (``resume``) or ``overwrite`` may write there, and
  ``overwrite`` removes exactly those files first, nothing else; any other file in the folder
  is refused (:mod:`isdm.utils.ownership`).
- :func:`resolve_start` loads the checkpoint the run starts from and fixes the config:

  - ``resume``: the same run continues, so the checkpoint must be a complete one of the same
    command, and a network/data size that differs from ``cfg`` is an error
    (:class:`~isdm.errors.CheckpointError` naming each size and the ``--set`` fix). Training
    knobs (lr, max_epochs, ...) come from ``cfg``. Takes precedence over ``init_from``.
  - ``init_from`` (finetune): a new run from a given network, so the checkpoint's sizes win; the
    overridden values are listed for a note.
  - neither: a new run from randomly initialised weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from isdm.config import Config, TrainConfig
from isdm.errors import CheckpointError, ConfigError, OutputExistsError
from isdm.training import checkpoint
from isdm.utils import ownership

__all__ = ["OUTPUTS", "FAMILY", "Start", "section", "resolve_start", "check_out_dir",
           "check_finetune_drop_rate"]

# Every file a training run writes into its output folder.
OUTPUTS = ("best.pt", "last.pt", "metrics.json", "loss.csv", "loss.png", "config.json")
FAMILY = ("train", "finetune")  # the commands whose outputs a training run may continue


@dataclass(frozen=True)
class Start:
    """What a run starts from. ``state`` is the loaded checkpoint (None from scratch)."""

    cfg: Config  # the config the run trains with (finetune --init: the checkpoint's sizes)
    tcfg: TrainConfig  # its section for the action: cfg.train or cfg.finetune
    action: str  # "train" or "finetune"
    mode: str  # "scratch", "resume" or "init"
    path: Optional[Path] = None
    state: Optional[dict[str, Any]] = None
    changed: tuple[str, ...] = ()  # init: "model.x: checkpoint a, config b" for each override


def section(cfg: Config, action: str) -> TrainConfig:
    """The config section of ``action``: ``cfg.finetune`` for finetune, else ``cfg.train``."""
    return cfg.finetune if action == "finetune" else cfg.train


def resolve_start(cfg: Config, action: str, init_from: str | Path | None = None,
                  resume: str | Path | None = None) -> Start:
    """Load the checkpoint of ``resume`` or ``init_from`` and check it (module docstring);
    a finetune without label dropout is refused (:func:`check_finetune_drop_rate`)."""
    if resume is not None:
        path = Path(resume)
        state = checkpoint.load(path)
        missing = [k for k in checkpoint.REQUIRED_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} cannot resume: lacks {missing}")
        written_by = state["meta"].get("action", action)
        if written_by != action:
            raise CheckpointError(f"checkpoint {path} comes from `isdm {written_by}`; resume it "
                                  f"with that command, not `isdm {action}`")
        checkpoint.check_compatible(state, cfg, path)
        _check_resumable_state(state, path)
        return Start(cfg, section(cfg, action), action, "resume", path, state)
    if action == "finetune":
        check_finetune_drop_rate(cfg.finetune.drop_rate)
    if init_from is not None:
        path = Path(init_from)
        state = checkpoint.load(path)
        cfg, changed = checkpoint.adopt_architecture(state, cfg, path)
        return Start(cfg, section(cfg, action), action, "init", path, state, tuple(changed))
    return Start(cfg, section(cfg, action), action, "scratch")


def check_finetune_drop_rate(drop_rate: float) -> None:
    """Raises ConfigError for ``finetune.drop_rate`` 0: finetuning exists to train the null
    label that guidance (``sample.s`` != 1) needs."""
    if drop_rate <= 0:
        raise ConfigError(
            f"finetune.drop_rate={drop_rate:g}: `isdm finetune` exists to teach the network the "
            "null label (the mask replaced by nothing with this probability), which guided "
            "sampling (sample.s != 1) needs; with 0 it learns nothing new. Set "
            "--set finetune.drop_rate=0.2 (the default); to train longer without dropout use "
            "`isdm train --resume`.")


def _check_resumable_state(state: dict[str, Any], path: Path) -> None:
    """A checkpoint without a state digest (older isdm) resumes only with a finite optimiser
    state (its digest covered the weights alone)."""
    from isdm.utils.numerics import nonfinite

    if state["meta"].get("state_sha256") is None:
        bad = nonfinite(state["optimizer"], "optimizer")
        if bad:
            raise CheckpointError(
                f"checkpoint {path} cannot resume: its optimiser state holds NaN or inf "
                f"({', '.join(bad[:3])}); the file predates isdm's full-state digest, so the "
                "damage was not detected earlier. Resume from another checkpoint, or start a "
                "new run from its weights with `isdm finetune --init` / `--overwrite`.")


def check_out_dir(out_dir: str | Path, action: str, *, resuming: bool,
                  overwrite: bool) -> ownership.Output:
    """The folder's earlier training output (:mod:`isdm.utils.ownership`), refused unless the
    run resumes or ``overwrite`` is set (which then deletes exactly those files:
    :meth:`~isdm.utils.ownership.Output.remove`).

    Raises:
        OutputExistsError: naming the files found (with epoch and step of the checkpoints), the
            command that continues the run (``--resume``) and ``--overwrite``; or foreign files
            in the folder, or a folder inside a dataset split.
    """
    out_dir = Path(out_dir)
    output = ownership.claim(out_dir, action, family=FAMILY, legacy=_legacy_outputs)
    found = [name for name in OUTPUTS if name in output.existing]
    if not found or resuming or overwrite:
        return output
    runs = {n: checkpoint.peek(out_dir / n) for n in found if n.endswith(".pt")}
    listed = ", ".join(f"{n} ({runs[n][0]})" if n in runs else n for n in found)
    continue_with = ""
    if runs:
        last = "last.pt" if "last.pt" in runs else "best.pt"
        written_by = runs[last][1] or action
        continue_with = (f"continue that run with `isdm {written_by} ... --resume "
                         f"{out_dir / last}`, or ")
    raise OutputExistsError(
        f"{out_dir} already holds the outputs of an earlier training run: {listed}. This run "
        f"would replace them; {continue_with}start over with `--overwrite` (replaces only "
        f"these files), or choose another --out.")


def _legacy_outputs(out_dir: Path) -> list[str]:
    """:data:`OUTPUTS` of a training run without an ownership record (an older isdm, or
    restored by ``dvc checkout``): recognised by a checkpoint of `isdm train` / `finetune`, or
    by a ``config.json`` that is an isdm config."""
    present = [n for n in OUTPUTS if (out_dir / n).is_file()]
    ours = any(checkpoint.peek(out_dir / n)[1] in FAMILY for n in ("best.pt", "last.pt")
               if n in present)
    if not ours and "config.json" in present:
        try:
            from isdm.config import config_from_json

            config_from_json(json.loads((out_dir / "config.json").read_text()))
            ours = True
        except Exception:  # any unreadable or foreign config.json: not ours
            ours = False
    return present if ours else []
