"""The epoch-based training loop with checkpoint-on-best, patience, resume and DDP.

One optimiser step (Ho et al. 2020, Alg. 1, with Nichol & Dhariwal's hybrid loss)::

    x0, segmap ~ data;  segmap <- null label with prob. drop_rate      (finetune: guidance)
    t ~ U{0..T-1};  eps ~ N(0, I);  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    loss = mean_B [ ||eps - eps_theta(x_t, t, segmap)||^2 / D + L_vb(t) ]
    AdamW step (optional grad clipping, fp16 loss scaling on CUDA);  EMA update

The epoch's loss is the mean of the training steps' own losses (no extra forward pass), or the
held-out diffusion loss with ``select_on=val_loss``. After each epoch: improved -> the state
is the new best; no improvement for ``patience`` epochs, ``max_epochs`` or ``max_steps`` ->
stop. ``best.pt`` and ``last.pt`` are written after the first epoch, then at most every
minute, and after the last epoch (:mod:`isdm.training.saves`). Before the first step the run
prints its budget (steps, images per step, epochs on this dataset) and after step 3 its
estimated duration (:mod:`isdm.training.budget`). How a run starts (folder, checkpoint, config):
:mod:`isdm.training.start`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from isdm.config import Config, TrainConfig, save_config, to_dict
from isdm.seeds import Stream, derive
from isdm.training import batches, budget, checkpoint, distributed, plots, rng
from isdm.training.ema import EMA
from isdm.training.health import LossWatch
from isdm.training.saves import Saves
from isdm.training.start import OUTPUTS, Start, check_out_dir, resolve_start
from isdm.training.step import make_model_fn, optimisation_step, resolve_precision
from isdm.utils import ownership
from isdm.utils import progress as bars
from isdm.utils.io import atomic_write_json

__all__ = ["train", "TrainResult"]


@dataclass
class TrainResult:
    """What a finished run produced (also written to ``metrics.json``)."""

    out_dir: str
    best_path: Optional[str]
    last_path: Optional[str]
    best_loss: float
    epochs: int
    steps: int
    images_per_s: float
    seconds: float
    stop_reason: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "epochs": self.epochs, "steps": self.steps,
                "images_per_s": self.images_per_s, "seconds": self.seconds,
                "stop_reason": self.stop_reason}


def _note(ctx: distributed.DistContext, text: str) -> None:
    if ctx.is_main:
        bars.note(f"[isdm] {text}")


def run_name(cfg: Config, action: str, tcfg: TrainConfig) -> str:
    from isdm.tracking import short

    size = cfg.model.preset or f"{cfg.model.num_channels}ch"
    h, w = cfg.data.size
    name = f"{action} {size} {h if h == w else f'{h}x{w}'}px c={cfg.data.num_classes}"
    return name + (f" drop={short(tcfg.drop_rate)}" if tcfg.drop_rate > 0 else "")


class _Trainer:
    """Holds the run's state; ``run()`` executes epochs until a stop rule fires."""

    def __init__(self, start: Start, data_root: Path, out_dir: Path,
                 ctx: distributed.DistContext, progress: bool) -> None:
        from isdm.diffusion import build_diffusion
        from isdm.models import build_model, count_parameters, place

        self.cfg, self.tcfg, self.action = start.cfg, start.tcfg, start.action
        self.data_root, self.out_dir, self.ctx, self.progress = data_root, out_dir, ctx, progress
        cfg, tcfg = self.cfg, self.tcfg
        self.precision = resolve_precision(tcfg.precision, ctx.device)
        if self.precision != tcfg.precision:
            _note(ctx, f"precision {tcfg.precision} needs CUDA; training in {self.precision}")
        if cfg.model.use_checkpoint and ctx.device.type == "cpu":
            _note(ctx, "model.use_checkpoint=true recomputes every block's forward during "
                       "backward to save memory: the same results, ~30 % more time per step; on a "
                       "CPU with memory to spare --set model.use_checkpoint=false is faster")
        torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
        self.model = place(build_model(cfg.model, cfg.data.image_size, cfg.data.num_classes),
                           ctx.device)
        self.num_params = count_parameters(self.model)
        self.diffusion = build_diffusion(cfg.diffusion)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tcfg.lr,
                                           weight_decay=tcfg.weight_decay)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.precision == "fp16")
        self.ema = EMA(self.model, tcfg.ema_rates, warmup=tcfg.ema_warmup)
        self.splits = batches.build_splits(cfg, tcfg, data_root)
        self.steps_per_epoch = len(batches.make_loader(self.splits.train, tcfg.batch_size, ctx,
                                                       seed=tcfg.seed, shuffle=True)[0])
        # the network that computes the held-out loss with the first EMA average's weights
        self.eval_model = copy.deepcopy(self.model).eval() if self.splits.val is not None else None
        self.step = self.epoch = self.bad_epochs = 0
        self.best_loss = math.inf
        self.saves = Saves(out_dir, self.state, tcfg.save_last)
        self.history: list[dict[str, Any]] = []
        self.init_meta: dict[str, Any] = {}
        self.watch = LossWatch(self.action, tcfg, self.precision, out_dir)
        self._restore(start)
        self.ddp = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    # ----------------------------------------------------------------------------- state
    def _restore(self, start: Start) -> None:
        """Resume: everything from the checkpoint; init: its raw + EMA weights (finetune)."""
        state, path = start.state, start.path
        if start.mode == "init":
            if start.changed:
                _note(self.ctx, f"finetune: the network comes from {path}; its sizes override the "
                                "config: " + "; ".join(start.changed))
            self.model.load_state_dict(state["model"])
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            self.init_meta = {"init_from": str(path),
                              "init_sha256": checkpoint.checkpoint_hash(path),
                              "init_epoch": state.get("epoch"), "init_step": state.get("step")}
            _note(self.ctx, f"finetuning from {path} (epoch {state.get('epoch')}, step "
                            f"{state.get('step')}, loss {state.get('best_loss')})")
        elif start.mode == "resume":
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # the knobs come from cfg, not the file
                group["lr"], group["weight_decay"] = self.tcfg.lr, self.tcfg.weight_decay
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            self.best_loss, self.bad_epochs = float(state["best_loss"]), int(state["bad_epochs"])
            self.history = list(state.get("history", []))
            self.init_meta = {k: v for k, v in state["meta"].items() if k.startswith("init_")}
            rng.restore(state["rng"])
            _note(self.ctx, f"resumed {path} at epoch {self.epoch}, step {self.step}, best "
                            f"{self.best_loss:.5g}, {self.bad_epochs} epochs without improvement")

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step, "epoch": self.epoch,
            "best_loss": self.best_loss, "bad_epochs": self.bad_epochs,
            "rng": rng.capture(), "history": self.history,
            "config": to_dict(self.cfg),
            "meta": {"image_size": self.cfg.data.image_size, "num_classes": self.cfg.data.num_classes,
                     "num_params": self.num_params, "dataset": str(self.data_root),
                     "action": self.action, "world_size": self.ctx.world_size,
                     "precision": self.precision, "torch": str(torch.__version__), **self.init_meta},
        }

    # ----------------------------------------------------------------------------- steps
    def train_step(self, batch: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
        x0, segmap, t, noise, valid = batches.step_inputs(
            batch, self.cfg, self.diffusion.num_timesteps, self.tcfg.drop_rate, gen,
            self.ctx.device)
        loss = optimisation_step(self.ddp, self.model, self.diffusion, self.optimizer, self.scaler,
                                 self.ema, x0, segmap, t, noise, precision=self.precision,
                                 grad_clip=self.tcfg.grad_clip, valid=valid)
        self.step += 1
        return loss

    @torch.no_grad()
    def val_loss(self) -> Optional[float]:
        """Held-out hybrid loss of the first EMA model, with a fixed t/noise draw every epoch."""
        if self.eval_model is None:
            return None
        self.eval_model.load_state_dict(self.ema.state())
        loader, _ = batches.make_loader(self.splits.val, self.tcfg.batch_size, self.ctx,
                                        seed=self.tcfg.seed, shuffle=False)
        gen = torch.Generator().manual_seed(derive(Stream.VAL_LOSS, self.tcfg.seed, self.ctx.rank))
        total = count = 0.0
        for batch in loader:
            x0, segmap, t, noise, valid = batches.step_inputs(
                batch, self.cfg, self.diffusion.num_timesteps, 0.0, gen, self.ctx.device)
            fn = make_model_fn(self.eval_model, segmap, self.precision)
            losses = self.diffusion.training_losses(fn, x0, t, noise, valid=valid)
            total += float(losses["loss"].sum())
            count += x0.shape[0]
        total, count = distributed.all_reduce_sum([total, count], self.ctx)
        return total / max(count, 1.0)

    # ----------------------------------------------------------------------------- epochs
    def run_epoch(self, run) -> dict[str, Any]:
        loader, sampler = batches.make_loader(self.splits.train, self.tcfg.batch_size, self.ctx,
                                              seed=self.tcfg.seed, shuffle=True,
                                              num_workers=self.cfg.runtime.num_workers)
        sampler.set_epoch(self.epoch)
        self.splits.train.set_epoch(self.epoch)
        gen = rng.seed_epoch(self.tcfg.seed, self.epoch, self.ctx.rank)
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        images = 0
        start = time.perf_counter()
        bar = bars.bar(loader, desc=f"{self.action} epoch {self.epoch + 1}/"
                           f"{self.budget.last_epoch}", enabled=self.ctx.is_main and self.progress,
                           transient=True)  # the epoch's line follows it
        for batch in bar:
            loss = self.train_step(batch, gen)
            self.watch.check(float(loss), self.step, self.epoch)
            estimate = self.timer.tick()
            if estimate:
                _note(self.ctx, estimate)
                run.set_tags(self.timer.tags())
            n = batch["image"].shape[0]
            loss_sum += loss.double() * n
            images += n
            if self.step % self.tcfg.log_every == 0 or self.step == 1:
                value = float(loss)
                rate = images * self.ctx.world_size / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.2f}")
                run.log_metrics({"train/step_loss": value}, step=self.step)
            if 0 < self.tcfg.max_steps <= self.step:
                break
        seconds = time.perf_counter() - start
        total, count = distributed.all_reduce_sum([float(loss_sum), images], self.ctx)
        if count == 0:
            raise RuntimeError("an epoch produced no batches; this is a bug in the loader set-up")
        return {"epoch": self.epoch + 1, "train_loss": total / count, "images": int(count),
                "seconds": seconds, "images_per_s": count / max(seconds, 1e-9), "step": self.step}

    def end_epoch(self, row: dict[str, Any], run) -> str:
        """Apply the checkpoint-on-best and stopping rules; return a stop reason or ''."""
        row["val_loss"] = self.val_loss()
        metric = row["val_loss"] if self.tcfg.select_on == "val_loss" else row["train_loss"]
        row["improved"] = metric < self.best_loss
        self.epoch += 1
        if row["improved"]:
            self.best_loss, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        self.history.append(row)
        reason = self.stop_reason()
        if self.ctx.is_main:
            self.saves.after_epoch(row["improved"], final=bool(reason))
            self.write_reports()
        run.log_metrics({k: v for k, v in {
            "train/epoch_loss": row["train_loss"], "val/loss": row["val_loss"],
            "train/images_per_s": row["images_per_s"], "train/best_loss": self.best_loss,
        }.items() if v is not None}, step=self.epoch)
        return reason

    def stop_reason(self) -> str:
        """Why the run must stop now ('' = go on); also checked before a resumed run starts."""
        if 0 < self.tcfg.max_steps <= self.step:
            return f"max_steps={self.tcfg.max_steps} reached"
        if 0 < self.tcfg.max_epochs <= self.epoch:
            return f"max_epochs={self.tcfg.max_epochs} reached"
        if self.tcfg.patience > 0 and self.bad_epochs >= self.tcfg.patience:
            return f"no improvement for patience={self.tcfg.patience} epochs"
        return ""

    def write_reports(self, final: bool = False) -> None:
        """loss.csv after every epoch (so a crash loses nothing); the loss.png chart, which costs
        far more to draw, once at the end."""
        plots.write_loss_csv(self.history, self.out_dir / "loss.csv")
        if final:
            plots.write_loss_png(self.history, self.out_dir / "loss.png",
                                 title=f"{run_name(self.cfg, self.action, self.tcfg)}")

    def run(self, run) -> TrainResult:
        start = time.perf_counter()
        reason = self.stop_reason()
        self.budget = budget.plan(self.tcfg, self.action, num_images=len(self.splits.train),
                                  steps_per_epoch=self.steps_per_epoch,
                                  world_size=self.ctx.world_size, step=self.step, epoch=self.epoch)
        self.timer = budget.StepTimer(self.budget)
        if not reason:
            _note(self.ctx, self.budget.line())
            run.set_tags(self.budget.tags())
        while not reason:
            row = self.run_epoch(run)
            reason = self.end_epoch(row, run)
            loss_txt = f"train {row['train_loss']:.5f}" + (
                f", val {row['val_loss']:.5f}" if row["val_loss"] is not None else "")
            _note(self.ctx, f"epoch {self.epoch}: {loss_txt}, {row['images_per_s']:.2f} img/s"
                            + (" (best)" if row["improved"] else ""))
        if self.ctx.is_main and self.history:
            self.write_reports(final=True)
        seconds = time.perf_counter() - start
        done = [r for r in self.history if "images" in r]
        images = sum(r["images"] for r in done)
        train_s = sum(r["seconds"] for r in done)
        best = self.out_dir / "best.pt"
        last = self.out_dir / "last.pt"
        _note(self.ctx, f"stopped: {reason}")
        return TrainResult(
            out_dir=str(self.out_dir), best_path=str(best) if best.exists() else None,
            last_path=str(last) if last.exists() else None, best_loss=self.best_loss,
            epochs=self.epoch, steps=self.step, images_per_s=images / max(train_s, 1e-9),
            seconds=seconds, stop_reason=reason, history=self.history)


