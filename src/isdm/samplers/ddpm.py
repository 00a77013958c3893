"""Ancestral DDPM sampling with learned-range variance (Ho et al. 2020, Algorithm 2;
Nichol & Dhariwal 2021, "Improved DDPM", eq. 15 and section 4 for respaced sampling)."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from isdm.diffusion import GaussianDiffusion
from isdm.samplers.common import (GeneratorArg, ModelFn, call_model, check_inputs, randn_rows,
                                  respaced_chain, step_indices)

__all__ = ["sample_ddpm"]


@torch.no_grad()
def sample_ddpm(model_fn: ModelFn, x_T: torch.Tensor, diffusion: GaussianDiffusion,
                steps: Union[int, str, Sequence[int]], *, generator: GeneratorArg,
                clip_denoised: bool = True, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling through ``steps`` respaced steps of the trained chain.

    For respaced i = N-1 .. 0 (original index k_i = timestep_map[i]):

        x0_hat  = clip((x_t - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i), -1, 1)
        mean    = coef1_i x0_hat + coef2_i x_t                     (posterior mean, DDPM eq. 7)
        log s^2 = f log beta'_i + (1 - f) log beta~'_i, f = (v + 1)/2  (learned range, IDDPM eq. 15)
        x_{i-1} = mean + s z,  z ~ N(0, I), no noise at i = 0

    where beta'/beta~' belong to the respaced chain (exact alpha_bar of the kept steps).

    Args:
        model_fn: ``(x_t [B,3,H,W], t [B] int64 ORIGINAL indices) -> [B, 3 or 6, H, W]``
            (eps, or v when ``diffusion.prediction == "v"``, then the variance interpolation in
            [-1, 1]; 3 channels = fixed large variance).
        x_T: initial noise ``[B, 3, H, W]`` (float32).
        diffusion: the TRAINED chain; steps: respaced step count (or a space_timesteps spec).
        generator: one ``torch.Generator`` or a list of B (row i's noise from its own).
        clip_denoised: clamp x0_hat to [-1, 1] (the original's default).
    Returns:
        x0 ``[B, 3, H, W]``.
    """
    check_inputs(x_T, generator)
    spaced, timestep_map = respaced_chain(diffusion, steps)
    x = x_T
    for i in step_indices(spaced.num_timesteps, progress, "ddpm"):
        out = call_model(model_fn, x, timestep_map[i], diffusion)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        p = spaced.p_mean_variance(out, x, t, clip_denoised=clip_denoised)
        if i == 0:
            x = p["mean"]
        else:
            x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * randn_rows(x, generator)
    return x
