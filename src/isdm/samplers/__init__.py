"""Samplers: one file per sampler, one signature (as in k-diffusion), guidance as a model wrapper.

Every sampler is ``sample(model_fn, x_T, diffusion, steps, *, generator, clip_denoised=True,
progress=False, **opts) -> x0`` where ``model_fn(x_t, t_orig)`` gets ORIGINAL timestep indices
(int64 ``[B]``), ``diffusion`` is the TRAINED chain (the sampler respaces it exactly to ``steps``)
and ``generator`` is one ``torch.Generator`` or a list with one per batch row.

========  ===============================================  ===============
name      algorithm                                        opts
========  ===============================================  ===============
ddpm      ancestral, learned-range variance (Ho; Nichol)   -
ddim      DDIM (Song et al. 2021)                          eta, spacing
dpmpp2m   DPM-Solver++(2M), x0 form (Lu et al. 2022)       order, spacing
========  ===============================================  ===============

An int ``steps`` keeps steps evenly spaced in t (``spacing="uniform"``, the default of ddpm and
ddim) or uniform in log-SNR (``"logsnr"``, the default of dpmpp2m); strings such as ``"ddim50"``
or ``"250,100,50"`` and explicit index lists are used as given.
"""

from __future__ import annotations

from typing import Callable

from isdm.errors import ConfigError
from isdm.samplers.ddim import sample_ddim
from isdm.samplers.ddpm import sample_ddpm
from isdm.samplers.dpmpp import sample_dpmpp2m
from isdm.samplers.guidance import GuidedModel

__all__ = ["SAMPLERS", "get_sampler", "GuidedModel", "sample_ddpm", "sample_ddim",
           "sample_dpmpp2m"]

SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp2m": sample_dpmpp2m,
}


def get_sampler(name: str) -> Callable:
    """The sampler function registered as ``name`` (``sample.sampler``)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"sample.sampler={name!r} is unknown; use one of {sorted(SAMPLERS)}") from None