def train(cfg: Config, data_root: str | Path, out_dir: str | Path, *, action: str = "train",
          init_from: str | Path | None = None, resume: str | Path | None = None,
          overwrite: bool = False, progress: Optional[bool] = None) -> TrainResult:
    """Train (``action="train"``, section ``cfg.train``) or finetune (``"finetune"``, section
    ``cfg.finetune``, starting from ``init_from``) an SDM on ``<data_root>/train``.

    Writes the files of :data:`isdm.training.start.OUTPUTS` into ``out_dir``: an earlier run's
    are refused unless ``resume`` or ``overwrite`` (deletes them first), any other file always
    (:mod:`isdm.utils.ownership`), and a second run on the folder fails at once. A non-finite
    or exploding loss stops the run (:mod:`.health`). Under ``torchrun`` every process calls
    this; only rank 0 writes files and the MLflow run. ``resume`` continues a run (the
    config's sizes must be the checkpoint's); ``init_from`` starts a new run from a
    checkpoint's network, whose sizes win (:mod:`isdm.training.start`). Device, loader workers
    and (unless ``progress`` is given) progress bars: ``cfg.runtime``.
    """
    if action not in ("train", "finetune"):
        raise ValueError(f"action={action!r}: use 'train' or 'finetune'")
    if action == "finetune" and init_from is None and resume is None:
        raise ValueError("finetune needs init_from=<checkpoint of `isdm train`> (or resume=...)")
    if resume is not None and overwrite:
        raise ValueError("resume continues the run in out_dir, overwrite starts over: pick one")
    data_root, out_dir = Path(data_root), Path(out_dir)
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun's rank; only rank 0 writes
    with contextlib.ExitStack() as claimed:
        if main:  # one writer per folder: a second run fails here, naming the first
            claimed.enter_context(ownership.exclusive(out_dir, action))
        output = check_out_dir(out_dir, action, resuming=resume is not None, overwrite=overwrite)
        start = resolve_start(cfg, action, init_from=init_from, resume=resume)
        ctx = distributed.setup(cfg.runtime.device)
        try:
            trainer = _Trainer(start, data_root, out_dir, ctx,
                               cfg.runtime.progress if progress is None else progress)
            del start  # the loaded checkpoint
            if ctx.is_main:
                if overwrite:
                    output.remove()
                output.record(OUTPUTS)
                save_config(trainer.cfg, out_dir / "config.json")
            return _run(trainer, ctx, data_root, out_dir, action)
        finally:
            distributed.teardown(ctx)


