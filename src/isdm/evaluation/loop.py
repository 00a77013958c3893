"""The segmenter's training loop, resumable bit for bit: :class:`SegmenterRun`.

One optimiser step (:meth:`SegmenterRun.advance`): the next batch of the seeded stream (the
mix's concatenation, or a training protocol's stream, :mod:`isdm.evaluation.protocols`; a crop
mix cuts its crops from ``(seed, step, slot)``), moved to the device, augmented on the whole
batch, the forward pass under ``precision`` autocast, the loss in float32, backward, Adam. The
batch losses stay on the device until a validation averages them (no host round trip per step).

Model selection: every ``val_every`` steps the validation mIoU (:func:`metrics.summarize`,
background included) is computed on the REAL validation images and the weights of the best
validation (earliest on ties) are kept; :meth:`SegmenterRun.finish` adds the validation after
the last step (when it is not one of those) and returns the selection. The test set is never
seen here.

Resumable: :meth:`SegmenterRun.state_dict` holds everything the next steps depend on (the
model, the optimiser, the step, the batch stream's pending indices, the generator of the
permutations and augmentation, the global RNG this run forked and seeded (dropout draws from
it), the best weights so far and the history), so training ``0 -> k``, saving, loading into a
fresh run and continuing ``k -> N`` gives the same bits as ``0 -> N`` in one go.
:meth:`finish` changes nothing in the run: it can train on afterwards, and a run finished at
``N`` equals a run trained straight to ``N``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from isdm.config import EvaluateConfig
from isdm.errors import EvaluationError
from isdm.evaluation.metrics import summarize
from isdm.evaluation.segmenter import (
    BatchStream,
    TensorSet,
    augment_batch,
    loss_function,
    make_optimizer,
    normalize,
    predict_counts,
    validation_interval,
)
from isdm.evaluation.wholes import CropMix, WholeSet
from isdm.utils.numerics import check_losses

__all__ = ["SegmenterFit", "SegmenterRun", "train_segmenter", "val_windows"]

OnValidation = Optional[Callable[[dict[str, float]], None]]


@dataclass
class SegmenterFit:
    """The selected validation (its step and mIoU), the run's budget and history, the weights.

    ``history`` holds one row per validation: ``{"step", "epoch", "train_loss", "val_miou",
    "val_miou_nobg", "seconds"}`` where ``epoch`` = images shown so far / training images
    (derived), ``train_loss`` is the mean batch loss since the previous validation and
    ``seconds`` the time since then (training and this validation). ``val_every`` is the
    interval used (resolved when the recipe says 0).
    """

    best_step: int
    best_val_miou: float
    steps: int = 0
    images_seen: int = 0
    epochs: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    train_seconds: float = 0.0
    val_every: int = 0

    def summary(self) -> dict[str, Any]:
        """Everything but the weights, as plain JSON values (a cell record's ``fit``)."""
        return {"best_step": self.best_step, "best_val_miou": self.best_val_miou,
                "steps": self.steps, "images_seen": self.images_seen, "epochs": self.epochs,
                "val_every": self.val_every, "train_seconds": self.train_seconds,
                "history": [dict(h) for h in self.history]}


def val_windows(val: TensorSet | WholeSet) -> int:
    """Forward passes of one validation: images, or their sliding windows."""
    return val.num_windows() if isinstance(val, WholeSet) else len(val)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class SegmenterRun:
    """Train ``model`` on ``train`` and select on ``val`` (see the module docstring).

    Deterministic for a given seed on CPU: data order and augmentation come from
    ``torch.Generator().manual_seed(seed)``, dropout from the global RNG seeded with it inside
    a fork (the caller's RNG is untouched). ``on_validation`` receives each history row.
    ``stream``: a factory of the batch stream given the run's generator (a training protocol,
    :meth:`isdm.evaluation.protocols.Protocol.stream`; its ``next()`` / ``state_dict()`` /
    ``load_state_dict()``); None = one :class:`BatchStream` over the whole mix.
    """

    def __init__(self, model: torch.nn.Module, train: TensorSet | CropMix,
                 val: TensorSet | WholeSet, recipe: EvaluateConfig, *, num_classes: int,
                 ignore_index: Optional[int], seed: int, device: torch.device,
                 on_validation: OnValidation = None,
                 stream: Optional[Callable[[torch.Generator], Any]] = None) -> None:
        if len(train) < 2:
            raise EvaluationError(f"a training mix needs at least 2 images, got {len(train)}")
        if len(val) == 0:
            raise EvaluationError("the validation split is empty: raise evaluate.val_fraction")
        self.recipe, self.device, self.seed = recipe, device, int(seed)
        self.num_classes, self.ignore_index, self.on_validation = num_classes, ignore_index, on_validation
        self.model = model.to(device)
        self.train = train.to(device) if isinstance(train, TensorSet) and device.type == "cuda" \
            else train
        self.val = val
        self.val_every = validation_interval(recipe.val_every, recipe.batch_size, val_windows(val))
        self.generator = torch.Generator().manual_seed(self.seed)
        self.stream = (BatchStream(len(train), recipe.batch_size, self.generator)
                       if stream is None else stream(self.generator))
        self.criterion = loss_function(recipe.loss, ignore_index)
        self.optimizer = make_optimizer(model, recipe.lr, device)
        self._rng = self._seeded_rng()
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best_step, self.best_val_miou = 0, float("-inf")
        self.best_state: dict[str, torch.Tensor] = {}
        self._losses: list[torch.Tensor] = []
        self._elapsed = 0.0  # seconds since the last validation (training and validation)
        self.seconds = 0.0  # all seconds of this run, resumed ones included

    # ------------------------------------------------------------------ RNG of the run
    def _cuda(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _seeded_rng(self) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=self._cuda()):
            torch.manual_seed(self.seed)
            return self._get_rng()

    def _get_rng(self) -> dict[str, torch.Tensor]:
        out = {"cpu": torch.get_rng_state()}
        if self._cuda():
            out["cuda"] = torch.cuda.get_rng_state(self._cuda()[0])
        return out

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """The run's global RNG stream, continued where the last call left it."""
        with torch.random.fork_rng(devices=self._cuda()):
            torch.set_rng_state(self._rng["cpu"])
            if self._cuda():
                torch.cuda.set_rng_state(self._rng["cuda"], self._cuda()[0])
            yield
            self._rng = self._get_rng()

    # ------------------------------------------------------------------ training
    def advance(self, to_step: int) -> None:
        """Train steps ``step + 1 .. to_step``, validating every ``val_every`` steps."""
        from isdm.utils.precision import autocast

        t0 = time.perf_counter()
        r, dev = self.recipe, self.device
        cuda = dev.type == "cuda"
        with self._own_rng():
            self.model.train()
            for step in range(self.step + 1, to_step + 1):
                x, y = self.train.batch(self.stream.next(), step)
                if cuda and x.device.type == "cpu":
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(dev, non_blocking=cuda), y.to(dev, non_blocking=cuda)
                if r.augment:
                    x, y = augment_batch(x, y, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                with autocast(r.precision, dev):
                    logits = self.model(normalize(x, r.encoder_weights))
                loss = self.criterion(logits.float(), y)
                loss.backward()
                self.optimizer.step()
                self._losses.append(loss.detach())
                self.step = step
                if step % self.val_every == 0:
                    self._tick(time.perf_counter() - t0)
                    self._record(self._validate())
                    self.model.train()
                    t0 = time.perf_counter()
        self._tick(time.perf_counter() - t0)

    def _tick(self, seconds: float) -> None:
        self._elapsed += seconds
        self.seconds += seconds

    def _validate(self) -> dict[str, float]:
        """The history row of a validation at the current step (changes no state of the run)."""
        t0 = time.perf_counter()
        r = self.recipe
        check_losses(self._losses, self.step,  # issue 22: a NaN loss stops the cell here
                     f"segmenter {type(self.model).__name__} (seed {self.seed})")
        scores = summarize(predict_counts(self.model, self.val, self.num_classes,
                                          self.ignore_index, self.device, r.batch_size,
                                          r.encoder_weights))
        loss = float(torch.stack(self._losses).double().mean()) if self._losses else float("nan")
        return {"step": float(self.step), "epoch": self.step * r.batch_size / len(self.train),
                "train_loss": loss, "val_miou": scores["miou"],
                "val_miou_nobg": scores["miou_nobg"],
                "seconds": self._elapsed + time.perf_counter() - t0}

    def _better(self, row: dict[str, float], best_step: int, best: float) -> bool:
        return bool(np.isfinite(row["val_miou"]) and row["val_miou"] > best) or best_step == 0

    def _record(self, row: dict[str, float]) -> None:
        self.seconds += row["seconds"] - self._elapsed
        self._losses, self._elapsed = [], 0.0
        self.history.append(row)
        if self.on_validation is not None:
            self.on_validation(row)
        if self._better(row, self.best_step, self.best_val_miou):
            self.best_step, self.best_val_miou = self.step, row["val_miou"]
            self.best_state = _weights(self.model)

    def finish(self) -> SegmenterFit:
        """The selection at the current step: the validations so far plus one after this
        step when it is not a multiple of ``val_every``. The run itself is left as it was."""
        history = list(self.history)
        best = (self.best_step, self.best_val_miou, self.best_state)
        seconds = self.seconds
        if self.step and (not history or history[-1]["step"] != self.step):
            row = self._validate()
            self.model.train()
            if self.on_validation is not None:
                self.on_validation(row)
            history.append(row)
            seconds += row["seconds"] - self._elapsed
            if self._better(row, best[0], best[1]):
                best = (self.step, row["val_miou"], _weights(self.model))
        bs = self.recipe.batch_size
        return SegmenterFit(best_step=best[0], best_val_miou=best[1], steps=self.step,
                            images_seen=self.step * bs, epochs=self.step * bs / len(self.train),
                            history=history, state_dict=copy.copy(best[2]),
                            train_seconds=seconds, val_every=self.val_every)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything the next steps depend on (see the module docstring); tensors on the CPU."""
        return {"step": self.step, "model": _weights(self.model),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                **self._stream_state(), "rng": dict(self._rng),
                "losses": [float(x) for x in self._losses], "history": list(self.history),
                "best_step": self.best_step, "best_val_miou": self.best_val_miou,
                "best_state": self.best_state, "elapsed": self._elapsed, "seconds": self.seconds,
                "val_every": self.val_every, "seed": self.seed}

    def _stream_state(self) -> dict[str, Any]:
        """The concatenation's pending indices (``pending``, as before protocols existed), or
        a protocol stream's state (``batches``)."""
        if isinstance(self.stream, BatchStream):
            return {"pending": self.stream.pending.clone()}
        return {"batches": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a run of the same cell."""
        if (state["seed"], state["val_every"]) != (self.seed, self.val_every):
            raise EvaluationError(f"a saved run of seed {state['seed']} (val_every "
                                  f"{state['val_every']}) cannot continue this run of seed "
                                  f"{self.seed} (val_every {self.val_every})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if isinstance(self.stream, BatchStream):
            self.stream.pending = state["pending"].clone()
        else:
            self.stream.load_state_dict(state["batches"])
        self._rng = dict(state["rng"])
        dtype = torch.float32
        self._losses = [torch.tensor(v, dtype=dtype, device=self.device) for v in state["losses"]]
        self.history = [dict(h) for h in state["history"]]
        self.best_step, self.best_val_miou = int(state["best_step"]), float(state["best_val_miou"])
        self.best_state = dict(state["best_state"])
        self.step, self._elapsed, self.seconds = int(state["step"]), state["elapsed"], state["seconds"]


def train_segmenter(model: torch.nn.Module, train: TensorSet | CropMix,
                    val: TensorSet | WholeSet, recipe: EvaluateConfig, *, num_classes: int,
                    ignore_index: Optional[int], seed: int, device: torch.device,
                    on_validation: OnValidation = None) -> SegmenterFit:
    """Train ``model`` for ``recipe.steps`` steps and load the selected weights into it
    (:class:`SegmenterRun` in one go)."""
    run = SegmenterRun(model, train, val, recipe, num_classes=num_classes,
                       ignore_index=ignore_index, seed=seed, device=device,
                       on_validation=on_validation)
    run.advance(recipe.steps)
    fit = run.finish()
    model.load_state_dict(fit.state_dict)
    return fit
