"""DPM-Solver++(2M) (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", Algorithm 2) in the data-prediction (x0) form, on the
exactly respaced discrete chain."""

from __future__ import annotations

import math
from typing import Optional

import torch

from isdm.solvers.denoiser import Denoiser, GeneratorArg, ModelFn, check_inputs, step_indices
from isdm.solvers.schedule import Schedule

__all__ = ["sample_dpmpp2m"]


@torch.no_grad()
def sample_dpmpp2m(model_fn: ModelFn, x_T: torch.Tensor, schedule: Schedule, *,
                   generator: GeneratorArg, clip_denoised: bool = True, progress: bool = False,
                   order: int = 2) -> torch.Tensor:
    """Multistep second-order solver of the diffusion ODE in x0 form.

    On the respaced chain (i = N-1 .. 0), with alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i),
    lambda_i = log(alpha_i / sigma_i) and x0_i = D(x_i) the (clipped) predicted x0:

        h      = lambda_{i-1} - lambda_i,      r = h_prev / h  (h_prev of the previous step)
        D      = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i+1}    (first step: D = x0_i)
        x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (e^{-h} - 1) D

    The last step goes to sigma = 0 (lambda = inf) and is first order: x0 = x0_0. One network
    call per kept step (N calls). With an exact denoiser the result is x0 exactly, and at
    ``order=1`` this is DDIM with eta = 0.

    Meant for a ``"logsnr"`` schedule (steps uniform in lambda, as Lu et al. recommend for few
    steps): with steps uniform in t the last step to t=0 spans a large lambda gap (docs/results/benchmarks.md,
    "Solver accuracy", compares the two).

    Args: as :func:`isdm.solvers.ddpm.sample_ddpm` (``generator`` is checked but unused: the
    solver is deterministic); ``clip_denoised`` clamps each x0_i to [-1, 1] (thresholding);
    ``order`` 1 or 2. Returns x0 ``[B, 3, H, W]``.
    """
    if order not in (1, 2):
        raise ValueError(f"dpmpp2m order={order}: must be 1 or 2")
    check_inputs(x_T, generator)
    denoise = Denoiser(model_fn, schedule, clip_denoised)
    alpha, sigma, lam = schedule.alpha_sigma_lambda()
    x = x_T
    x0_prev: Optional[torch.Tensor] = None
    h_prev = 0.0
    for i in step_indices(schedule.num_steps, progress, "dpmpp2m"):
        x0 = denoise(x, i).x0
        if i == 0:
            break
        h = float(lam[i - 1] - lam[i])
        if order == 2 and x0_prev is not None:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        else:
            d = x0
        x = float(sigma[i - 1] / sigma[i]) * x - float(alpha[i - 1] * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    return x0
