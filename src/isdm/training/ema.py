"""Exponential moving averages of the network weights, one copy per rate.

After every optimiser step each average is updated as (Polyak averaging, as in guided-diffusion's
``update_ema``)::

    theta_ema <- d * theta_ema + (1 - d) * theta,    d = min(rate, (1 + n) / (10 + n))

where ``n`` is the number of updates so far. The warm-up term ``(1 + n) / (10 + n)`` (off with
``warmup=False``) lets the average follow the network during the first few hundred steps; without
it a 0.9999 average of a short CPU run would still be the random initialisation. Buffers (none in
the SDM UNet, which uses GroupNorm) are copied, not averaged.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

__all__ = ["EMA"]


def rate_key(rate: float) -> str:
    """The checkpoint key of an EMA rate: ``0.9999`` -> ``"0.9999"``."""
    return repr(float(rate))


class EMA:
    """Several exponential moving averages of ``model``'s parameters (fp32, same device)."""

    def __init__(self, model: nn.Module, rates: Iterable[float], warmup: bool = True) -> None:
        self.rates = tuple(float(r) for r in rates)
        if not self.rates:
            raise ValueError("EMA needs at least one rate, e.g. train.ema_rates=[0.999]")
        self.warmup = warmup
        self.num_updates = 0
        self.shadows: dict[str, dict[str, torch.Tensor]] = {
            rate_key(r): {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                          for k, v in model.state_dict().items()}
            for r in self.rates
        }

    def decay(self, rate: float) -> float:
        """The decay ``d`` the next update uses for ``rate``."""
        if not self.warmup:
            return rate
        return min(rate, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every average towards ``model``'s current weights (call after optimizer.step())."""
        params = {n: p.detach() for n, p in model.named_parameters() if p.is_floating_point()}
        names = list(params)
        src = [params[n].float() for n in names]
        others = {n: v for n, v in model.state_dict().items() if n not in params}
        for rate in self.rates:
            shadow = self.shadows[rate_key(rate)]
            torch._foreach_lerp_([shadow[n] for n in names], src, 1.0 - self.decay(rate))
            for name, value in others.items():
                shadow[name].copy_(value)
        self.num_updates += 1

    def state(self, rate: float | None = None) -> dict[str, torch.Tensor]:
        """The averaged state_dict for ``rate`` (default: the first rate)."""
        return self.shadows[rate_key(self.rates[0] if rate is None else rate)]

    def state_dict(self) -> dict:
        return {"rates": list(self.rates), "num_updates": self.num_updates,
                "warmup": self.warmup, "shadows": self.shadows}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore averages; rates missing from ``state`` are initialised from the first one."""
        shadows = state["shadows"]
        first = next(iter(shadows.values()))
        for r in self.rates:
            src = shadows.get(rate_key(r), first)
            for name, value in self.shadows[rate_key(r)].items():
                if name not in src:
                    raise KeyError(f"EMA state lacks parameter {name!r}; checkpoint/model mismatch")
                value.copy_(src[name])
        self.num_updates = int(state.get("num_updates", 0))
