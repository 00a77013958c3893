"""The curated folder: read a synthetic folder, score and filter its pairs, write the curated set.

Layout of the output (a sampling folder's, so ``evaluate`` and ``tune`` read it like any
synthetic set; only KEPT pairs are in the four per-sample folders)::

    samples/ images/     hard links to the synthetic folder's files (copies across file systems)
    labels/              uint8 ids, the high-loss pixels set to ignore_index (a hard link when
                         no pixel changed)
    colored_labels/      the palette PNG of that label (ignored pixels gray)
    loss_maps/<key>.npy  the scorer's per-pixel loss, float32 [H, W], NaN at ignored pixels (all
                         pairs, dropped ones too)
    manifest.jsonl       one JSON line per pair of the synthetic folder, sorted by sample index:
                         its sampling record (``files`` re-hashed for the curated files; none for
                         a dropped pair) plus a ``curate`` block with the scores and the decision
    weights.json         hardness re-sampling weight per source mask
    config.json          the resolved config of the curate run
    card.md card.json best_worst.png closest_pairs.png fidelity_hist.png    (:mod:`.card`)

The folder is built beside ``out_dir`` (``.<name>.curate.<host>.<pid>.<random>.tmp``) and renamed
into place when complete; an earlier curate output there (its ownership record, or for an
older one its ``card.json``, says so: :mod:`isdm.utils.ownership`) is replaced, anything else
is refused. The synthetic folder is only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from isdm.errors import CurationError
from isdm.utils import ownership
from isdm.utils.io import pid_running

__all__ = ["Pair", "read_pairs", "prepare_out", "write_folder", "publish", "FOLDERS"]

FOLDERS = ("images", "labels", "colored_labels", "samples")
_IMAGE_EXT = (".png", ".jpg", ".jpeg")
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"


@dataclass
class Pair:
    """One synthetic pair: its files, sampling record, scores and the gate's decision."""

    key: str
    sample: Path
    label_path: Path
    record: dict[str, Any]
    label: np.ndarray  # uint8 [H, W] as stored
    loss: Optional[np.ndarray] = None  # float32 [H, W], NaN at ignored pixels
    pred: Optional[np.ndarray] = None  # uint8 [H, W] scorer's arg-max
    iou: Optional[dict[int, float]] = None
    fidelity: Optional[float] = None
    mean_loss: Optional[float] = None
    kept: bool = True
    curated: Optional[np.ndarray] = None  # uint8 [H, W]: label with the high-loss pixels ignored
    ignored: Optional[np.ndarray] = None  # int64 [C] pixels ignored per class
    weight: float = 1.0
    nearest: str = ""
    distance: float = float("nan")
    near_copy: bool = False

    @property
    def source(self) -> str:
        """The source mask's key (the sample key when the record does not name one)."""
        return str(self.record.get("source_mask", self.key))

    @property
    def index(self) -> float:
        i = self.record.get("index")
        return float(i) if isinstance(i, int) else float("inf")


def _index(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).with_suffix("").as_posix(): p
            for p in sorted(folder.rglob("*")) if p.suffix.lower() in _IMAGE_EXT}


def _records(folder: Path) -> dict[str, dict]:
    """Complete sampling records by file name (``pending`` and torn lines skipped)."""
    path, out = folder / "manifest.jsonl", {}
    for text in path.read_text().splitlines() if path.is_file() else []:
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and "files" in line and isinstance(line.get("file"), str):
            out[line["file"]] = line
    return out


def read_pairs(folder: str | Path, keys: list[str], data_cfg: Any) -> list[Pair]:
    """The pairs ``keys`` (as :func:`isdm.evaluation.loading.load_synthetic` named them) with
    their stored labels and sampling records (``{"file": name}`` for a pair without one)."""
    from isdm.data import transforms

    folder = Path(folder)
    samples, labels, records = _index(folder / "samples"), _index(folder / "labels"), _records(folder)
    pairs = []
    for key in keys:
        name = samples[key].relative_to(folder / "samples").as_posix()
        label = transforms.load_mask(labels[key], data_cfg.dataset_mode, data_cfg.num_classes,
                                     data_cfg.ignore_index, None)
        pairs.append(Pair(key, samples[key], labels[key], dict(records.get(name, {"file": name})),
                          label))
    return pairs


# ---- the output folder ------------------------------------------------------------------------


STATIC = ("manifest.jsonl", "weights.json", "config.json", "card.md", "card.json",
          "best_worst.png", "closest_pairs.png", "fidelity_hist.png")


