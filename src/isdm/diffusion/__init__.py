"""Gaussian diffusion: schedules (pure, float64), the process with the hybrid loss, respacing.

This package knows nothing of the network: a model is any callable ``(x_t, t) -> output``.
"""

from __future__ import annotations

from isdm.diffusion.process import GaussianDiffusion
from isdm.diffusion.respace import respace, space_timesteps
from isdm.diffusion.schedules import get_betas

__all__ = ["GaussianDiffusion", "get_betas", "respace", "space_timesteps", "build_diffusion"]


def build_diffusion(diffusion_cfg) -> GaussianDiffusion:
    """The trained chain of a :class:`isdm.config.DiffusionConfig`."""
    return GaussianDiffusion(get_betas(diffusion_cfg.noise_schedule, diffusion_cfg.diffusion_steps),
                             prediction=diffusion_cfg.prediction)
