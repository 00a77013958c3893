"""What isdm's commands take from an original ISDM config given with ``-c``: the checkpoint paths
it names, used as the original tool used them.

- ``isdm train -c config_train.json``: its ``resume_checkpoint`` resumes that run (``--resume``);
- ``isdm finetune -c config_finetune.json``: its ``resume_checkpoint`` is the network to start
  from (``--init``);
- ``isdm sample -c config_sample.json``: its ``model_path`` is the default ``--checkpoint``.

``--resume`` / ``--init`` / ``--checkpoint`` given on the command line win. The CLI calls these
functions and prints their notes; the files were parsed (and validated) by the config loading
already.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from isdm.config import is_sectioned
from isdm.original.configs import checkpoint_paths

__all__ = ["find_config", "start_checkpoints", "sample_checkpoint"]


def find_config(config_paths: Sequence[str]) -> Optional[str]:
    """The ``-c`` file that is an original ISDM flat JSON config, if any."""
    for path in config_paths:
        if not path.endswith(".json"):
            continue
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and not is_sectioned(raw):
            return path
    return None


def _named(config_paths: Sequence[str], key: str) -> tuple[Optional[str], Optional[str]]:
    """``(file, its value of key)`` for the original config among ``config_paths``."""
    path = find_config(config_paths)
    if path is None:
        return None, None
    return path, checkpoint_paths(json.loads(Path(path).read_text())).get(key)


def start_checkpoints(action: str, config_paths: Sequence[str], init: Optional[str],
                      resume: Optional[str]) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """``(init, resume, note)`` of ``isdm train`` / ``isdm finetune`` after honouring an original
    config's ``resume_checkpoint``; ``note`` (for stderr) says what was done, None when the
    command line was used as it is."""
    path, named = _named(config_paths, "resume_checkpoint")
    if named is None:
        return init, resume, None
    given = [f"{flag} {value}" for flag, value in (("--init", init), ("--resume", resume)) if value]
    if given:
        return init, resume, (f"[isdm] note: {' and '.join(given)} given: resume_checkpoint "
                              f"{named} of {path} is not used")
    if action == "train":
        return None, named, (f"[isdm] note: resume_checkpoint of {path}: resuming the run of "
                             f"{named} (as --resume {named})")
    return named, None, (f"[isdm] note: resume_checkpoint of {path}: finetuning from {named} "
                         f"(as --init {named})")


def sample_checkpoint(config_paths: Sequence[str]) -> Optional[str]:
    """``model_path`` of the original sample config among ``config_paths`` (the default of
    ``isdm sample --checkpoint``), None when there is none."""
    return _named(config_paths, "model_path")[1]
