"""DPM-Solver++(3M) (Lu, Zhou, Bao, Chen, Li & Zhu 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", multistep third order, section 4 and appendix B) in
the data-prediction (x0) form, on the exactly respaced discrete chain."""

from __future__ import annotations

import math

import torch

from isdm.solvers.denoiser import Denoiser, GeneratorArg, ModelFn, check_inputs, step_indices
from isdm.solvers.schedule import Schedule

__all__ = ["sample_dpmpp3m"]


@torch.no_grad()
def sample_dpmpp3m(model_fn: ModelFn, x_T: torch.Tensor, schedule: Schedule, *,
                   generator: GeneratorArg, clip_denoised: bool = True, progress: bool = False,
                   order: int = 3) -> torch.Tensor:
    """Multistep third-order solver of the diffusion ODE in x0 form.

    On the respaced chain (i = N-1 .. 0), with alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i),
    lambda_i = log(alpha_i / sigma_i), x0_i = D(x_i) the (clipped) predicted x0 and the step
    h = lambda_{i-1} - lambda_i, the last two steps h_0 = lambda_i - lambda_{i+1} and
    h_1 = lambda_{i+1} - lambda_{i+2}, r_0 = h_0 / h, r_1 = h_1 / h:

        D1_0 = (x0_i - x0_{i+1}) / r_0,    D1_1 = (x0_{i+1} - x0_{i+2}) / r_1
        D1   = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),    D2 = (D1_0 - D1_1) / (r_0 + r_1)
        phi_1 = e^{-h} - 1,  phi_2 = phi_1 / h + 1,  phi_3 = phi_2 / h - 1/2
        x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (phi_1 x0_i - phi_2 D1 + phi_3 D2)

    (Lu et al.'s ``multistep_dpm_solver_third_update``). The first step is first order (DDIM),
    the second is DPM-Solver++(2M). The last network call at index 0 (t = 0) returns its x0
    directly, as :func:`isdm.solvers.dpmpp.sample_dpmpp2m` (the step onto index 0 ends at
    sigma_0 = sqrt(beta_0), not at sigma = 0, so Lu et al.'s lower-order final step is not needed:
    on the pipeline's network it raised the error at 10-12 steps).
    N network calls for N kept steps; with an exact denoiser the result is x0 exactly.

    Meant for a ``"logsnr"`` schedule. Args: as :func:`isdm.solvers.dpmpp.sample_dpmpp2m`, with
    ``order`` 1, 2 or 3 (1 = DDIM with eta = 0, 2 = DPM-Solver++(2M)). Returns x0
    ``[B, 3, H, W]``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"dpmpp3m order={order}: must be 1, 2 or 3")
    check_inputs(x_T, generator)
    denoise = Denoiser(model_fn, schedule, clip_denoised)
    alpha, sigma, lam = schedule.alpha_sigma_lambda()
    x = x_T
    history: list[tuple[torch.Tensor, float]] = []  # (x0_j, lambda_j) of the last steps, newest last
    for i in step_indices(schedule.num_steps, progress, "dpmpp3m"):
        x0 = denoise(x, i).x0
        if i == 0:
            break
        history = (history + [(x0, float(lam[i]))])[-3:]
        h = float(lam[i - 1] - lam[i])
        k = min(order, len(history))
        phi_1 = math.expm1(-h)
        d = phi_1 * x0
        if k >= 2:
            (x0_1, lam_1), r0 = history[-2], (float(lam[i]) - history[-2][1]) / h
            d1_0 = (x0 - x0_1) / r0
            if k == 2:
                d = d + 0.5 * phi_1 * d1_0
            else:
                x0_2, lam_2 = history[-3]
                r1 = (lam_1 - lam_2) / h
                d1_1 = (x0_1 - x0_2) / r1
                phi_2 = phi_1 / h + 1.0
                phi_3 = phi_2 / h - 0.5
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                d = d - phi_2 * d1 + phi_3 * d2
        x = float(sigma[i - 1] / sigma[i]) * x - float(alpha[i - 1]) * d
    return x0
