"""Options shared by the commands that train downstream cells (evaluate, curate, tune):
the cell store, the worker pool, and ``evaluate --shard``."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from typing import Any, Callable, Optional

import click

from isdm.config import Config

__all__ = ["cell_options", "with_pool_flags", "parse_shard", "shard_message", "calm_parent"]


def cell_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--cell-cache DIR``, ``--workers N``, ``--threads N``."""
    f = click.option("--threads", type=click.IntRange(min=0), default=None,
                     help="Torch threads per cell (evaluate.threads; 0 = auto: 1 on CPU).")(f)
    f = click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="Cells trained side by side in processes (evaluate.workers; 0 = auto: "
                          "one per core on CPU, one per GPU on CUDA).")(f)
    f = click.option("--cell-cache", default=None, type=click.Path(file_okay=False),
                     help="The cell store shared by evaluate, curate and tune (default "
                          "$ISDM_CELL_CACHE, else ./.isdm/cells; keep it outside DVC outputs).")(f)
    return f


def with_pool_flags(cfg: Config, workers: Optional[int], threads: Optional[int]) -> Config:
    """``cfg`` with ``--workers`` / ``--threads`` (when given) in its evaluate section."""
    changes = {k: v for k, v in (("workers", workers), ("threads", threads)) if v is not None}
    return cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, **changes)) if changes else cfg


def parse_shard(ctx: click.Context, param: click.Parameter,
                value: Optional[str]) -> Optional[tuple[int, int]]:
    """``"1/4"`` -> ``(1, 4)``."""
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: use I/N, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise click.BadParameter(f"{value!r}: use I/N with 0 <= I < N, e.g. 0/2 and 1/2")
    return i, n


def _without_shard(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--shard":
            skip = True
        elif not arg.startswith("--shard="):
            out.append(arg)
    return out


def shard_message(result: dict[str, Any]) -> str:
    """What a shard did, how many cells of the whole evaluation are in the store, and the
    command that writes the report."""
    i, n = result["shard"]
    lines = [f"shard {i}/{n}: {result['shard_cells']} of {result['cells']} cells "
             f"({result['trained']} trained, {result['from_store']} already in the store "
             f"{result['store']})",
             f"{result['present']} of {result['cells']} cells are in the store"]
    command = "isdm " + shlex.join(_without_shard(sys.argv[1:]))
    if result["present"] < result["cells"]:
        lines.append(f"when every shard has finished, write the report with: {command}")
    else:
        lines.append(f"all cells are there: write the report with: {command}")
    return "\n".join(lines)


def calm_parent(cfg) -> None:
    """No spinning OpenMP threads in this process while its cell workers run (see
    :func:`isdm.evaluation.pool.calm_parent`); before the command's first torch op."""
    from isdm.evaluation.pool import calm_parent as calm
    from isdm.utils.runtime import resolve_device

    calm(cfg.evaluate.workers, cfg.evaluate.threads, resolve_device(cfg.runtime.device))
