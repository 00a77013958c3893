"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16),
with x0 clipped and eps re-derived from the clipped x0 as in guided-diffusion's ``ddim_sample``."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from isdm.diffusion import GaussianDiffusion
from isdm.samplers.common import (GeneratorArg, ModelFn, call_model, check_inputs, randn_rows,
                                  respaced_chain, step_indices)

__all__ = ["sample_ddim"]


@torch.no_grad()
def sample_ddim(model_fn: ModelFn, x_T: torch.Tensor, diffusion: GaussianDiffusion,
                steps: Union[int, str, Sequence[int]], *, generator: GeneratorArg,
                clip_denoised: bool = True, progress: bool = False,
                eta: float = 0.0, spacing: str = "uniform") -> torch.Tensor:
    """DDIM through ``steps`` respaced steps of the trained chain.

    For respaced i = N-1 .. 0 (abar_prev = 1 at i = 0):

        x0_hat  = clip((x_t - sqrt(1 - abar_i) eps_hat) / sqrt(abar_i), -1, 1)
        eps     = (x_t - sqrt(abar_i) x0_hat) / sqrt(1 - abar_i)        (re-derived from x0_hat)
        sigma   = eta sqrt((1 - abar_prev) / (1 - abar_i)) sqrt(1 - abar_i / abar_prev)
        x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z

    eta = 0 is deterministic (noise is drawn only when eta > 0); eta = 1 is DDPM-like with the
    fixed small variance. With an exact denoiser and eta = 0 the result is x0 exactly.

    Args: as :func:`isdm.samplers.ddpm.sample_ddpm`, plus ``eta`` >= 0 and ``spacing`` of an
    int ``steps`` ("uniform" in t, guided-diffusion's; or "logsnr", see
    :func:`isdm.samplers.common.logsnr_timesteps`). Only the eps channels of the model output
    are used. Returns x0 ``[B, 3, H, W]``.
    """
    if eta < 0:
        raise ValueError(f"sample.eta={eta}: must be >= 0 (0 = deterministic DDIM)")
    check_inputs(x_T, generator)
    spaced, timestep_map = respaced_chain(diffusion, steps, spacing)
    x = x_T
    for i in step_indices(spaced.num_timesteps, progress, "ddim"):
        out = call_model(model_fn, x, timestep_map[i], diffusion)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0 = spaced.predict_xstart_from_eps(x, t, out[:, : x.shape[1]])
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        eps = spaced.predict_eps_from_xstart(x, t, x0)
        abar = float(spaced.alphas_cumprod[i])
        abar_prev = float(spaced.alphas_cumprod_prev[i])
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)) ** 0.5
        x = abar_prev ** 0.5 * x0 + max(1 - abar_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn_rows(x, generator)
    return x
