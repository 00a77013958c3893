"""Benchmark of the downstream segmenter: the real-only baseline (RALLF000) on CrackForest.

CrackForest (79 train / 39 test road photos, thin binary cracks) at a CPU-sized recipe: resnet18
from scratch (no pretrained weights: nothing is downloaded), Dice + cross-entropy, one seed, each
of the three original architectures. Reports the crack-class IoU (``miou_nobg``), the mIoU with
background, the original's pooled micro IoU and the wall time per architecture. It says whether
the evaluation harness learns anything at all on real data for this budget; thin cracks at low
resolution are hard, so the crack IoU is the number to watch (background IoU is ~0.97 for free).

Budget notes (measured on the shared 2-core machine): at 96 px / 3 epochs / batch 8 (24 steps) every
architecture still predicted background only (crack IoU 0); cracks become ~1 px wide below ~128 px
and from-scratch training needs a few hundred steps. FPN at 128 px, batch 4 (16 steps/epoch,
~8 s/epoch) reaches crack IoU ~0.2 after 7 epochs. Hence quick = 128 px x 6 epochs (a few minutes
for the three architectures, not one), full = 160 px x 25 epochs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

CRACKFOREST = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "crackforest"


def _config(quick: bool) -> Any:
    from isdm.config import Config, DataConfig, EvaluateConfig, TrackingConfig

    evaluate = EvaluateConfig(
        architectures=("UnetPlusPlus", "FPN", "DeepLabV3Plus"), encoder="resnet18",
        encoder_weights=None, mixes=("RALLF000",), seeds=(0,),
        epochs=6 if quick else 25, lr=1e-3, batch_size=4, image_size=128 if quick else 160,
        loss="dice_ce", augment=True, val_fraction=0.2, bootstrap=0)
    data = DataConfig(root=str(CRACKFOREST), dataset_mode="binary", num_classes=2, ignore_index=None,
                      image_size=evaluate.image_size)
    return Config(data=data, evaluate=evaluate, tracking=TrackingConfig(enabled=False))


def run(quick: bool = False, data_root: str | Path | None = None) -> dict:
    """Train and test RALLF000 per architecture; ``table`` rows hold crack IoU, mIoU, time."""
    from isdm.evaluation import run_evaluation

    root = Path(data_root) if data_root else CRACKFOREST
    if not (root / "train" / "images").is_dir():
        return {"table": [], "notes": [f"CrackForest not found at {root}: skipped"]}
    cfg = _config(quick)
    rows = []
    for arch in cfg.evaluate.architectures:
        one = cfg.replace(evaluate=_with(cfg.evaluate, architectures=(arch,)))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            res = run_evaluation(one, root, None, out, progress=False)
        cell = res["cells"][0]
        rows.append({"arch": arch, "encoder": one.evaluate.encoder,
                     "image_size": one.evaluate.image_size, "epochs": one.evaluate.epochs,
                     "best_epoch": cell["best_epoch"], "crack_iou": cell["miou_nobg"],
                     "miou": cell["miou"], "micro_iou": cell["micro_iou"], "dice_crack": cell["dice_nobg"],
                     "train_s": cell["train_seconds"], "wall_s": time.perf_counter() - t0})
    e = cfg.evaluate
    notes = [f"CrackForest real-only (RALLF000), {e.encoder} from scratch, {e.image_size} px, "
             f"{e.epochs} epochs, {e.loss}, lr {e.lr}, batch {e.batch_size}, seed 0, best epoch by "
             f"val mIoU on {e.val_fraction:.0%} of train; tested once on the 39 test images",
             "crack_iou = IoU of the crack class pooled over the test set; miou includes background"]
    return {"table": rows, "notes": notes, "config": {"quick": quick, "image_size": e.image_size,
                                                      "epochs": e.epochs}}


def _with(section: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(section, **changes)


if __name__ == "__main__":
    import sys

    from isdm.bench.__main__ import markdown_table

    result = run(quick="--quick" in sys.argv)
    print(markdown_table(result["table"]))
    for line in result["notes"]:
        print("-", line)
