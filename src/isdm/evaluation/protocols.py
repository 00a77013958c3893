"""How a cell's training uses its synthetic images: the training protocols.

A cell trains ``T`` optimiser steps (``evaluate.steps``) of ``B`` images (``evaluate.batch_size``)
on the ``n_r`` real and ``n_s`` synthetic images of its mix, whatever the protocol, so every row
of a report has the baseline's budget. The protocol decides which images fill each batch:

- ``mix`` (the default): the real and synthetic images concatenated into one pool and drawn by
  one seeded stream of permutations (:class:`isdm.evaluation.segmenter.BatchStream`); a batch
  holds on average ``B n_s / (n_r + n_s)`` synthetic images, so at an equal step budget every
  synthetic image shown displaces a real one.
- ``share q`` (``evaluate.synthetic_share``, a mix with a fixed share): every batch holds
  ``k = round(q B)`` synthetic images from their own seeded stream (:data:`Stream.EVAL_SHARE`)
  and ``B - k`` real images from the real stream (the run's generator, as ``mix``'s), real ones
  first. The synthetic images then weigh ``q`` of every step whatever their count.
- ``pretrain p`` (``evaluate.protocol: pretrain``, ``evaluate.pretrain_split``): steps
  ``1 .. T1`` with ``T1 = round(p T)`` on batches of synthetic images only, steps
  ``T1 + 1 .. T`` on real images only. It is ONE run: the model, the Adam state, the
  augmentation and the validation (every ``val_every`` steps on the real validation split, the
  best kept) go on across the boundary; the real stream's first permutation is drawn when the
  second phase starts. The weights selected may come from the first phase when its validation is
  the best (the row then says that synthetic-only training was best on validation).

Every stream is a function of the cell's seed only, checkpointable (:meth:`state_dict`), so a
cell resumed across the phase boundary gives the bits of an uninterrupted one.

A protocol is written as a code: ``mix``, ``share 0.25``, ``pretrain 0.5`` (:func:`parse_protocol`;
numbers in (0, 1)); a report row of a protocol other than ``mix`` is labelled
``RALLFALL[synthetic] pretrain 0.5`` (:func:`isdm.evaluation.mixes.mix_label`). A mix without
synthetic images (``RALLF000``) always trains as ``mix``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from isdm.errors import EvaluationError
from isdm.evaluation.segmenter import BatchStream
from isdm.seeds import Stream, derive

__all__ = ["Protocol", "MIX", "parse_protocol", "protocol_of", "protocol_keys", "row_protocols",
           "ShareStream", "PretrainStream", "StreamFactory"]

_CODE = re.compile(r"^\s*(mix|share|pretrain)(?:\s+(\S+))?\s*$")
StreamFactory = Callable[[torch.Generator], Any]


@dataclass(frozen=True)
class Protocol:
    """``kind`` ``mix`` (``value`` = the synthetic share of a batch, 0 = concatenation) or
    ``pretrain`` (``value`` = the fraction of the steps on synthetic images)."""

    kind: str = "mix"
    value: float = 0.0

    @property
    def code(self) -> str:
        """``mix``, ``share 0.25`` or ``pretrain 0.5``."""
        if self.kind == "pretrain":
            return f"pretrain {self.value:g}"
        return f"share {self.value:g}" if self.value else "mix"

    def batch_split(self, batch_size: int) -> tuple[int, int]:
        """``(real, synthetic)`` images per batch of a ``share`` protocol."""
        k = round(self.value * batch_size)
        return batch_size - k, k

    def switch_step(self, steps: int) -> int:
        """The last step of a ``pretrain`` protocol's synthetic phase: ``round(p * steps)``."""
        return round(self.value * steps)

    def check(self, batch_size: int, n_real: int, n_synthetic: int,
              steps: Optional[int] = None) -> None:
        """Raise a clear error when this protocol cannot train a mix of ``n_real`` real and
        ``n_synthetic`` synthetic images in batches of ``batch_size`` (for ``steps`` steps)."""
        if self.code == "mix":
            return
        if n_real < 1 or n_synthetic < 1:
            raise EvaluationError(f"protocol {self.code!r} needs real AND synthetic images, the "
                                  f"mix has {n_real} real and {n_synthetic} synthetic; use it "
                                  "with a mix like RALLFALL")
        if self.kind == "mix":
            real, syn = self.batch_split(batch_size)
            if real < 1 or syn < 1:
                raise EvaluationError(
                    f"protocol {self.code!r}: a batch of {batch_size} would hold {syn} synthetic "
                    f"and {real} real images; choose a share between {1 / batch_size:g} and "
                    f"{1 - 1 / batch_size:g} (or raise evaluate.batch_size)")
        elif steps is not None and not 0 < self.switch_step(steps) < steps:
            raise EvaluationError(
                f"protocol {self.code!r}: {self.switch_step(steps)} of the {steps} steps "
                "would pretrain; choose a split that leaves each phase at least one step (or "
                "raise evaluate.steps)")

    def stream(self, n_real: int, n_synthetic: int, batch_size: int, steps: int,
               seed: int) -> Optional[StreamFactory]:
        """The batch stream of a mix whose indices ``[0, n_real)`` are real and ``[n_real,
        n_real + n_synthetic)`` synthetic, as a factory of the run's generator; None for the
        concatenation (the run's own :class:`BatchStream`)."""
        if self.code == "mix":
            return None
        self.check(batch_size, n_real, n_synthetic, steps)
        if self.kind == "mix":
            real, syn = self.batch_split(batch_size)
            return lambda g: ShareStream(n_real, n_synthetic, real, syn, g, seed)
        switch = self.switch_step(steps)
        return lambda g: PretrainStream(n_real, n_synthetic, batch_size, switch, g)


