"""How isdm scales: sampling many images, big image folders, evaluation vs dataset size.

Every measurement runs the real ``isdm`` command in a child process, which reports its peak
resident memory (``VmHWM``) when it exits, so each row's memory is that command's alone:

- ``isdm sample`` of N images (tiny 32 px network, DPM-Solver++(2M) 5 steps, batch 8): seconds
  per image and peak memory should stay flat as N grows (each sample is written and forgotten);
- ``isdm data check`` of a folder of big images (JPEG images, PNG masks with a few defects), and
  one pass of the training data loader over it (decode, resize to 64 px): time and peak memory;
- ``isdm evaluate`` (FPN, resnet18, 1 seed, 20 steps, 64 px, real images only) on embedded
  datasets of growing size: seconds should grow linearly with the number of images.

Full sizes: 100 and 1,000 samples; 2,000 images of 1024 px; 40, 80 and 160 train images.
``quick``: 8 and 32 samples; 32 images of 256 px; 8 and 16 train images.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run", "isdm_child", "write_big_dataset"]

# the child's peak: VmHWM of its own memory map (ru_maxrss would carry the parent's peak over
# fork + exec on Linux)
_CHILD = ("import atexit, resource, sys\n"
          "def peak_kb():\n"
          "    try:\n"
          "        with open('/proc/self/status') as f:\n"
          "            return int(next(l for l in f if l.startswith('VmHWM:')).split()[1])\n"
          "    except (OSError, StopIteration):\n"
          "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
          "atexit.register(lambda: print('ISDM_MAXRSS_KB=%d' % peak_kb(), file=sys.stderr))\n"
          "from isdm.cli import main\n"
          "if __name__ == '__main__':  # a spawned cell worker imports this as __mp_main__\n"
          "    sys.exit(main())\n")
_LOADER = ("import sys\n"
           "from isdm.config import DataConfig\n"
           "from isdm.data import SegmentationFolder\n"
           "data = SegmentationFolder(sys.argv[1], 'train', DataConfig(dataset_mode='binary', "
           "num_classes=2, ignore_index=None, image_size=64), augment=False)\n"
           "for i in range(len(data)):\n"
           "    data[i]\n")


def isdm_child(args: list[str], code: str = _CHILD) -> dict[str, float]:
    """Run ``isdm ARGS`` (or ``code`` with ARGS) in a child process: ``{"seconds", "peak_MiB"}``.

    Raises ``RuntimeError`` with the child's stderr when it fails.
    """
    if code is not _CHILD:
        code = _CHILD.split("from isdm.cli")[0] + code
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"isdm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    kb = [line for line in proc.stderr.splitlines() if line.startswith("ISDM_MAXRSS_KB=")]
    return {"seconds": seconds, "peak_MiB": int(kb[-1].split("=")[1]) / 1024 if kb else None}


def write_big_dataset(root: Path, n: int, size: int, seed: int = 0) -> float:
    """``n`` train + 2 test pairs of ``size`` px: smooth JPEG images, binary PNG masks with a
    random crack band; returns the seconds it took."""
    import numpy as np
    from PIL import Image, ImageDraw

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for split, count in (("train", n), ("test", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            tint = rng.uniform(0.3, 1.0, 3)
            img = (ramp[None, :, None] * tint + ramp[:, None, None] * (1 - tint)) / 2
            Image.fromarray(img.astype(np.uint8)).save(root / split / "images" / f"{i:05d}.jpg",
                                                       quality=85)
            mask = Image.new("L", (size, size), 0)
            x0, x1 = rng.integers(0, size, 2)
            ImageDraw.Draw(mask).line([(int(x0), 0), (int(x1), size - 1)], fill=255,
                                      width=max(size // 100, 1))
            mask.save(root / split / "masks" / f"{i:05d}.png")
    return time.perf_counter() - start


# the commands' own config (not ./params.yaml, whose sizes belong to another preset)
_CONFIG = """
data: {image_size: 32}
synth: {num_train: 8, num_test: 4, image_size: 32}
model: {preset: tiny}
train: {batch_size: 4, max_epochs: 1, max_steps: 1}
sample: {steps: 5, batch_size: 8}
evaluate: {architectures: [FPN], seeds: [0], steps: 20, val_every: 10, mixes: [RALLF000],
           bootstrap: 0, image_size: 64}
