"""Model size and cost: parameters, forward FLOPs per image and the SPADE share of them.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (2 per multiply-add,
convolutions, linear layers and attention matmuls; norms and activations are not counted), on
the ``meta`` device, so even the 652 M-parameter original costs no memory or compute.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "forward_flops", "preset_report"]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _count(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def forward_flops(model_cfg: Any, image_size: int | tuple[int, int], num_classes: int,
                  device: str = "meta") -> dict[str, float]:
    """Parameters and FLOPs of one forward pass for ONE image.

    Returns:
        ``params``; ``flops`` (forward given the segmap); ``spade_flops`` (the SPADE
        gamma/beta convs alone, i.e. ``precompute_condition``); ``spade_share`` =
        spade_flops / flops; ``cached_flops`` (forward given a precomputed condition, the cost of
        one sampling step).
    """
    from isdm.models.build import build_model

    with torch.device(device):
        model = build_model(model_cfg, image_size, num_classes).eval()
    hw = model.image_size
    x = torch.zeros(1, 3, *hw, device=device)
    t = torch.zeros(1, device=device)
    segmap = torch.zeros(1, num_classes, *hw, device=device)
    with torch.no_grad():
        total = _count(model, x, t, segmap)
        spade = _count(model.precompute_condition, segmap)
        cond = model.precompute_condition(segmap)
        cached = _count(model, x, t, cond)
    return {"params": count_parameters(model), "flops": total, "spade_flops": spade,
            "spade_share": spade / total, "cached_flops": cached}


def preset_report(num_classes: int = 5) -> list[dict[str, Any]]:
    """Params and forward GFLOPs of the ``tiny`` (32 px), ``default`` (64 px) and ``original``
    (256 px) presets: one row per preset."""
    from isdm.config import ModelConfig

    rows = []
    for name, size in (("tiny", 32), ("default", 64), ("original", 256)):
        cfg = ModelConfig(preset=name)
        r = forward_flops(cfg, size, num_classes)
        rows.append({"preset": name, "image_size": size, "num_classes": num_classes,
                     "params_M": round(r["params"] / 1e6, 3),
                     "gflops_forward": round(r["flops"] / 1e9, 3),
                     "gflops_cached": round(r["cached_flops"] / 1e9, 3),
                     "spade_share": round(r["spade_share"], 3)})
    return rows


if __name__ == "__main__":  # python -m isdm.models.flops
    for row in preset_report():
        print(row)
