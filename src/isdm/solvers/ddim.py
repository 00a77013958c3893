"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16),
with x0 clipped and eps re-derived from the clipped x0 as in guided-diffusion's ``ddim_sample``."""

from __future__ import annotations

import torch

from isdm.solvers.denoiser import (Denoiser, GeneratorArg, ModelFn, check_inputs, randn_rows,
                                   step_indices)
from isdm.solvers.schedule import Schedule

__all__ = ["sample_ddim"]


@torch.no_grad()
def sample_ddim(model_fn: ModelFn, x_T: torch.Tensor, schedule: Schedule, *,
                generator: GeneratorArg, clip_denoised: bool = True, progress: bool = False,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM through the N steps of ``schedule``.

    For respaced i = N-1 .. 0 (abar_prev = 1 at i = 0):

        x0_hat  = clip((x_t - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i), -1, 1)
        eps     = (x_t - sqrt(abar_i) x0_hat) / sqrt(1 - abar_i)        (re-derived from x0_hat)
        sigma   = eta sqrt((1 - abar_prev) / (1 - abar_i)) sqrt(1 - abar_i / abar_prev)
        x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z

    eta = 0 is deterministic (noise is drawn only when eta > 0); eta = 1 is DDPM-like with the
    fixed small variance. With an exact denoiser and eta = 0 the result is x0 exactly.

    Args: as :func:`isdm.solvers.ddpm.sample_ddpm`, plus ``eta`` >= 0. Only the eps channels of
    the model output are used. Returns x0 ``[B, 3, H, W]``.
    """
    if eta < 0:
        raise ValueError(f"sample.eta={eta}: must be >= 0 (0 = deterministic DDIM)")
    check_inputs(x_T, generator)
    denoise, spaced = Denoiser(model_fn, schedule, clip_denoised), schedule.spaced
    x = x_T
    for i in step_indices(schedule.num_steps, progress, "ddim"):
        x0, _, t = denoise(x, i)
        eps = spaced.predict_eps_from_xstart(x, t, x0)
        abar = float(spaced.alphas_cumprod[i])
        abar_prev = float(spaced.alphas_cumprod_prev[i])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x = abar_prev ** 0.5 * x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn_rows(x, generator)
    return x
