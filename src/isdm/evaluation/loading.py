"""Load the real splits and a synthetic folder into memory as :class:`TensorSet` s.

Datasets here are small (that is the point of isdm), so every image is decoded and resized once
per ``isdm evaluate`` call and shared by all (architecture, mix, seed) cells.

- Real data: ``<root>/{train,test}/{images,masks}`` through the data layer
  (:class:`isdm.data.dataset.SegmentationFolder`, which pairs by relative path and validates);
  with ``data.crop`` whole images at ``data.scale`` (:mod:`isdm.evaluation.wholes`).
- Synthetic data: the sampling output ``<dir>/samples/`` (generated images) and ``<dir>/labels/``
  (uint8 class ids, ``ignore_index`` allowed, e.g. pixels a curation step left unlabelled) with
  identical file names; ``images/``, ``colored_labels/`` and ``manifest.jsonl`` are ignored.
  Several such folders ("synthetic sets") are told apart by name (:func:`synthetic_sets`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar, Union

import numpy as np
import torch

from isdm.config import Config, DataConfig
from isdm.config.data import image_hw
from isdm.errors import EvaluationError, MaskValueError
from isdm.evaluation.segmenter import TensorSet
from isdm.evaluation.wholes import WholeSet, load_whole

__all__ = ["load_real", "load_split", "load_synthetic", "empty_set", "eval_data_config",
           "synthetic_sets", "DEFAULT_SET"]

_IMAGE_EXT = (".png", ".jpg", ".jpeg")
T = TypeVar("T")
DEFAULT_SET = "synthetic"  # the name of a synthetic folder given without one
_SET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
SyntheticSpec = Union[None, str, Path, Mapping[str, Union[str, Path]], Sequence[str]]


def synthetic_sets(spec: SyntheticSpec) -> dict[str, Path]:
    """Named synthetic folders, in the order given (the first is the reference set).

    ``spec``: None (no synthetic data); one folder as a ``str`` or ``Path`` (named
    ``synthetic``); a mapping ``{name: folder}``; or a list of the command line's
    ``--synthetic`` values, each ``NAME=DIR`` or a bare ``DIR`` (named ``synthetic``), where a
    value is ``NAME=DIR`` when the text before its first ``=`` is a valid name. Names: a
    letter, then letters, digits, ``_`` or ``-``; not ``lo`` or ``hi`` (the headline key
    ``miou_gain_<name>`` would read as a CI bound).

    Raises:
        EvaluationError: an invalid or repeated name.
    """
    if spec is None:
        return {}
    if isinstance(spec, (str, Path)):
        spec = {DEFAULT_SET: spec}
    pairs = list(spec.items()) if isinstance(spec, Mapping) else [_split(v) for v in spec]
    out: dict[str, Path] = {}
    for name, folder in pairs:
        if not _SET_NAME.fullmatch(name) or name in ("lo", "hi"):
            raise EvaluationError(f"synthetic set name {name!r} (for {folder}): use a letter, then "
                                  "letters, digits, _ or - (not lo or hi, which end headline "
                                  "keys), e.g. --synthetic curated=data/curated")
        if name in out:
            raise EvaluationError(f"synthetic set {name!r} given twice ({out[name]} and {folder}); "
                                  "name each folder: --synthetic NAME=DIR")
        out[name] = Path(folder)
    return out


def _split(value: str) -> tuple[str, str]:
    """``"curated=data/curated"`` -> ``("curated", "data/curated")``; ``"data/x"`` ->
    ``("synthetic", "data/x")``."""
    name, sep, folder = value.partition("=")
    return (name, folder) if sep and _SET_NAME.fullmatch(name) else (DEFAULT_SET, value)


def eval_data_config(data_cfg: DataConfig, image_size: int | tuple[int, int]) -> DataConfig:
    """The data config with the segmenter's ``image_size``, whole images (``data.resize``, never
    ``data.crop``'s random crops) and no dataset-side random flip (augmentation is drawn from
    the cell's generator in :mod:`segmenter`)."""
    return dataclasses.replace(data_cfg, image_size=image_size, hflip=False, crop=False)


def _stack(items: list[dict]) -> TensorSet:
    if not items:
        return TensorSet(torch.empty(0, 3, 1, 1), torch.empty(0, 1, 1, dtype=torch.long), [])
    return TensorSet(torch.stack([it["image"] for it in items]).float(),
                     torch.stack([it["label"] for it in items]).long(),
                     [str(it["key"]) for it in items])


def load_real(root: str | Path, split: str, data_cfg: DataConfig) -> TensorSet:
    """All pairs of ``<root>/<split>`` resized to ``data_cfg.image_size`` (no augmentation)."""
    from isdm.data.dataset import SegmentationFolder

    ds = SegmentationFolder(root, split, data_cfg, augment=False)
    return _stack([ds[i] for i in range(len(ds))])


