"""Pieces every sampler shares: exact respacing to ``steps``, model calls at ORIGINAL timesteps,
per-row noise from per-row generators, and the progress bar.

A sampler receives the TRAINED chain and respaces it itself (improved DDPM section 4): the
respaced chain's ``alpha_bar`` are exactly the trained chain's at the kept indices, and the network
is always called with the kept ORIGINAL index ``timestep_map[i]``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, Union

import numpy as np
import torch

from isdm.diffusion import GaussianDiffusion, respace, space_timesteps

__all__ = ["ModelFn", "GeneratorArg", "respaced_chain", "logsnr_timesteps", "call_model",
           "randn_rows", "check_inputs", "step_indices"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# one generator for the whole batch, or one per batch row (sample i depends only on its own)
GeneratorArg = Union[torch.Generator, Sequence[torch.Generator]]


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


def respaced_chain(diffusion: GaussianDiffusion, steps: Union[int, str, Sequence[int]],
                   spacing: str = "uniform") -> tuple[GaussianDiffusion, np.ndarray]:
    """``(spaced, timestep_map)`` for ``steps``: an int N, or any spec of
    :func:`isdm.diffusion.space_timesteps` (``"ddimN"``, ``"a,b,c"``, explicit indices), which
    is always used as given.

    An int N picks N indices including 0 and T-1: evenly spaced in t (``spacing="uniform"``;
    N = T keeps 0..T-1) or uniform in log-SNR (``"logsnr"``, :func:`logsnr_timesteps`).
    """
    if spacing not in ("uniform", "logsnr"):
        raise ValueError(f"spacing={spacing!r}: use 'uniform' or 'logsnr'")
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        if not 1 <= int(steps) <= diffusion.num_timesteps:
            raise ValueError(
                f"sample.steps={steps}: must be in 1..{diffusion.num_timesteps} (the trained "
                f"chain's diffusion_steps); a sampler can only take a subset of its steps")
        if spacing == "logsnr":
            return respace(diffusion, logsnr_timesteps(diffusion, int(steps)))
    kept = space_timesteps(diffusion.num_timesteps, steps)
    return respace(diffusion, kept)


def check_inputs(x_T: torch.Tensor, generator: GeneratorArg) -> None:
    """Fail early on a wrong ``x_T`` rank or a per-row generator list of the wrong length."""
    if x_T.ndim != 4:
        raise ValueError(f"x_T must be [B, C, H, W], got shape {tuple(x_T.shape)}")
    if isinstance(generator, torch.Generator) or generator is None:
        return
    gens = list(generator)
    if len(gens) != x_T.shape[0] or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(
            f"generator must be one torch.Generator or a list of {x_T.shape[0]} generators (one "
            f"per batch row), got {len(gens)} items")


def randn_rows(like: torch.Tensor, generator: GeneratorArg) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` ``[B, ...]``.

    With one generator the whole tensor is drawn from it; with a list, row i is drawn from
    ``generator[i]`` alone, so a sample's noise does not depend on the other rows of its batch.
    """
    if generator is None:
        raise ValueError("samplers draw noise only from an explicit torch.Generator; pass one")
    if isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.cat([torch.randn((1, *like.shape[1:]), generator=g, device=like.device,
                                  dtype=like.dtype) for g in generator])


def call_model(model_fn: ModelFn, x: torch.Tensor, t_orig: int,
               diffusion: GaussianDiffusion) -> torch.Tensor:
    """``model_fn(x, t)`` with ``t`` the ORIGINAL index as int64 ``[B]``, in eps form (a v
    output is converted with the TRAINED chain ``diffusion`` at ``t``, which has the respaced
    chain's exact alpha_bar); float32 of ``x``'s dtype (solver math never runs in reduced
    precision)."""
    t = torch.full((x.shape[0],), int(t_orig), dtype=torch.long, device=x.device)
    out = model_fn(x, t)
    if out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
        raise ValueError(f"model output {tuple(out.shape)} does not match x_t {tuple(x.shape)}")
    return diffusion.eps_output(out.to(x.dtype), x, t)


def step_indices(num_steps: int, progress: bool, desc: str) -> Iterable[int]:
    """Respaced indices ``N-1, ..., 0``, wrapped in a tqdm bar when ``progress``."""
    indices = range(num_steps - 1, -1, -1)
    if not progress:
        return indices
    from tqdm.auto import tqdm

    return tqdm(indices, desc=desc, total=num_steps, leave=False)
