"""What a downstream cell depends on: its :class:`CellSpec`, whose digest keys the cell store.

A cell's result (best validation, history, test counts, selected weights) is a function of

- ``arch``, ``mix``, ``seed`` and ``steps`` (optimiser steps);
- ``real``: the digest of the real TRAIN split's files (:func:`isdm.data.digest.dataset_digest`;
  the validation split is carved out of it by the seed);
- ``test``: the digest of the real TEST split's files when the cell is tested (its record holds
  the test counts), ``''`` for a cell that is never tested (``isdm tune``'s cells: tuning never
  reads the test split);
- ``synthetic``: the digest of the ``samples/`` + ``labels/`` files of the synthetic set it
  trains on (:func:`isdm.data.digest.synthetic_digest`), ``''`` for a mix without synthetic
  images: the real-only cells do not depend on the synthetic set, so a new set (``dvc exp run -S
  sample.s=3.0``) re-trains none of them;
- ``data``: the ``data`` keys that decode and place the images (classes, ignore index, resize,
  and with ``data.crop`` the crop keys);
- ``recipe``: the ``evaluate`` section without the keys that only choose cells
  (``architectures``, ``mixes``, ``seeds``, ``protocols``), change nothing in a cell
  (``bootstrap``), or only say how cells run (``workers``, ``threads``), and without ``steps``
  (its own field), ``calibration`` (the rule that chooses ``steps`` for ``auto``: the chosen
  number is the key) and the protocol keys (``protocol``, ``pretrain_split``,
  ``synthetic_share``: their own field);
  ``window_overlap`` only with ``data.crop`` (it changes nothing otherwise);
- ``device``: the device TYPE (``cpu``, ``cuda``): CPU and CUDA results differ in their last bits;
- ``protocol``: how the mix trains (:mod:`isdm.evaluation.protocols`: ``mix``, ``share 0.25``,
  ``pretrain 0.5``), ``mix`` for a mix without synthetic images; neutral (left out at ``mix``,
  so the records written before protocols existed keep their keys).

The thread count is NOT part of it: it changes only the last bits of a result (the order of
float sums), like two runs on two CPUs; each record says which count trained it. Neither is the
dataset's path, a synthetic set's name or the isdm version.

The spec is a frozen dataclass whose identity is a dict (:meth:`CellSpec.identity`), so a field
added later joins the key without touching the store. A field added with
``metadata={"neutral": True}`` is left out of the identity while it holds its default, so the
records written before it existed keep their keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from isdm.config import Config, to_dict

__all__ = ["CellSpec", "cell_spec", "data_identity", "recipe_identity", "NOT_RECIPE"]

# evaluate keys that choose cells, change nothing in one, or say how cells run
NOT_RECIPE = ("architectures", "mixes", "seeds", "bootstrap", "workers", "threads", "steps",
              "calibration", "protocol", "pretrain_split", "synthetic_share", "protocols")
KEY_LENGTH = 24  # hex digits of SHA-256: 96 bits


@dataclass(frozen=True)
class CellSpec:
    """Everything one cell's result depends on (see the module docstring). ``data`` and
    ``recipe`` are plain JSON dicts (the spec is never hashed as a Python object)."""

    arch: str
    mix: str
    seed: int
    steps: int
    real: str
    test: str = ""
    synthetic: str = ""
    data: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    device: str = "cpu"
    protocol: str = field(default="mix", metadata={"neutral": True})

    def identity(self) -> dict[str, Any]:
        """The spec as a JSON-able dict; neutral fields at their default are left out."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("neutral") and value == _default(f):
                continue
            out[f.name] = value
        return json.loads(json.dumps(out, sort_keys=True))

    @property
    def key(self) -> str:
        """The first :data:`KEY_LENGTH` hex digits of the SHA-256 of the identity as canonical
        JSON (sorted keys, no spaces)."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]

    @property
    def trains_on_synthetic(self) -> bool:
        return bool(self.synthetic)

    def describe(self) -> str:
        protocol = "" if self.protocol == "mix" else f" {self.protocol}"
        return f"{self.arch} {self.mix}{protocol} seed {self.seed} ({self.steps} steps)"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def data_identity(cfg: Config) -> dict[str, Any]:
    """The ``data`` keys that decide what a segmenter sees (decoding, placement, crops)."""
    d = cfg.data
    out: dict[str, Any] = {"dataset_mode": d.dataset_mode, "num_classes": d.num_classes,
                           "ignore_index": d.ignore_index, "resize": d.resize}
    if d.crop:  # trained on crops at data.scale, validated and tested by sliding windows
        out.update(crop=True, scale=d.scale, crop_defect_prob=d.crop_defect_prob)
    return json.loads(json.dumps(out))


def recipe_identity(cfg: Config) -> dict[str, Any]:
    """The evaluate recipe of a cell: ``cfg.evaluate`` without :data:`NOT_RECIPE` (and without
    ``window_overlap`` for whole images)."""
    recipe = {k: v for k, v in to_dict(cfg.evaluate).items() if k not in NOT_RECIPE}
    if not cfg.data.crop:
        recipe.pop("window_overlap", None)
    return json.loads(json.dumps(recipe))


def cell_spec(cfg: Config, arch: str, mix: str, seed: int, *, real: str, test: str = "",
              synthetic: str = "", device: str = "cpu", steps: int | None = None,
              protocol: str = "mix") -> CellSpec:
    """The spec of the cell (``arch``, ``mix``, ``seed``) of ``cfg`` (``steps``: default
    ``evaluate.steps``, which must then be a number: ``auto`` is resolved per architecture by
    :func:`isdm.evaluation.calibration.resolve_steps`); ``real`` / ``test`` / ``synthetic`` are
    the digests of its data (``synthetic`` and ``protocol`` are ignored for a mix without
    synthetic images)."""
    from isdm.errors import EvaluationError
    from isdm.evaluation.mixes import parse_mix
    from isdm.evaluation.protocols import parse_protocol

    steps = cfg.evaluate.steps if steps is None else steps
    if not isinstance(steps, int):
        raise EvaluationError(f"the cell {arch} {mix} seed {seed} needs a number of steps, not "
                              f"evaluate.steps={steps!r}: resolve it first "
                              "(isdm.evaluation.calibration.resolve_steps)")
    uses = parse_mix(mix).uses_synthetic
    return CellSpec(arch=arch, mix=parse_mix(mix).code, seed=int(seed), steps=int(steps), real=real,
                    test=test, synthetic=synthetic if uses else "", data=data_identity(cfg),
                    recipe=recipe_identity(cfg), device=device,
                    protocol=parse_protocol(protocol).code if uses else "mix")