def empty_set(cfg: Config) -> TensorSet:
    """No images at ``evaluate.image_size``: the synthetic side of a real-only cell."""
    h, w = image_hw(cfg.evaluate.image_size)
    return TensorSet(torch.empty(0, 3, h, w), torch.empty(0, h, w, dtype=torch.long), [])


def load_split(cfg: Config, root: str | Path, split: str) -> TensorSet | WholeSet:
    """The real ``split`` as the segmenter sees it: every image resized to
    ``evaluate.image_size`` (:func:`load_real`), or with ``data.crop`` whole at ``data.scale``
    for crops and sliding windows of ``evaluate.image_size``
    (:func:`isdm.evaluation.wholes.load_whole`).

    Raises:
        EvaluationError: ``data.crop`` with ``evaluate.image_size`` != ``data.image_size``.
    """
    e, d = cfg.evaluate, cfg.data
    if not d.crop:
        return load_real(root, split, eval_data_config(d, e.image_size))
    if image_hw(e.image_size) != d.size:
        raise EvaluationError(
            f"data.crop=true: evaluate.image_size={e.image_size} differs from data.image_size="
            f"{d.image_size}; the segmenter's crops must match the synthetic images (the SDM's "
            "crops at data.scale) in size and pixel scale: set evaluate.image_size to "
            "data.image_size (each side a multiple of 32)")
    return load_whole(root, split, d, d.size, e.window_overlap)


def _synthetic_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    samples, labels = folder / "samples", folder / "labels"
    if not samples.is_dir() or not labels.is_dir():
        raise EvaluationError(
            f"{folder}: a synthetic folder needs samples/ (generated images) and labels/ "
            "(uint8 class-id PNGs) with the same file names, as written by `isdm sample`")

    def index(d: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() in _IMAGE_EXT:
                key = p.relative_to(d).with_suffix("").as_posix()
                if key in out:
                    raise EvaluationError(f"duplicate stem {key!r} in {d}: {out[key]} and {p}")
                out[key] = p
        return out

    imgs, labs = index(samples), index(labels)
    problems = [f"sample without label: {imgs[k]}" for k in sorted(set(imgs) - set(labs))]
    problems += [f"label without sample: {labs[k]}" for k in sorted(set(labs) - set(imgs))]
    if problems:
        raise EvaluationError(f"{folder}: {len(problems)} unpaired file(s):\n  "
                                   + "\n  ".join(problems[:20]))
    return [(k, imgs[k], labs[k]) for k in sorted(imgs)]


def _read(path: Path, folder: str | Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, with a broken file (zero-byte, truncated, not an image) named; label
    values outside the config's classes stay a :class:`MaskValueError` (a config problem)."""
    try:
        return read(path)
    except MaskValueError:
        raise
    except Exception as e:  # PIL: OSError, SyntaxError, ValueError (as DatasetError), ...
        size = path.stat().st_size if path.exists() else 0
        raise EvaluationError(
            f"synthetic file {path} is broken ({size} bytes; {type(e).__name__}: {e}): re-run "
            f"`isdm sample` with --out {folder} and the same config; it checks every sample "
            "against the manifest's sizes and digests and regenerates the broken ones") from None


def load_synthetic(folder: str | Path, data_cfg: DataConfig) -> TensorSet:
    """The ``samples/`` + ``labels/`` pairs of a sampling output folder, resized like real data.

    Images and labels go through the data layer's loaders (:func:`isdm.data.transforms.load_image`
    / :func:`~isdm.data.transforms.load_mask`), so labels follow the real masks' rules (binary:
    any value > 0 is class 1) and the same resize (bicubic / nearest, ``data.resize``).
    """
    from isdm.data import transforms

    cfg = data_cfg
    items = []
    for key, img_path, lab_path in _synthetic_pairs(Path(folder)):
        rgb = _read(img_path, folder, lambda p: transforms.load_image(p, None))
        ids = _read(lab_path, folder, lambda p: transforms.load_mask(
            p, cfg.dataset_mode, cfg.num_classes, cfg.ignore_index, None))
        if rgb.size != (ids.shape[1], ids.shape[0]):
            raise EvaluationError(f"{img_path} is {rgb.size[0]}x{rgb.size[1]} but its label "
                                       f"{lab_path} is {ids.shape[1]}x{ids.shape[0]}")
        rgb = transforms.resize_image(rgb, cfg.image_size, cfg.resize)
        ids = transforms.resize_ids(ids, cfg.image_size, cfg.resize, cfg.ignore_index)
        items.append({"image": transforms.to_tensor_image(rgb),
                      "label": torch.from_numpy(ids.astype(np.int64)), "key": key})
    return _stack(items)
