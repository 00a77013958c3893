"""Solvers of the reverse diffusion: one file per solver, one signature (as in k-diffusion).

The caller builds the steps once, ``schedule = make_schedule(trained_chain, steps, spacing)``,
and every solver is ``sample(model_fn, x_T, schedule, *, generator, clip_denoised=True,
progress=False, **opts) -> x0`` where ``model_fn(x_t, t_orig)`` gets ORIGINAL timestep indices
(int64 ``[B]``) and ``generator`` is one ``torch.Generator`` or a list with one per batch row.
Inside, :class:`Denoiser` turns ``model_fn`` into the x0 / eps predictor every solver shares.
Solvers know nothing of masks or guidance: that is :mod:`isdm.sampling.guidance`.

========  ===============================================  =======  ===============
name      algorithm                                        opts     default spacing
========  ===============================================  =======  ===============
ddpm      ancestral, learned-range variance (Ho; Nichol)   -        uniform
ddim      DDIM (Song et al. 2021)                          eta      uniform
dpmpp2m   DPM-Solver++(2M), x0 form (Lu et al. 2022)       order    logsnr
dpmpp3m   DPM-Solver++(3M), x0 form (Lu et al. 2022)       order    logsnr
unipc     UniPC-bh2 predictor-corrector (Zhao et al. 2023) order,   logsnr
                                                           corrector
========  ===============================================  =======  ===============
"""

from __future__ import annotations

from typing import Callable

from isdm.errors import ConfigError
from isdm.solvers.ddim import sample_ddim
from isdm.solvers.ddpm import sample_ddpm
from isdm.solvers.denoiser import Denoiser, Prediction
from isdm.solvers.dpmpp import sample_dpmpp2m
from isdm.solvers.dpmpp3m import sample_dpmpp3m
from isdm.solvers.schedule import SPACINGS, Schedule, logsnr_timesteps, make_schedule
from isdm.solvers.unipc import sample_unipc

__all__ = ["SAMPLERS", "DEFAULT_SPACING", "SPACINGS", "get_sampler", "resolve_spacing",
           "Schedule", "make_schedule", "logsnr_timesteps", "Denoiser", "Prediction",
           "sample_ddpm", "sample_ddim", "sample_dpmpp2m", "sample_dpmpp3m", "sample_unipc"]

SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp2m": sample_dpmpp2m,
    "dpmpp3m": sample_dpmpp3m,
    "unipc": sample_unipc,
}
# where each solver's steps sit unless the caller says otherwise (``sample.spacing: auto``)
DEFAULT_SPACING: dict[str, str] = {"ddpm": "uniform", "ddim": "uniform", "dpmpp2m": "logsnr",
                                   "dpmpp3m": "logsnr", "unipc": "logsnr"}


def get_sampler(name: str) -> Callable:
    """The solver registered as ``name`` (``sample.sampler``)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(
            f"sample.sampler={name!r} is unknown; use one of {sorted(SAMPLERS)}") from None


def resolve_spacing(name: str, spacing: str = "auto") -> str:
    """``sample.spacing``: ``"auto"`` becomes solver ``name``'s default, anything else stays."""
    get_sampler(name)
    return DEFAULT_SPACING[name] if spacing == "auto" else spacing
