"""The SDM UNet: SPADE norms, blocks, the network, size/FLOP utilities and ``build_model``."""

from __future__ import annotations

from isdm.models.build import build_model, place
from isdm.models.flops import count_parameters, forward_flops, preset_report
from isdm.models.spade import SPADEGroupNorm, SpadeCondition
from isdm.models.unet import SDMUNet

__all__ = ["SDMUNet", "SPADEGroupNorm", "SpadeCondition", "build_model", "place",
           "count_parameters", "forward_flops", "preset_report"]
