"""Benchmark of the downstream segmenter: the real-only baseline (RALLF000) on CrackForest.

CrackForest (79 train / 39 test road photos, thin binary cracks) at a CPU-sized recipe: resnet18
from scratch (no pretrained weights: nothing is downloaded), Dice + cross-entropy, one seed, each
of the three original architectures. Reports the crack-class IoU (``miou_nobg``), the mIoU with
background, the original's pooled micro IoU and the wall time per architecture. It says whether
the evaluation harness learns anything at all on real data for this budget; thin cracks at low
resolution are hard, so the crack IoU is the number to watch (background IoU is high for free).

Sizes: quick = 128 px x 96 steps, full = 160 px x 400 steps, batch 4, validation every 16 steps
(63 training images: 6 and 25 passes; cracks vanish below about 128 px and from-scratch training
needs a few hundred steps; docs/results/crackforest.md has the measurements).
The dataset folder is an argument (``python -m isdm.bench --crackforest DIR`` or
``$ISDM_CRACKFOREST``); without it the benchmark is skipped with a note.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


def _config(quick: bool, root: Path) -> Any:
    from isdm.config import Config, DataConfig, EvaluateConfig, TrackingConfig

    evaluate = EvaluateConfig(
        architectures=("UnetPlusPlus", "FPN", "DeepLabV3Plus"), encoder="resnet18",
        encoder_weights=None, mixes=("RALLF000",), seeds=(0,),
        steps=96 if quick else 400, val_every=16, lr=1e-3, batch_size=4,
        image_size=128 if quick else 160,
        loss="dice_ce", augment=True, val_fraction=0.2, bootstrap=0)
    data = DataConfig(root=str(root), dataset_mode="binary", num_classes=2, ignore_index=None,
                      image_size=evaluate.image_size)
    return Config(data=data, evaluate=evaluate, tracking=TrackingConfig(enabled=False))


def run(quick: bool = False, data_root: str | Path | None = None) -> dict:
    """Train and test RALLF000 per architecture on the CrackForest folder ``data_root``;
    ``table`` rows hold crack IoU, mIoU and time. Skipped (empty table, a note) without it."""
    from isdm.evaluation import run_evaluation

    if not data_root:
        return {"table": [], "notes": ["CrackForest not given (python -m isdm.bench --crackforest "
                                       "DIR, or ISDM_CRACKFOREST=DIR): eval benchmark skipped"]}
    root = Path(data_root)
    if not (root / "train" / "images").is_dir():
        return {"table": [], "notes": [f"CrackForest not found at {root} (no train/images): "
                                       "eval benchmark skipped"]}
    cfg = _config(quick, root)
    rows = []
    for arch in cfg.evaluate.architectures:
        one = cfg.replace(evaluate=_with(cfg.evaluate, architectures=(arch,)))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:  # a fresh cell store: trained now
            res = run_evaluation(one, root, None, out, progress=False,
                                 cell_cache=Path(out) / "cells")
        cell = res["cells"][0]
        rows.append({"arch": arch, "encoder": one.evaluate.encoder,
                     "image_size": one.evaluate.image_size, "steps": one.evaluate.steps,
                     "epochs": cell["epochs"], "best_step": cell["best_step"],
                     "crack_iou": cell["miou_nobg"],
                     "miou": cell["miou"], "micro_iou": cell["micro_iou"], "dice_crack": cell["dice_nobg"],
                     "train_s": cell["train_seconds"], "wall_s": time.perf_counter() - t0})
    e = cfg.evaluate
    notes = [f"CrackForest real-only (RALLF000), {e.encoder} from scratch, {e.image_size} px, "
             f"{e.steps} steps, {e.loss}, lr {e.lr}, batch {e.batch_size}, seed 0, best "
             f"validation (every {e.val_every} steps) by val mIoU on {e.val_fraction:.0%} of "
             "train; tested once on the 39 test images",
             "crack_iou = IoU of the crack class pooled over the test set; miou includes background"]
    return {"table": rows, "notes": notes, "config": {"quick": quick, "image_size": e.image_size,
                                                      "steps": e.steps}}


def _with(section: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(section, **changes)