tracking: {enabled: false}
"""


def _tiny_checkpoint(tmp: Path, cfg: Path) -> tuple[Path, Path, str]:
    """An embedded 32 px dataset and a 1-step tiny checkpoint: ``(data, best.pt, cfg)``."""
    data, out = tmp / "synth", tmp / "sdm"
    isdm_child(["data", "synth", str(data), "-c", str(cfg)])
    isdm_child(["train", "-c", str(cfg), "--data", str(data), "--out", str(out)])
    return data, out / "best.pt", str(cfg)


def _sampling_rows(tmp: Path, cfg: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    data, ckpt, cfg = _tiny_checkpoint(tmp, cfg)
    rows = []
    for n in sizes:
        res = isdm_child(["sample", "-c", cfg, "--data", str(data), "--checkpoint", str(ckpt),
                          "--out", str(tmp / f"samples{n}"), "--set", f"sample.num_samples={n}"])
        rows.append({"scale": f"isdm sample, {n} images (tiny 32 px, dpmpp2m 5 steps)",
                     "n": n, **res, "s_per_item": res["seconds"] / n})
    return rows


def _folder_rows(tmp: Path, cfg: Path, n: int, size: int) -> list[dict[str, Any]]:
    root = tmp / "big"
    gen_s = write_big_dataset(root, n, size)
    mib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    check = isdm_child(["data", "check", str(root), "-c", str(cfg), "--mode", "binary", "--json"])
    load = isdm_child([str(root)], code=_LOADER)
    what = f"{n} images of {size} px ({mib:.1f} MiB on disk, written in {gen_s:.0f} s)"
    return [{"scale": f"isdm data check, {what}", "n": n, **check,
             "s_per_item": check["seconds"] / n},
            {"scale": f"loader pass (decode + resize to 64 px), {what}", "n": n, **load,
             "s_per_item": load["seconds"] / n}]


def _evaluation_rows(tmp: Path, cfg: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        data = tmp / f"eval{n}"
        sizes_set = ["--set", f"synth.num_train={n}", "--set", "synth.num_test=10",
                     "--set", "synth.image_size=64", "--set", "data.image_size=64"]
        isdm_child(["data", "synth", str(data), "-c", str(cfg), *sizes_set])
        res = isdm_child(["evaluate", "-c", str(cfg), "--data", str(data),
                          "--out", str(tmp / f"report{n}"), "--cell-cache", str(tmp / "cells"),
                          *sizes_set])  # a fresh cell store: the cell is trained now
        rows.append({"scale": f"isdm evaluate, {n} train images (FPN, 20 steps, 64 px)", "n": n,
                     **res, "s_per_item": res["seconds"] / n})
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """The rows of the module docstring (``quick``: small sizes, about two minutes)."""
    sample_sizes, (folder_n, folder_px), eval_sizes = (
        ((8, 32), (32, 256), (8, 16)) if quick else ((100, 1000), (2000, 1024), (40, 80, 160)))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cfg = tmp / "bench.yaml"
        cfg.write_text(_CONFIG)
        rows = _sampling_rows(tmp, cfg, sample_sizes)
        rows += _folder_rows(tmp, cfg, folder_n, folder_px)
        rows += _evaluation_rows(tmp, cfg, eval_sizes)
    notes = [_growth("isdm sample", rows[:len(sample_sizes)], "image"),
             _growth("isdm evaluate", rows[-len(eval_sizes):], "train image"),
             "seconds include each child's start-up (Python, torch import: a few seconds), so "
             "the time per added item (marginal) is the number that shows linear growth"]
    return {"table": rows, "notes": notes}


def _growth(what: str, rows: list[dict[str, Any]], unit: str) -> str:
    """Marginal seconds per item between the smallest and largest run, and their peak memory."""
    first, last = rows[0], rows[-1]
    marginal = (last["seconds"] - first["seconds"]) / (last["n"] - first["n"])
    return (f"{what}: {marginal:.3f} s per added {unit} from {first['n']} to {last['n']}; peak "
            f"memory {first['peak_MiB']:.0f} -> {last['peak_MiB']:.0f} MiB")


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
