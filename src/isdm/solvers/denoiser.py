"""What every solver shares: the network turned into an x0 / eps predictor ONCE, per-row noise
from per-row generators, input checks and the step loop with its progress bar."""

from __future__ import annotations

import sys
from typing import Callable, Iterable, NamedTuple, Sequence, Union

import torch

from isdm.solvers.schedule import Schedule

__all__ = ["ModelFn", "GeneratorArg", "Prediction", "Denoiser", "randn_rows", "check_inputs",
           "step_indices"]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# one generator for the whole batch, or one per batch row (sample i depends only on its own)
GeneratorArg = Union[torch.Generator, Sequence[torch.Generator]]


class Prediction(NamedTuple):
    """The network's prediction at respaced step i for ``x_t`` ``[B, C, H, W]``."""

    x0: torch.Tensor  # [B, C, H, W] x0_hat (clamped to [-1, 1] when clip_denoised)
    model_out: torch.Tensor  # [B, C or 2C, H, W] eps form: eps, then the variance channels
    t: torch.Tensor  # [B] int64, i: indexes the RESPACED chain's tables


class Denoiser:
    """``model_fn`` as a predictor on ``schedule``: ``denoiser(x_t, i) -> Prediction``.

    The network gets the ORIGINAL index ``timestep_map[i]`` (int64 ``[B]``); a v output is turned
    into eps with the TRAINED chain at that index (which has the respaced chain's exact alpha_bar),
    cast to ``x_t``'s float32 (solver math never runs in reduced precision); then

        x0_hat = (x_t - sqrt(1 - abar_i) eps) / sqrt(abar_i),  clamped to [-1, 1] if clip_denoised.
    """

    def __init__(self, model_fn: ModelFn, schedule: Schedule, clip_denoised: bool) -> None:
        self.model_fn, self.schedule, self.clip_denoised = model_fn, schedule, clip_denoised

    def __call__(self, x: torch.Tensor, i: int) -> Prediction:
        t_orig = torch.full((x.shape[0],), int(self.schedule.timestep_map[i]), dtype=torch.long,
                            device=x.device)
        out = self.model_fn(x, t_orig)
        if out.shape[0] != x.shape[0] or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"model output {tuple(out.shape)} does not match x_t {tuple(x.shape)}")
        out = self.schedule.trained.eps_output(out.to(x.dtype), x, t_orig)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0 = self.schedule.spaced.predict_xstart_from_eps(x, t, out[:, : x.shape[1]])
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        return Prediction(x0, out, t)


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


def step_indices(num_steps: int, progress: bool, desc: str) -> Iterable[int]:
    """Respaced indices ``N-1, ..., 0``, wrapped in a transient tqdm bar when ``progress``
    and stderr is a terminal: elsewhere (a log) the images' bar of
    :mod:`isdm.utils.progress` reports, with plain lines (solvers import no isdm package but
    ``diffusion``, hence this one rule of that module repeated here)."""
    indices = range(num_steps - 1, -1, -1)
    if not (progress and sys.stderr.isatty()):
        return indices
    from tqdm.auto import tqdm

    return tqdm(indices, desc=desc, total=num_steps, leave=False)
