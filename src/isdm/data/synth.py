"""The embedded default dataset: procedural industrial surfaces with four defect classes.

``write_synthetic_dataset(out_dir, synth_cfg)`` writes the standard layout::

    out_dir/train/images/0000_metal.png   out_dir/train/masks/0000_metal.png   ...
    out_dir/test/...
    out_dir/classes.json   ["background", "scratch", "pit", "crack", "stain"]
    out_dir/synth.json     the SynthConfig used (also marks the folder as ours)
    out_dir/README.md      what the data is
    out_dir/preview.png    the first train images beside their coloured masks

Masks are 8-bit gray class ids (0 background, 1 scratch, 2 pit, 3 crack, 4 stain), exactly the
pixels each defect changed (later defects overwrite earlier ones, in the drawing order stain,
scratch, crack, pit); with ``binary`` they are 0/255 "any defect". Images are RGB PNG.

Reproducible: sample i of a split is a pure function of ``(seed, split, i)`` (its own
``numpy.random.default_rng``), so the same seed gives byte-identical files, and sample i does not
depend on how many samples are written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from isdm.config import SynthConfig, to_dict
from isdm.data.synth_render import SURFACES, draw_defect, lighting, render_surface
from isdm.utils import ownership
from isdm.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["CLASS_NAMES", "render_sample", "write_synthetic_dataset"]

CLASS_NAMES = ("background", "scratch", "pit", "crack", "stain")
_DRAW_ORDER = (4, 1, 3, 2)  # stains lie under scratches and cracks; pits are drawn last
_SPLIT_IDS = {"train": 0, "test": 1}
_MARKER = "synth.json"
_TOP = ("classes.json", _MARKER, "README.md", "preview.png")


def render_sample(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One sample: uint8 RGB ``[S, S, 3]``, uint8 class ids ``[S, S]`` and the surface name.

    1 to 3 defects of random classes (a pit may come as a cluster of 2-4 blowholes) on one of
    :data:`SURFACES`, then illumination (gradient + hotspot) and Gaussian sensor noise.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], index]))
    surface = SURFACES[int(rng.integers(len(SURFACES)))]
    img = render_surface(rng, size, surface)
    angle = rng.uniform(0, 2 * np.pi)
    light_dir = np.array([np.cos(angle), np.sin(angle)])
    classes = rng.choice([1, 2, 3, 4], size=int(rng.integers(1, 4)), replace=False)
    ids = np.zeros((size, size), np.uint8)
    for class_id in sorted(classes.tolist(), key=_DRAW_ORDER.index):
        repeats = int(rng.integers(2, 5)) if class_id == 2 and rng.random() < 0.4 else 1
        for _ in range(repeats):
            mask = draw_defect(rng, img, class_id, light_dir)
            ids[mask] = class_id
    img = img * lighting(rng, size, light_dir)
    img = img + rng.normal(0, rng.uniform(0.008, 0.022), img.shape)
    rgb = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return rgb, ids, surface


def _png_bytes(array: np.ndarray) -> bytes:
    """Deterministic PNG encoding (no timestamps or text chunks)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _names(cfg: SynthConfig) -> list[str]:
    """Every file :func:`write_synthetic_dataset` writes for ``cfg``, relative to its folder
    (sample i's name needs only the first draw of its generator: its surface)."""
    names = [*_TOP]
    for split, n in (("train", cfg.num_train), ("test", cfg.num_test)):
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _SPLIT_IDS[split], i]))
            name = f"{i:04d}_{SURFACES[int(rng.integers(len(SURFACES)))]}.png"
            names += [f"{split}/images/{name}", f"{split}/masks/{name}"]
    return names


def _legacy(out: Path) -> list[str]:
    """The files of an embedded set without an ownership record (an older isdm, or restored by
    DVC): those its ``synth.json`` config writes."""
    from isdm.config import from_dict

    try:
        return _names(from_dict(SynthConfig, json.loads((out / _MARKER).read_text())))
    except (OSError, ValueError):  # unreadable, or not a synth config (ConfigError)
        return []


def _preview(samples: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    from isdm.data.masks import PALETTE

    rows = [np.concatenate([rgb, PALETTE[ids]], axis=1) for rgb, ids in samples]
    return np.concatenate(rows, axis=0)


def _readme(cfg: SynthConfig) -> str:
    masks = ("0/255 (any defect = 255)" if cfg.binary
             else "8-bit gray class ids: " + ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES)))
    return (
        "# isdm embedded synthetic dataset\n\n"
        "Procedural industrial surfaces (brushed metal, woven fabric, wood, cast/concrete) with\n"
        "lighting gradients and sensor noise, and drawn defects: scratch (thin curve), pit /\n"
        "blowhole (dark cavity with a highlight rim), crack (jagged branching path), stain (soft\n"
        "discoloured blob). Masks mark exactly the pixels each defect changed.\n\n"
        f"- {cfg.num_train} train / {cfg.num_test} test pairs, {cfg.image_size} px, seed {cfg.seed}\n"
        f"- masks: {masks}\n"
        "- regenerate byte-identically with `isdm data synth <dir> --set synth.seed=<seed>`\n"
    )


def write_synthetic_dataset(out_dir: str | Path, synth_cfg: SynthConfig, progress: bool = False) -> None:
    """Write the embedded dataset (layout and contents: see the module docstring) to ``out_dir``.

    The folder is this command's (:mod:`isdm.utils.ownership`): an earlier embedded set there
    is replaced, file by file; any other file (a user's image added to ``train/``, another
    dataset) is refused, and so is a folder inside a dataset split.

    Raises:
        OutputExistsError: ``out_dir`` holds files that this function did not write.
        BusyError: another process is writing ``out_dir``.
    """
    cfg = synth_cfg  # sizes and counts are checked by SynthConfig itself
    out = Path(out_dir)
    ownership.claim(out, "data synth", legacy=_legacy)  # refuse before creating the folder
    with ownership.exclusive(out, "data synth"):
        earlier = ownership.claim(out, "data synth", legacy=_legacy)
        earlier.remove()  # an earlier set of another config would leave stale files
        earlier.record(_names(cfg), keep=False)
        _write(out, cfg, progress)


def _write(out: Path, cfg: SynthConfig, progress: bool) -> None:
    """The files of :func:`_names` (the folder's lock held)."""
    jobs = [(split, i) for split, n in (("train", cfg.num_train), ("test", cfg.num_test))
            for i in range(n)]
    from isdm.utils import progress as bars

    preview = []
    for split, i in bars.bar(jobs, desc="synth", unit="image", enabled=progress):
        rgb, ids, surface = render_sample(cfg.seed, split, i, cfg.image_size)
        name = f"{i:04d}_{surface}.png"
        mask = (ids > 0).astype(np.uint8) * 255 if cfg.binary else ids
        atomic_write_bytes(out / split / "images" / name, _png_bytes(rgb))
        atomic_write_bytes(out / split / "masks" / name, _png_bytes(mask))
        if split == "train" and len(preview) < 8:
            preview.append((rgb, (ids > 0).astype(np.uint8) if cfg.binary else ids))
    names = ["background", "defect"] if cfg.binary else list(CLASS_NAMES)
    atomic_write_json(out / "classes.json", names)
    atomic_write_json(out / _MARKER, to_dict(cfg))
    atomic_write_text(out / "README.md", _readme(cfg))
    atomic_write_bytes(out / "preview.png", _png_bytes(_preview(preview)))
