"""Ancestral DDPM sampling with learned-range variance (Ho et al. 2020, Algorithm 2;
Nichol & Dhariwal 2021, "Improved DDPM", eq. 15 and section 4 for respaced sampling)."""

from __future__ import annotations

import torch

from isdm.solvers.denoiser import (Denoiser, GeneratorArg, ModelFn, check_inputs, randn_rows,
                                   step_indices)
from isdm.solvers.schedule import Schedule

__all__ = ["sample_ddpm"]


@torch.no_grad()
def sample_ddpm(model_fn: ModelFn, x_T: torch.Tensor, schedule: Schedule, *,
                generator: GeneratorArg, clip_denoised: bool = True,
                progress: bool = False) -> torch.Tensor:
    """Ancestral sampling through the N steps of ``schedule``.

    For respaced i = N-1 .. 0:

        x0_hat  = clip((x_t - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i), -1, 1)
        mean    = coef1_i x0_hat + coef2_i x_t                     (posterior mean, DDPM eq. 7)
        log s^2 = f log beta'_i + (1 - f) log beta~'_i, f = (v + 1)/2  (learned range, IDDPM eq. 15)
        x_{i-1} = mean + s z,  z ~ N(0, I), no noise at i = 0

    where beta'/beta~' belong to the respaced chain (exact alpha_bar of the kept steps).

    Args:
        model_fn: ``(x_t [B,3,H,W], t [B] int64 ORIGINAL indices) -> [B, 3 or 6, H, W]``
            (eps, or v when the trained chain's ``prediction == "v"``, then the variance
            interpolation in [-1, 1]; 3 channels = fixed large variance).
        x_T: initial noise ``[B, 3, H, W]`` (float32).
        schedule: the respaced steps (:func:`isdm.solvers.make_schedule`).
        generator: one ``torch.Generator`` or a list of B (row i's noise from its own).
        clip_denoised: clamp x0_hat to [-1, 1] (the original's default).
        progress: show a progress bar.
    Returns:
        x0 ``[B, 3, H, W]``.
    """
    check_inputs(x_T, generator)
    denoise, spaced = Denoiser(model_fn, schedule, clip_denoised), schedule.spaced
    x = x_T
    for i in step_indices(schedule.num_steps, progress, "ddpm"):
        x0, out, t = denoise(x, i)
        log_var = spaced.model_log_variance(out, x, t)
        mean, _, _ = spaced.q_posterior_mean_variance(x0, x, t)
        x = mean if i == 0 else mean + torch.exp(0.5 * log_var) * randn_rows(x, generator)
    return x