def _legacy(out: Path) -> list[str]:
    """The files of an earlier curate output without an ownership record (an older isdm, or
    restored by DVC): recognised by its ``card.json``; its manifest names the pair files."""
    try:
        ours = json.loads((out / "card.json").read_text()).get("isdm") == "curate"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        return []
    owned = [n for n in STATIC if (out / n).is_file()]
    for text in (out / "manifest.jsonl").read_text().splitlines():
        try:
            line = json.loads(text)
            owned += list(line.get("files", {})) + [line["curate"]["loss_map"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return owned


def prepare_out(out_dir: str | Path, synthetic_dir: str | Path) -> ownership.Output:
    """Check that ``out_dir`` may be written (before any work) and sweep temps of dead runs.

    Returns:
        The earlier curate output there (replaced by :func:`publish`).
    Raises:
        CurationError: ``out_dir`` is the synthetic folder, inside it, or holds it.
        OutputExistsError: ``out_dir`` holds files that are not an earlier curate output's
            (:mod:`isdm.utils.ownership`), or is inside a dataset split.
    """
    out, src = Path(out_dir).resolve(), Path(synthetic_dir).resolve()
    if out == src or src in out.parents or out in src.parents:
        raise CurationError(f"--out {out_dir} overlaps --synthetic {synthetic_dir}: the curated "
                            "set is a new folder (the sampling output is never modified); "
                            "use e.g. --out data/curated")
    output = ownership.claim(out, "curate", legacy=_legacy)
    out.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.curate\.{_HOST}\.(\d+)\..+\.tmp")
    for entry in out.parent.iterdir():
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir() and not pid_running(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    return output


def _link(src: Path, dst: Path) -> None:
    """Hard link ``dst`` to ``src``; a copy where links are impossible (other file system)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _png(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _write_pair(root: Path, src: Path, pair: Pair) -> dict[str, dict[str, Any]]:
    """The kept pair's four files in ``root``; returns ``{"<folder>/<name>": {sha256, size}}``."""
    from PIL import Image

    from isdm.data.masks import colorize
    from isdm.utils.io import atomic_write_bytes, sha256_file

    name = pair.record["file"]
    changed = bool(pair.ignored.sum())
    label_name = pair.label_path.relative_to(src / "labels").as_posix()
    if changed:
        label_name = str(Path(label_name).with_suffix(".png"))
        atomic_write_bytes(root / "labels" / label_name,
                           _png(Image.fromarray(np.ascontiguousarray(pair.curated), "L")))
    else:
        _link(pair.label_path, root / "labels" / label_name)
    _link(pair.sample, root / "samples" / name)
    if (src / "images" / name).is_file():
        _link(src / "images" / name, root / "images" / name)
    colored = src / "colored_labels" / label_name
    if changed or not colored.is_file():
        atomic_write_bytes(root / "colored_labels" / label_name, _png(colorize(pair.curated)))
    else:
        _link(colored, root / "colored_labels" / label_name)
    files = {}
    for folder, rel in (("images", name), ("labels", label_name),
                        ("colored_labels", label_name), ("samples", name)):
        path = root / folder / rel
        if path.is_file():
            files[f"{folder}/{rel}"] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def _json_float(v: Optional[float]) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else float(v)


def _curate_block(pair: Pair, loss_rel: str) -> dict[str, Any]:
    return {
        "kept": pair.kept, "fidelity": _json_float(pair.fidelity),
        "iou": {str(c): v for c, v in sorted((pair.iou or {}).items())},
        "mean_loss": _json_float(pair.mean_loss),
        "ignored_pixels": {str(c): int(n) for c, n in enumerate(pair.ignored) if n},
        "hardness_weight": pair.weight, "nearest_real": pair.nearest,
        "nearest_distance": _json_float(pair.distance), "near_copy": pair.near_copy,
        "loss_map": loss_rel,
    }


def write_folder(root: Path, src: Path, pairs: list[Pair], weights: dict[str, float],
                 power: float) -> None:
    """The per-sample folders, loss maps, ``manifest.jsonl`` and ``weights.json`` in ``root``."""
    import io

    from isdm.utils.io import atomic_write_bytes, atomic_write_json

    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    lines = []
    for pair in sorted(pairs, key=lambda p: (p.index, p.key)):
        rec = {k: v for k, v in pair.record.items() if k != "files"}
        if pair.kept:
            rec["files"] = _write_pair(root, src, pair)
        loss_rel = f"loss_maps/{pair.key}.npy"
        buf = io.BytesIO()
        np.save(buf, pair.loss.astype(np.float32))
        atomic_write_bytes(root / loss_rel, buf.getvalue())
        rec["curate"] = _curate_block(pair, loss_rel)
        lines.append(json.dumps(rec, sort_keys=True))
    atomic_write_bytes(root / "manifest.jsonl", "".join(ln + "\n" for ln in lines).encode())
    atomic_write_json(root / "weights.json", {
        "basis": "w = h^power / mean over masks of h^power, h = mean per-pixel scorer loss of "
                 "the mask's synthetic pairs (FreeMask's hardness-aware re-sampling)",
        "power": power, "weights": weights})


def staging_dir(out: Path) -> Path:
    """A new, empty hidden folder beside ``out`` to build the curated set in."""
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.curate.{_HOST}.{os.getpid()}.",
                                 suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become the published folder's mode
    return path


def publish(staging: Path, out: Path, synthetic_dir: str | Path) -> None:
    """Rename the finished ``staging`` folder onto ``out`` (:func:`isdm.utils.ownership.publish`:
    the record, the lock and ``.gitignore`` carried over, a file that arrived meanwhile
    refused); ``synthetic_dir`` is only read."""
    ownership.publish(staging, out, "curate", legacy=_legacy)
