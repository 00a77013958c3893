"""What a study computes once and shares between its trials and workers, keyed by its inputs.

- :func:`lock` (:func:`isdm.utils.locks.lock`): an exclusive lock on a file under ``--out``,
  waited for. Workers on several machines share ``--out`` only through a network file system
  whose ``flock`` is honoured across machines; where it is not, two workers may both compute a
  cache entry: the results are still correct, since entries are renamed into place whole.
- :func:`finetuned_checkpoint`: a finetune per (checkpoint bytes, finetune config, data config,
  dataset bytes) in ``<out>/finetunes/<key>/best.pt`` (:func:`finetune_identity`): a new
  ``--checkpoint``, another ``tune.finetune_epochs`` or drop rate, or an edited dataset gets a
  new finetune instead of a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from isdm.config import Config, to_dict
from isdm.utils.locks import lock

__all__ = ["lock", "digest", "finetune_identity", "finetuned_checkpoint"]


def digest(identity: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``identity`` as canonical JSON."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finetune_identity(cfg: Config, data_root: str | Path, checkpoint: str | Path) -> dict[str, Any]:
    """Everything that decides a finetune's weights: the checkpoint's SHA-256, the finetune
    section (drop rate, budget, optimiser), the data keys that decode the images and the
    SHA-256 of the real train files."""
    from isdm.data.digest import dataset_digest
    from isdm.training.checkpoint import checkpoint_hash

    data = {k: v for k, v in to_dict(cfg.data).items() if k != "root"}
    return {"checkpoint_sha256": checkpoint_hash(checkpoint), "finetune": to_dict(cfg.finetune),
            "data": data, "dataset_sha256": dataset_digest(data_root)}


def finetuned_checkpoint(cfg: Config, data_root: str | Path, checkpoint: str | Path,
                         out_dir: str | Path) -> Path:
    """``<out_dir>/finetunes/<key>/best.pt``: ``checkpoint`` finetuned with ``cfg.finetune``,
    trained on first use (``key`` = :func:`digest` of :func:`finetune_identity`).

    Training goes to a temporary folder renamed into place, so a folder with ``best.pt`` is
    complete; its ``identity.json`` says what it was made from. Concurrent workers wait on
    ``<key>.lock`` instead of training the same finetune twice.
    """
    from isdm.training import train
    from isdm.utils.io import atomic_write_json

    identity = finetune_identity(cfg, data_root, checkpoint)
    root = Path(out_dir) / "finetunes"
    final_dir = root / digest(identity)
    best = final_dir / "best.pt"
    if best.exists():
        return best
    with lock(root / f"{final_dir.name}.lock", what=f"the finetune {final_dir.name}"):
        if best.exists():  # another worker finished it while we waited
            return best
        tmp = root / f".{final_dir.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        train(cfg, data_root, tmp, action="finetune", init_from=checkpoint, progress=False)
        if not (tmp / "best.pt").exists():
            raise RuntimeError(f"finetuning {checkpoint} wrote no {tmp}/best.pt")
        atomic_write_json(tmp / "identity.json", identity)
        shutil.rmtree(final_dir, ignore_errors=True)  # a torn folder of a killed run
        os.replace(tmp, final_dir)
    return best
