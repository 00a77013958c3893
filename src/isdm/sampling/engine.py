"""The generating side of a sampling job: checkpoint -> model + chain -> images for a batch.

:class:`SampleEngine` turns a batch of label maps and one seed per row into generated images.
Row r's initial noise ``x_T`` and every noise draw of the sampler come from its own
``torch.Generator`` seeded with ``seeds[r]``, so a sample does not depend on the other rows of
its batch. Batches are padded to a fixed size (the last row repeated, with its own generator,
its output dropped) so every network forward has the same shape: the kernels chosen then do
not depend on how many samples were left, and a shard or a resumed run reproduces the bytes
of the full run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from isdm.config import Config, ConfigError

__all__ = ["SampleEngine", "load_engine", "resolve_config", "to_uint8"]


def to_uint8(x0: Any) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] via ``round((x + 1) / 2 * 255)``."""
    import torch

    x = ((x0.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def resolve_config(cfg: Config, ckpt_cfg: Config) -> Config:
    """The run's config with the network, chain and image size of the checkpoint.

    Raises:
        ConfigError: when the data config's ``num_classes`` differs from the checkpoint's.
    """
    if cfg.data.num_classes != ckpt_cfg.data.num_classes:
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes} but the checkpoint was trained with "
            f"{ckpt_cfg.data.num_classes} classes; use --set data.num_classes="
            f"{ckpt_cfg.data.num_classes} (and the dataset it was trained for)")
    log = logging.getLogger("isdm.sample")
    if cfg.data.image_size != ckpt_cfg.data.image_size:
        log.info("data.image_size=%s -> %s: masks are resized to the checkpoint's image size",
                 cfg.data.image_size, ckpt_cfg.data.image_size)
    for key in ("crop", "scale") if cfg.data.crop else ("crop", "resize"):  # what places masks
        ours, theirs = getattr(cfg.data, key), getattr(ckpt_cfg.data, key)
        if ours != theirs:
            log.warning("data.%s=%r but the checkpoint was trained with %r: the masks are placed "
                        "with %r", key, ours, theirs, ours)
    if cfg.data.dataset_mode != ckpt_cfg.data.dataset_mode:
        log.warning("data.dataset_mode=%r but the checkpoint was trained on %r masks; masks are "
                    "decoded as %r", cfg.data.dataset_mode, ckpt_cfg.data.dataset_mode,
                    cfg.data.dataset_mode)
    data = dataclasses.replace(cfg.data, image_size=ckpt_cfg.data.image_size)
    return cfg.replace(model=ckpt_cfg.model, diffusion=ckpt_cfg.diffusion, data=data)


