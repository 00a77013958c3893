"""Noise schedules: pure functions returning float64 ``betas`` of shape ``[T]``.

``linear`` (Ho et al. 2020, scaled as in improved DDPM so that any ``T`` spans the same range):
    beta_t = linspace(1e-4 * 1000/T, 0.02 * 1000/T, T)
``cosine`` (Nichol & Dhariwal 2021, eq. 17):
    alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),  s = 0.008
    beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["get_betas", "linear_betas", "cosine_betas", "SCHEDULES"]


def linear_betas(num_steps: int) -> np.ndarray:
    """Linear schedule; ``[T]`` float64 from ``1e-4 * 1000/T`` to ``0.02 * 1000/T``.

    Raises:
        ValueError: for T <= 20, where the last beta reaches 1 (alpha_bar_T = 0, so x0 cannot
            be predicted from x_T).
    """
    if num_steps <= 20:
        raise ValueError(f"the linear schedule needs more than 20 steps (T={num_steps} makes "
                         f"beta_T = 0.02 * 1000 / T >= 1); use more steps or 'cosine'")
    scale = 1000.0 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999, s: float = 0.008) -> np.ndarray:
    """Cosine schedule; ``[T]`` float64 with betas clipped at ``max_beta``."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return np.asarray(betas, dtype=np.float64)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def get_betas(name: str, num_steps: int) -> np.ndarray:
    """``betas`` ``[num_steps]`` float64 for the schedule ``name`` (``linear`` or ``cosine``)."""
    if name not in SCHEDULES:
        raise ValueError(
            f"diffusion.noise_schedule={name!r} is unknown; use one of {sorted(SCHEDULES)}"
        )
    if num_steps < 1:
        raise ValueError(f"diffusion.diffusion_steps={num_steps}: need at least 1 step")
    return SCHEDULES[name](num_steps)
