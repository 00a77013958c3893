"""Exact timestep respacing (improved DDPM section 4; guided-diffusion ``respace.py``).

Sampling with N < T steps uses a subset ``k_0 < k_1 < ... < k_{N-1}`` of the trained chain with
recomputed betas

    beta'_i = 1 - abar_{k_i} / abar_{k_{i-1}}      (abar_{k_{-1}} = 1)

so the respaced chain's alpha_bar are EXACTLY the trained chain's alpha_bar at the kept steps.
The network is always called with the ORIGINAL index ``timestep_map[i] = k_i``; this is what the
original tool's ``rescale_timesteps`` approximated with a rescaled schedule.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from isdm.diffusion.process import GaussianDiffusion

__all__ = ["space_timesteps", "respace"]


def _evenly(start: int, size: int, n: int) -> list[int]:
    """``n`` distinct indices in ``[start, start+size)`` spaced evenly, both ends included.

    Index i is round-half-up(i (size-1)/(n-1)) in exact integer arithmetic. n == 1 keeps the
    noisiest step of the section (``start + size - 1``): a single step at t=0 could not start
    from pure noise.
    """
    if not 1 <= n <= size:
        raise ValueError(f"cannot take {n} steps from a section of {size} steps")
    if n == 1:
        return [start + size - 1]
    return [start + (2 * i * (size - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def space_timesteps(num_timesteps: int, spec: Union[int, str, Sequence[int]]) -> list[int]:
    """Which steps of a ``num_timesteps``-step chain to keep, sorted ascending.

    Args:
        num_timesteps: T of the trained chain.
        spec: one of
            - int N (1 <= N <= T): N evenly spaced steps including 0 and T-1 (N == 1: [T-1]);
            - ``"ddimN"``: guided-diffusion's DDIM striding ``range(0, T, stride)`` with the
              integer stride that yields exactly N steps (error if none does);
            - ``"a,b,c"``: split [0, T) into len(spec) equal sections (the first ones one step
              longer when T does not divide) and take a, b, c evenly spaced steps in each;
              a single number "N" is the same as int N;
            - an explicit list of distinct indices in [0, T).
    Returns:
        list of ints ``k_0 < ... < k_{N-1}``.
    """
    T = int(num_timesteps)
    if isinstance(spec, (list, tuple, np.ndarray)):
        kept = sorted(int(k) for k in spec)
        if not kept or len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= T:
            raise ValueError(f"explicit timesteps must be distinct indices in [0, {T}): {spec}")
        return kept
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return _section_steps(T, [int(spec)])
    if not isinstance(spec, str):
        raise TypeError(f"timestep spec must be int, str or a list of ints, got {spec!r}")
    text = spec.strip()
    if text.startswith("ddim"):
        n = int(text[len("ddim"):])
        for stride in range(1, T):
            if len(range(0, T, stride)) == n:
                return list(range(0, T, stride))
        raise ValueError(
            f"timestep spec {spec!r}: no integer stride gives exactly {n} steps of {T}; "
            f"use the plain count {n} instead (evenly spaced, exact count)"
        )
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(
            f"timestep spec {spec!r}: expected an int N, 'ddimN' or comma-separated counts 'a,b,c'"
        ) from None
    return _section_steps(T, counts)


def _section_steps(T: int, counts: list[int]) -> list[int]:
    if not counts:
        raise ValueError("timestep spec is empty; give a step count such as 20")
    size_per, extra = divmod(T, len(counts))
    kept, start = [], 0
    for i, n in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= n <= size:
            raise ValueError(
                f"timestep spec: section {i} has {size} of the {T} trained steps but asks for {n}; "
                f"use 1..{size} steps per section (1..{T} in total)"
            )
        kept += _evenly(start, size, n)
        start += size
    return kept


def respace(diffusion: GaussianDiffusion,
            kept: Sequence[int]) -> tuple[GaussianDiffusion, np.ndarray]:
    """The sub-chain of ``diffusion`` through the steps ``kept``.

    Returns:
        ``(spaced, timestep_map)``: ``spaced.alphas_cumprod[i] == diffusion.alphas_cumprod[k_i]``
        exactly, and ``timestep_map`` (int64 ``[N]``) maps a respaced index i to the original
        index ``k_i`` the network must receive.
    """
    kept = space_timesteps(diffusion.num_timesteps, list(kept))
    timestep_map = np.asarray(kept, dtype=np.int64)
    spaced = GaussianDiffusion.from_alphas_cumprod(diffusion.alphas_cumprod[timestep_map],
                                                   prediction=diffusion.prediction)
    return spaced, timestep_map