class SampleEngine:
    """Generate images conditioned on label maps with classifier-free guidance.

    The solver's schedule (``sample.steps`` respaced steps of the trained chain, placed by
    ``sample.spacing``) is built once here; per batch the engine builds the guided model
    (:class:`isdm.sampling.guidance.GuidedModel`), the generators and ``x_T``.

    Args:
        model: the SDM UNet (``forward(x_t, t, cond)``, ``precompute_condition(segmap)``).
        diffusion: the TRAINED chain (:class:`isdm.diffusion.GaussianDiffusion`).
        cfg: the resolved config (sample.sampler / steps / spacing / eta / s / precision /
            clip_denoised, data.num_classes / ignore_index).
        device: torch device.
        batch_size: rows per forward; smaller batches are padded to it.
    """

    def __init__(self, model: Any, diffusion: Any, cfg: Config, device: Any, batch_size: int) -> None:
        from isdm.solvers import get_sampler, make_schedule, resolve_spacing

        self.model, self.cfg, self.device = model, cfg, device
        self.batch_size = batch_size
        sample_cfg = cfg.sample
        self.sampler = get_sampler(sample_cfg.sampler)
        self.schedule = make_schedule(diffusion, sample_cfg.steps,
                                      resolve_spacing(sample_cfg.sampler, sample_cfg.spacing))

    def __call__(self, labels: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """labels uint8 [B, H, W] class ids, ``seeds`` B ints -> uint8 [B, H, W, 3] samples."""
        import torch

        from isdm.data.masks import null_label, one_hot
        from isdm.sampling.guidance import GuidedModel

        n = len(seeds)
        pad = max(self.batch_size - n, 0)
        labels = np.concatenate([labels, np.repeat(labels[-1:], pad, 0)]) if pad else labels
        seeds = list(seeds) + [seeds[-1]] * pad
        sample_cfg = self.cfg.sample
        with torch.no_grad():
            y = torch.from_numpy(np.ascontiguousarray(labels)).long().to(self.device)
            segmap = one_hot(y, self.cfg.data.num_classes, self.cfg.data.ignore_index)
            # SPADE maps once per batch (and once for the null label, broadcast over rows)
            cond = self.model.precompute_condition(segmap)
            null = (self.model.precompute_condition(null_label(segmap[:1]))
                    if sample_cfg.s != 1 else None)
            model_fn = GuidedModel(self.model, cond, null, sample_cfg.s, batch_passes="auto",
                                   precision=sample_cfg.precision)
            gens = [torch.Generator(self.device).manual_seed(int(sd)) for sd in seeds]
            h, w = labels.shape[1:]
            x_T = torch.cat([torch.randn((1, 3, h, w), generator=g, device=self.device)
                             for g in gens])
            opts = {"eta": sample_cfg.eta} if sample_cfg.sampler == "ddim" else {}
            x0 = self.sampler(model_fn, x_T, self.schedule, generator=gens,
                              clip_denoised=sample_cfg.clip_denoised, progress=False, **opts)
        if not bool(torch.isfinite(x0[:n]).all()):
            from isdm.errors import NumericalError

            raise NumericalError(
                f"sampling produced NaN / inf pixels (sample seeds {list(seeds)[:4]}...), which "
                f"would be written as black images; nothing of this batch was written. With "
                f"sample.precision={sample_cfg.precision} try fp32; otherwise the checkpoint's "
                "network is unstable at sample.s / sample.steps: try other values")
        return to_uint8(x0[:n])


def check_guidance(sample_cfg: Any, meta: dict, checkpoint: str | Path) -> None:
    """Raises ConfigError when ``sample.s`` != 1 needs the null label but the checkpoint was
    never trained with ``drop_rate`` > 0 (``meta["drop_rate"]``), unless
    ``sample.guidance_without_null_label``."""
    from isdm.errors import ConfigError

    s, drop = sample_cfg.s, meta.get("drop_rate") or 0.0
    if s == 1 or drop > 0 or sample_cfg.guidance_without_null_label:
        return
    raise ConfigError(
        f"sample.s={s:g} guides with the null label (eps = eps_null + s (eps_mask - eps_null)), "
        f"but checkpoint {checkpoint} was never trained with it (`isdm "
        f"{meta.get('action', 'train')}` with drop_rate 0), so its null-label prediction is "
        "meaningless. Finetune it first: `isdm finetune --init "
        f"{checkpoint} --out models/sdm_ft` (finetune.drop_rate 0.2), then sample from "
        "models/sdm_ft/best.pt; or sample without guidance: --set sample.s=1; or, knowingly, "
        "--set sample.guidance_without_null_label=true")


def load_engine(cfg: Config, checkpoint: str | Path, device: Any) -> tuple[SampleEngine, Config, dict]:
    """Load the checkpoint's EMA weights and build the engine.

    Returns:
        ``(engine, resolved_cfg, meta)`` with the checkpoint's meta dict plus ``drop_rate``: the
        mask drop rate it was trained with (its finetune section's after ``isdm finetune``).
    """
    from isdm.diffusion import build_diffusion
    from isdm.training.checkpoint import load_model

    model, ckpt_cfg, meta = load_model(checkpoint, ema_rate=None, device=device)
    trained = ckpt_cfg.finetune if meta.get("action") == "finetune" else ckpt_cfg.train
    meta = {**meta, "drop_rate": trained.drop_rate}
    check_guidance(cfg.sample, meta, checkpoint)
    resolved = resolve_config(cfg, ckpt_cfg)
    diffusion = build_diffusion(resolved.diffusion)
    return SampleEngine(model, diffusion, resolved, device, cfg.sample.batch_size), resolved, meta