def _run(trainer: _Trainer, ctx: distributed.DistContext, data_root: Path, out_dir: Path,
         action: str) -> TrainResult:
    """The epochs inside the run's MLflow run; metrics.json and artifacts at the end."""
    from isdm import tracking
    from isdm.lineage import real_dataset, training_params

    cfg = trainer.cfg
    tracking_ctx = (tracking.start_run(cfg.tracking, name=run_name(cfg, action, trainer.tcfg),
                                       action=action, dataset=str(data_root),
                                       params=training_params(cfg, action))
                    if ctx.is_main else contextlib.nullcontext(tracking.NullRun()))
    with tracking_ctx as run:
        run.set_tags({"isdm.num_params": trainer.num_params, "isdm.world_size": ctx.world_size,
                      **{f"isdm.{k}": v for k, v in trainer.init_meta.items()}})
        if run.run_id:
            run.log_dataset(real_dataset(data_root, cfg.data), "training")
        result = trainer.run(run)
        if ctx.is_main:
            _finish(result, run, out_dir, cfg, action)
    return result


def _finish(result: TrainResult, run, out_dir: Path, cfg: Config, action: str) -> None:
    """metrics.json and the MLflow artifacts / checkpoint tags of a finished run; a top-level
    finetune run (not a tuning trial's) registers its ``best.pt`` as a new version of the MLflow
    model ``isdm-sdm`` when ``tracking.register_model``."""
    from isdm.utils.dvc_hash import md5_file

    atomic_write_json(out_dir / "metrics.json", result.metrics())
    if result.best_path:
        run.set_tags({"isdm.checkpoint": result.best_path,
                      "isdm.checkpoint_sha256": checkpoint.checkpoint_hash(result.best_path),
                      "isdm.checkpoint_md5": md5_file(result.best_path)})  # DVC's hash
        if action == "finetune" and cfg.tracking.register_model and run.parent_run_id is None:
            run.register_model(result.best_path, out_dir / "config.json", cfg)
    run.log_metrics({"best_loss": result.best_loss, "images_per_s": result.images_per_s,
                     "seconds": result.seconds, "epochs": result.epochs, "steps": result.steps})
    for name in ("config.json", "metrics.json", "loss.csv", "loss.png"):
        run.log_artifact(out_dir / name)
