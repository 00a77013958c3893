"""The sampling output folder: per-sample files, the manifest, the run identity and the grid.

Layout (one file per sample in each folder, the same name ``{i:06d}_{mask key}.png``)::

    images/          real image of the conditioning mask (resized; augmented alongside the mask;
                     a gray placeholder for folder masks without an image)
    labels/          uint8 class ids (binary: 0/1), 8-bit gray PNG, ignore_index kept
    colored_labels/  palette PNG (isdm.data.masks.colorize), binary too
    samples/         the generated image, RGB PNG
    manifest.jsonl   one JSON line per finished sample, sorted by index at the end of a run
    config.json      the resolved config (model / diffusion from the checkpoint)
    run.json         checkpoint path + hash and the identity of the run (what decides the bytes)
    summary.json     counts, timings, class distribution before / after
    grid.png         colored label | sample pairs of the first 16 finished samples

Every file is written atomically (temp file + rename), so a sample is finished exactly when its
four files exist. While running, each finished sample appends ONE complete line to the manifest
(a single ``write`` on an ``O_APPEND`` descriptor); :meth:`OutputDir.finalize_manifest` rewrites
it atomically from the finished samples, so a crash leaves at worst a torn last line that the
rewrite drops.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from isdm.errors import OutputExistsError
from isdm.utils.io import atomic_path, atomic_write_json

__all__ = ["OutputDir", "FOLDERS", "OutputExistsError", "sample_name"]

FOLDERS = ("images", "labels", "colored_labels", "samples")
_FILES = ("manifest.jsonl", "config.json", "run.json", "summary.json", "grid.png")


def sample_name(i: int, key: str) -> str:
    """``000012_sub__img_003.png``: sample index, then the mask key with '/' made flat."""
    return f"{i:06d}_{key.replace('/', '__')}.png"


def _save_png(path: Path, image: Any) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


class OutputDir:
    """One sampling output folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- run identity --------------------------------------------------------------------
    def prepare(self, identity: Mapping[str, Any], run_info: Mapping[str, Any], *,
                num_samples: int, overwrite: bool) -> bool:
        """Claim the folder for this run; return True when earlier results are reused.

        A folder holding results of a different ``identity`` (config or checkpoint) raises
        :class:`OutputExistsError` unless ``overwrite``, which deletes isdm's outputs in it
        (and nothing else). ``overwrite`` on the same identity also starts afresh. A larger
        ``num_samples`` than before extends the run; a smaller one is refused (it would leave
        extra samples behind).
        """
        run_file = self.root / "run.json"
        has_outputs = any((self.root / f).exists() for f in (*FOLDERS, *_FILES))
        if has_outputs and not overwrite:
            if not run_file.exists():
                raise OutputExistsError(
                    f"{self.root} already holds sampling outputs but no run.json; use another "
                    "--out or pass --overwrite to clear it")
            old = json.loads(run_file.read_text())
            if old.get("identity") != json.loads(json.dumps(identity)):
                diff = _diff(old.get("identity", {}), json.loads(json.dumps(identity)))
                raise OutputExistsError(
                    f"{self.root} was written by a different run ({'; '.join(diff[:6])}); "
                    "use another --out, or --overwrite to clear it")
            if int(old.get("num_samples", 0)) > num_samples:
                raise OutputExistsError(
                    f"{self.root} holds a run of {old['num_samples']} samples; sampling "
                    f"{num_samples} there would leave the extra ones behind: use another --out, "
                    "--overwrite, or sample.num_samples >= "f"{old['num_samples']}")
        if overwrite:
            self.clear()
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {"identity": identity, "num_samples": num_samples,
                                     **run_info})
        return has_outputs and not overwrite

    def clear(self) -> None:
        """Remove isdm's sampling outputs from the folder (other files are left alone)."""
        for folder in FOLDERS:
            shutil.rmtree(self.root / folder, ignore_errors=True)
        for name in _FILES:
            (self.root / name).unlink(missing_ok=True)

    # ---- samples -------------------------------------------------------------------------
    def is_complete(self, name: str) -> bool:
        return all((self.root / f / name).exists() for f in FOLDERS)

    def write_sample(self, name: str, image: Optional[np.ndarray], label: np.ndarray,
                     sample: np.ndarray) -> None:
        """Write one sample's four files; ``samples/`` last so it marks completion.

        Args:
            image: uint8 [H, W, 3] real image, or None (gray placeholder).
            label: uint8 [H, W] class ids.
            sample: uint8 [H, W, 3] generated image.
        """
        from PIL import Image

        from isdm.data.masks import colorize
        from isdm.sampling.mask_sources import PLACEHOLDER_GRAY

        if image is None:
            image = np.full((*label.shape, 3), PLACEHOLDER_GRAY, np.uint8)
        _save_png(self.root / "images" / name, Image.fromarray(np.ascontiguousarray(image), "RGB"))
        _save_png(self.root / "labels" / name, Image.fromarray(np.ascontiguousarray(label), "L"))
        _save_png(self.root / "colored_labels" / name, colorize(label))
        _save_png(self.root / "samples" / name, Image.fromarray(np.ascontiguousarray(sample), "RGB"))

    # ---- manifest ------------------------------------------------------------------------
    def append_record(self, record: Mapping[str, Any]) -> None:
        """Append one complete JSON line (a single write on an O_APPEND descriptor)."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.root / "manifest.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read_records(self) -> dict[int, dict]:
        """Manifest records by sample index; torn or unparsable lines are skipped."""
        path = self.root / "manifest.jsonl"
        out: dict[int, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    out[int(rec["index"])] = rec
                except (ValueError, KeyError, TypeError):
                    continue
        return out

    def finalize_manifest(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Rewrite the manifest atomically with ``records`` (sorted by index); return the count."""
        n = 0
        with atomic_path(self.root / "manifest.jsonl") as tmp, open(tmp, "w") as f:
            for rec in sorted(records, key=lambda r: r["index"]):
                f.write(json.dumps(rec, sort_keys=True) + "\n")
                n += 1
        return n

    # ---- grid ----------------------------------------------------------------------------
    def write_grid(self, names: list[str], columns: int = 4) -> Optional[Path]:
        """``grid.png``: (colored label | sample) pairs, ``columns`` pairs per row; images
        smaller than 96 px are enlarged with nearest neighbour."""
        from PIL import Image

        if not names:
            return None
        tiles = []
        for name in names:
            label = Image.open(self.root / "colored_labels" / name).convert("RGB")
            sample = Image.open(self.root / "samples" / name).convert("RGB")
            tiles.append((label, sample))
        w, h = tiles[0][1].size
        zoom = max(1, 96 // max(w, h))  # small images are enlarged (nearest) to be visible
        w, h = w * zoom, h * zoom
        pad = 2
        cols = min(columns, len(tiles))
        rows = (len(tiles) + cols - 1) // cols
        grid = Image.new("RGB", (cols * (2 * w + 3 * pad), rows * (h + pad) + pad), (255, 255, 255))
        for k, (label, sample) in enumerate(tiles):
            x0 = (k % cols) * (2 * w + 3 * pad) + pad
            y0 = (k // cols) * (h + pad) + pad
            grid.paste(label.resize((w, h), Image.NEAREST), (x0, y0))
            grid.paste(sample.resize((w, h), Image.NEAREST), (x0 + w + pad, y0))
        path = self.root / "grid.png"
        _save_png(path, grid)
        return path


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
