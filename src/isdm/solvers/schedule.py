"""The steps a solver takes, built once by the CALLER (as k-diffusion's samplers take ``sigmas``).

A :class:`Schedule` is the TRAINED chain respaced exactly to N steps (improved DDPM section 4):
the respaced chain's ``alpha_bar`` are exactly the trained chain's at the kept indices, and the
network is always called with the kept ORIGINAL index ``timestep_map[i]``. Where the N steps sit
is the caller's explicit choice of ``spacing``: ``"uniform"`` in t (guided-diffusion's) or
``"logsnr"``, uniform in lambda = log(alpha / sigma) (DPM-Solver's, Lu et al. 2022 section 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from isdm.diffusion import GaussianDiffusion, respace, space_timesteps
from isdm.errors import ConfigError

__all__ = ["SPACINGS", "Schedule", "make_schedule", "logsnr_timesteps"]

SPACINGS = ("uniform", "logsnr")

Steps = Union[int, str, Sequence[int]]


@dataclass(frozen=True)
class Schedule:
    """N respaced steps of a trained chain; respaced index i = N-1 (noisiest) .. 0.

    Attributes:
        trained: the TRAINED chain (a v output is converted to eps with ITS tables at the
            original index).
        spaced: the respaced chain, ``spaced.alphas_cumprod[i] == trained.alphas_cumprod[k_i]``.
        timestep_map: int64 ``[N]``, ``k_i``: the original index the network receives at step i.
    """

    trained: GaussianDiffusion
    spaced: GaussianDiffusion
    timestep_map: np.ndarray

    @property
    def num_steps(self) -> int:
        return self.spaced.num_timesteps

    def alpha_sigma_lambda(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """float64 ``[N]`` each: alpha_i = sqrt(abar_i), sigma_i = sqrt(1 - abar_i) and
        lambda_i = log(alpha_i) - log(sigma_i) (the half log-SNR, decreasing in i)."""
        abar = self.spaced.alphas_cumprod
        alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
        return alpha, sigma, np.log(alpha) - np.log(sigma)


def logsnr_timesteps(diffusion: GaussianDiffusion, num_steps: int) -> list[int]:
    """``num_steps`` trained-chain indices (ascending, 0 and T-1 included) whose
    lambda_t = log(alpha_t / sigma_t) are as close as the chain allows to uniform in
    [lambda_{T-1}, lambda_0] (DPM-Solver's "logSNR" step schedule, Lu et al. 2022 section 3.3).

    Near t = 0 the trained indices are coarse in lambda; where two targets would pick the same
    index the later one moves to the next free index, so the result always has ``num_steps``
    distinct entries.
    """
    T = diffusion.num_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"sample.steps={num_steps}: must be in 1..{T}")
    if num_steps == 1:
        return [T - 1]
    abar = diffusion.alphas_cumprod
    lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
    targets = np.linspace(lam[0], lam[-1], num_steps)  # t ascending
    kept = [int(np.argmin(np.abs(lam - x))) for x in targets]
    for j in range(1, num_steps):  # strictly increasing, then fit under T-1
        kept[j] = max(kept[j], kept[j - 1] + 1)
    kept[-1] = T - 1
    for j in range(num_steps - 2, -1, -1):
        kept[j] = min(kept[j], kept[j + 1] - 1)
    return kept


def make_schedule(diffusion: GaussianDiffusion, steps: Steps, spacing: str) -> Schedule:
    """The trained chain ``diffusion`` respaced to ``steps``.

    Args:
        diffusion: the TRAINED chain.
        steps: an int N: N indices including 0 and T-1 placed by ``spacing`` (N = T keeps
            0..T-1 under either); or any other spec of :func:`isdm.diffusion.space_timesteps`
            (``"ddimN"``, ``"a,b,c"``, explicit indices), always used as given.
        spacing: ``"uniform"`` (evenly in t) or ``"logsnr"`` (:func:`logsnr_timesteps`).
    Raises:
        ConfigError: an unknown ``spacing`` or an int ``steps`` outside 1..T.
    """
    if spacing not in SPACINGS:
        raise ConfigError(f"sample.spacing={spacing!r}: use one of {list(SPACINGS)}")
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if not 1 <= int(steps) <= diffusion.num_timesteps:
            raise ConfigError(
                f"sample.steps={steps}: must be in 1..{diffusion.num_timesteps} (the trained "
                f"chain's diffusion_steps); a sampler can only take a subset of its steps")
        if spacing == "logsnr":
            return Schedule(diffusion, *respace(diffusion, logsnr_timesteps(diffusion, int(steps))))
    kept = space_timesteps(diffusion.num_timesteps, steps)
    return Schedule(diffusion, *respace(diffusion, kept))
