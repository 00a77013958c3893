"""torch.distributed set-up for ``torchrun``: one code path for 1 or N processes.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; without them the
run is single-process and no process group is created. Backend: nccl when each process has a GPU,
gloo on CPU. Nothing happens at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from isdm.errors import ConfigError

__all__ = ["DistContext", "setup", "teardown", "all_reduce_sum"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, files and MLflow runs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistContext:
    """Read the torchrun environment, pick the device and (if N > 1) init the process group.

    Args:
        device: ``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda``; under torchrun
            each process takes GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    if use_cuda:
        if ":" in device:
            dev = torch.device(device)
        else:
            dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistContext(rank=rank, local_rank=local, world_size=world, device=dev)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum a few floats over all processes (identity when single-process)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()

