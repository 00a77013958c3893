"""UniPC (Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", Algorithms 1-3, B(h) = e^h - 1 ("bh2")) in the data-prediction
(x0) form, on the exactly respaced discrete chain."""

from __future__ import annotations

import math

import torch

from isdm.solvers.denoiser import Denoiser, GeneratorArg, ModelFn, check_inputs, step_indices
from isdm.solvers.schedule import Schedule

__all__ = ["sample_unipc", "unipc_coefficients"]


def unipc_coefficients(h: float, rks: list[float]) -> list[float]:
    """The weights ``a_m`` of the differences ``D_m`` in one UniP / UniC update (bh2).

    With ``hh = -h`` (x0 form), ``B = e^{hh} - 1``, ``phi_1 = e^{hh} - 1`` and the recursion
    ``phi_{k+1} = phi_k / hh - 1/k!`` started at ``phi_2 = phi_1 / hh - 1``, the order-p system
    is ``R a = b`` with ``R[k][m] = r_m^k`` (k = 0..p-1, r_p = 1 for the corrector's new point)
    and ``b_k = phi_{k+2} (k + 1)! / B``. ``rks`` are the ratios r_m = (lambda_m - lambda_i) / h
    of the earlier points (the corrector also gets r = 1). Order 1 of the corrector and order 2
    of the predictor have the closed-form weight 1/2 (Zhao et al., eq. 13).
    """
    hh = -h
    b_h = math.expm1(hh)
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1
    b = []
    for k in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    n = len(rks)
    if n == 1:
        return [0.5]
    r = torch.tensor([[rk ** k for rk in rks] for k in range(n)], dtype=torch.float64)
    return torch.linalg.solve(r, torch.tensor(b[:n], dtype=torch.float64)).tolist()


@torch.no_grad()
def sample_unipc(model_fn: ModelFn, x_T: torch.Tensor, schedule: Schedule, *,
                 generator: GeneratorArg, clip_denoised: bool = True, progress: bool = False,
                 order: int = 2, corrector: bool = True) -> torch.Tensor:
    """UniPC-p multistep predictor with the UniC corrector, in x0 form (one network call per
    kept step: the corrector reuses the call the next predictor needs anyway).

    With alpha, sigma, lambda as in :func:`isdm.solvers.dpmpp.sample_dpmpp2m`, x0_j = D(x_j) and
    the step from point s (index i) to t (index i - 1), h = lambda_t - lambda_s, phi_1 = e^{-h} - 1,
    B = e^{-h} - 1, and the divided differences D_m = (x0_{s_m} - x0_s) / r_m of the earlier
    points s_m (r_m = (lambda_{s_m} - lambda_s) / h):

        predictor  x_t  = (sigma_t / sigma_s) x_s - alpha_t phi_1 x0_s - alpha_t B sum_m a_m D_m
        corrector  x_t^c = (sigma_t / sigma_s) x_s - alpha_t phi_1 x0_s
                           - alpha_t B (sum_m a^c_m D_m + a^c_p (x0_t - x0_s))

    with the weights of :func:`unipc_coefficients`; x0_t = D(x_t) is evaluated at the PREDICTED
    x_t and kept for the later differences, the corrected x_t^c is where the next step starts.
    The predictor's order grows 1, 2, ... up to ``order`` over the first steps; the corrector
    raises the accuracy by one order. The last network call at index 0 (t = 0) returns its x0
    directly (as the other solvers); with an exact denoiser the result is x0 exactly.

    Meant for a ``"logsnr"`` schedule. Args: as :func:`isdm.solvers.dpmpp.sample_dpmpp2m`, with
    ``order`` 1..3 of the predictor and ``corrector`` False for the plain UniP predictor.
    Returns x0 ``[B, 3, H, W]``.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order={order}: must be 1, 2 or 3")
    check_inputs(x_T, generator)
    denoise = Denoiser(model_fn, schedule, clip_denoised)
    alpha, sigma, lam = schedule.alpha_sigma_lambda()
    x = x_T
    points: list[tuple[torch.Tensor, float]] = []  # (x0_j, lambda_j), newest last
    x_prev = None  # x_s of the previous step, for the corrector
    for i in step_indices(schedule.num_steps, progress, "unipc"):
        x0 = denoise(x, i).x0
        if i == 0:
            break
        if corrector and x_prev is not None:  # correct the step that led to index i
            x = _update(x_prev, points, i + 1, i, x0, alpha, sigma, lam, len(points))
        points = (points + [(x0, float(lam[i]))])[-order:]
        x_prev = x
        x = _update(x, points, i, i - 1, None, alpha, sigma, lam, len(points))
    return x0


def _update(x_s: torch.Tensor, points: list[tuple[torch.Tensor, float]], s: int, t: int,
            x0_t, alpha, sigma, lam, order: int) -> torch.Tensor:
    """One UniP step (``x0_t`` None) or UniC step (``x0_t`` = D(predicted x_t)) from index s to
    t; ``points[-1]`` is (x0_s, lambda_s), the ones before it are the earlier points used."""
    x0_s, lam_s = points[-1]
    h = float(lam[t]) - lam_s
    diffs, rks = [], []
    for x0_m, lam_m in points[-order:-1][::-1]:
        rk = (lam_m - lam_s) / h
        rks.append(rk)
        diffs.append((x0_m - x0_s) / rk)
    phi_1 = math.expm1(-h)
    x_t = float(sigma[t] / sigma[s]) * x_s - float(alpha[t] * phi_1) * x0_s
    if x0_t is not None:
        diffs.append(x0_t - x0_s)
        rks.append(1.0)
    if not diffs:
        return x_t
    weights = unipc_coefficients(h, rks)
    res = sum(w * d for w, d in zip(weights, diffs))
    return x_t - float(alpha[t] * math.expm1(-h)) * res