MIX = Protocol()


def parse_protocol(code: str | Protocol) -> Protocol:
    """``mix`` | ``share Q`` | ``pretrain P`` (Q, P in (0, 1)) as a :class:`Protocol`.

    Raises:
        EvaluationError: anything else.
    """
    if isinstance(code, Protocol):
        return code
    m = _CODE.match(code) if isinstance(code, str) else None
    value: Optional[float] = None
    if m and m.group(2) is not None:
        try:
            value = float(m.group(2))
        except ValueError:
            value = None
    if m and m.group(1) == "mix" and m.group(2) is None:
        return MIX
    if m and m.group(1) != "mix" and value is not None and 0 < value < 1:
        return Protocol("mix" if m.group(1) == "share" else "pretrain", value)
    raise EvaluationError(f"protocol {code!r}: expected 'mix', 'share Q' (Q in (0, 1): the "
                          "synthetic share of every batch) or 'pretrain P' (P in (0, 1): the "
                          "fraction of the steps on synthetic images first), e.g. 'pretrain 0.5'")


def protocol_of(evaluate: Any) -> Protocol:
    """The protocol an ``evaluate`` section asks for (``protocol``, ``pretrain_split``,
    ``synthetic_share``): the main rows' and the tune trials' protocol. Its numbers are those
    of its code (``share 0.25``), which is what a cell's key holds."""
    if evaluate.protocol == "pretrain":
        return Protocol("pretrain", float(f"{evaluate.pretrain_split:g}"))
    return Protocol("mix", float(f"{evaluate.synthetic_share:g}"))


def protocol_keys(code: str | Protocol) -> dict[str, Any]:
    """The ``evaluate`` keys (dotted) that ask for the protocol ``code``: ``pretrain 0.5`` ->
    ``{evaluate.protocol: pretrain, evaluate.pretrain_split: 0.5}``, ``share 0.25`` / ``mix``
    -> ``{evaluate.protocol: mix, evaluate.synthetic_share: 0.25 / 0.0}``."""
    p = parse_protocol(code)
    if p.kind == "pretrain":
        return {"evaluate.protocol": "pretrain", "evaluate.pretrain_split": p.value}
    return {"evaluate.protocol": "mix", "evaluate.synthetic_share": p.value}


def row_protocols(evaluate: Any) -> list[str]:
    """The codes of a report's protocol rows: the main protocol (:func:`protocol_of`) first,
    then ``evaluate.protocols`` (the extra rows) without it.

    Raises:
        EvaluationError: an invalid or repeated entry.
    """
    extra = [parse_protocol(p).code for p in evaluate.protocols]
    dupes = sorted({p for p in extra if extra.count(p) > 1})
    if dupes:
        raise EvaluationError(f"evaluate.protocols lists {dupes} more than once")
    main = protocol_of(evaluate).code
    return [main] + [p for p in extra if p != main]


class ShareStream:
    """Batches of ``n_real_batch`` real indices (the run's ``generator``) then ``n_syn_batch``
    synthetic ones offset by ``n_real`` (their own generator, :data:`Stream.EVAL_SHARE` of
    ``seed``); see the module docstring."""

    def __init__(self, n_real: int, n_synthetic: int, n_real_batch: int, n_syn_batch: int,
                 generator: torch.Generator, seed: int) -> None:
        self.offset = n_real
        self.real = BatchStream(n_real, n_real_batch, generator)
        self.synthetic_generator = torch.Generator().manual_seed(derive(Stream.EVAL_SHARE, seed))
        self.synthetic = BatchStream(n_synthetic, n_syn_batch, self.synthetic_generator)

    def next(self) -> torch.Tensor:
        return torch.cat([self.real.next(), self.offset + self.synthetic.next()])

    def state_dict(self) -> dict[str, Any]:
        return {"real": self.real.pending.clone(), "synthetic": self.synthetic.pending.clone(),
                "synthetic_generator": self.synthetic_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.real.pending = state["real"].clone()
        self.synthetic.pending = state["synthetic"].clone()
        self.synthetic_generator.set_state(state["synthetic_generator"])


class PretrainStream:
    """Batches of synthetic indices (offset by ``n_real``) for the first ``switch`` calls, then
    real ones; both from the run's ``generator`` (see the module docstring)."""

    def __init__(self, n_real: int, n_synthetic: int, batch_size: int, switch: int,
                 generator: torch.Generator) -> None:
        self.offset, self.switch, self.served = n_real, switch, 0
        self.synthetic = BatchStream(n_synthetic, batch_size, generator)
        self.real = BatchStream(n_real, batch_size, generator)

    def next(self) -> torch.Tensor:
        self.served += 1
        if self.served <= self.switch:
            return self.offset + self.synthetic.next()
        return self.real.next()

    def state_dict(self) -> dict[str, Any]:
        return {"served": self.served, "real": self.real.pending.clone(),
                "synthetic": self.synthetic.pending.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.served = int(state["served"])
        self.real.pending = state["real"].clone()
        self.synthetic.pending = state["synthetic"].clone()
