"""SPADE group normalisation (Park et al. 2019, as used by SDM, Wang et al. 2022 eq. 5):

    SPADE(x, m) = GroupNorm(x, affine=False) * (1 + gamma(m)) + beta(m)
    m' = nearest_resize(m, x.shape[-2:]),  a = ReLU(conv3x3(m' -> hidden)),  gamma, beta = conv3x3(a)

``m`` is the one-hot segmap ``[B, num_classes, H, W]`` (the null label is all zeros; gamma/beta
of zeros are NOT zero because of the conv biases, which is correct).

gamma/beta depend only on the mask, so sampling computes them once per mask:
:meth:`SPADEGroupNorm.modulation` is the mask-only half, and :class:`SpadeCondition` holds the
result of every SPADE layer of a network (built by ``SDMUNet.precompute_condition``).
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from isdm.models.fused import GroupNorm

__all__ = ["SPADEGroupNorm", "SpadeCondition", "Cond"]


class SpadeCondition:
    """Precomputed ``(gamma, beta)`` of every SPADE layer, keyed by the layer's ``key``.

    Each map is ``[B, C_layer, h_layer, w_layer]``. Batch operations used by guidance:

    - ``len(cond)`` the batch size;
    - ``cond[idx]`` selects samples (int, slice, index tensor; an int keeps the batch dim);
    - ``cond.cat(other)`` / ``SpadeCondition.concat([a, b, ...])`` joins along the batch, e.g.
      ``cond.cat(null)`` for one batched conditional + unconditional forward;
    - ``cond.expand(n)`` broadcasts a batch-1 condition (e.g. the null label) to n samples
      without copying; ``cond.to(device/dtype)``.
    """

    def __init__(self, maps: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        if not maps:
            raise ValueError("SpadeCondition needs at least one SPADE layer's maps")
        sizes = {g.shape[0] for g, _ in maps.values()}
        if len(sizes) != 1:
            raise ValueError(f"SpadeCondition maps disagree on the batch size: {sorted(sizes)}")
        self.maps = maps

    def __len__(self) -> int:
        return next(iter(self.maps.values()))[0].shape[0]

    def __repr__(self) -> str:
        return f"SpadeCondition(batch={len(self)}, layers={len(self.maps)})"

    def _apply(self, fn) -> "SpadeCondition":
        return SpadeCondition({k: (fn(g), fn(b)) for k, (g, b) in self.maps.items()})

    def __getitem__(self, idx) -> "SpadeCondition":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return self._apply(lambda x: x[idx])

    def cat(self, other: "SpadeCondition") -> "SpadeCondition":
        """``[self; other]`` along the batch dimension."""
        return SpadeCondition.concat([self, other])

    @staticmethod
    def concat(conds: list["SpadeCondition"]) -> "SpadeCondition":
        keys = conds[0].maps.keys()
        if any(c.maps.keys() != keys for c in conds):
            raise ValueError("cannot concatenate SpadeConditions of different networks")
        return SpadeCondition({
            k: (torch.cat([c.maps[k][0] for c in conds]), torch.cat([c.maps[k][1] for c in conds]))
            for k in keys
        })

    def expand(self, batch_size: int) -> "SpadeCondition":
        """Broadcast a batch-1 condition to ``batch_size`` (a view, no copy)."""
        if len(self) != 1:
            raise ValueError(f"expand needs a batch-1 condition, this one has batch {len(self)}")
        return self._apply(lambda x: x.expand(batch_size, *x.shape[1:]))

    def to(self, *args, **kwargs) -> "SpadeCondition":
        return self._apply(lambda x: x.to(*args, **kwargs))

    def detach(self) -> "SpadeCondition":
        return self._apply(lambda x: x.detach())


Cond = Union[torch.Tensor, SpadeCondition]


class SPADEGroupNorm(nn.Module):
    """``GN(x, affine=False) * (1 + gamma(m)) + beta(m)`` for features ``x`` ``[B, C, h, w]``.

    ``key`` (the layer's module name) and ``size`` (its feature-map ``(h, w)``) are set by the
    owning network; ``key`` finds the layer's maps in a :class:`SpadeCondition`.
    """

    def __init__(self, channels: int, label_channels: int, hidden: int, groups: int = 32,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps, affine=False)
        self.shared = nn.Conv2d(label_channels, hidden, 3, padding=1)
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)  # gamma and beta convs
        self.key = ""  # module name in the owning network
        self.size = (0, 0)  # feature-map (h, w), set by the owning network

    def modulation(self, segmap: torch.Tensor,
                   size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gamma, beta)`` ``[B, C, *size]`` from the one-hot segmap ``[B, num_classes, H, W]``."""
        m = F.interpolate(segmap, size=tuple(size), mode="nearest")
        gamma, beta = self.gamma_beta(F.relu(self.shared(m))).chunk(2, dim=1)
        return gamma, beta

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        if isinstance(cond, SpadeCondition):
            gamma, beta = cond.maps[self.key]
        else:
            gamma, beta = self.modulation(cond, x.shape[-2:])
        return self.norm(x) * (1 + gamma) + beta
