"""Segmenter efficiency: how much of this machine's arithmetic a downstream cell uses.

Per architecture (resnet18 from scratch, the evaluate recipe of the embedded pipeline: 64 px,
batch 8, its 5 classes, dice + CE, augmentation, fused Adam):

- ``gflop_per_step``: the FLOPs of one optimiser step (forward, loss, backward; Adam's
  element-wise update is not counted), counted by ``torch.utils.flop_counter.FlopCounterMode``;
- the bare step (:class:`isdm.evaluation.loop.SegmenterRun` without validation) in ONE process
  at all cores' threads: ``step_ms``, ``step_gflops`` and ``step_mfu`` = achieved GFLOP/s over
  the fp32 matmul GFLOP/s of all cores;
- whole cells on the pool (:mod:`isdm.evaluation.pool`, ``evaluate.workers`` / ``threads``
  auto: one worker per core, one thread each): ``workers`` real-only cells of
  :data:`CELL_STEPS` steps side by side, each with its validations every 20 steps and its
  test, timed inside the workers (``cell_s``: the slowest cell, data loading included, process
  start-up not); ``cells_gflops`` = workers x steps x GFLOP per step / ``cell_s`` and
  ``cells_mfu`` its ratio to the matmul rate (validation, test and data loading count as
  time, not as useful FLOPs); ``pool_s``: the wall time of the pool with its start-up.

``matmul_gflops``: the best of three timings of ten 1024 x 1024 fp32 ``torch.mm`` at all cores'
threads, in the same run. With CUDA the same rows run on the GPU (one worker per GPU) against
the GPU's fp32 matmul rate. bf16 autocast is measured only where it is native
(:func:`isdm.utils.cpu.native_bf16`): elsewhere it is emulated and slower, and the notes say so.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["run", "step_flops", "bare_step", "pool_cells", "pool_cells_fresh", "CELL_STEPS"]

ARCHS = ("FPN", "DeepLabV3Plus", "UnetPlusPlus")
CELL_STEPS = 200  # a cell of the bench: 10 validations (every 20) and a test, like evaluate's


def _config(steps: int, val_every: int, precision: str = "fp32") -> Any:
    from isdm.config import Config, TrackingConfig

    cfg = Config(tracking=TrackingConfig(enabled=False))
    return cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, steps=steps,
                                                    val_every=val_every, precision=precision))


def _run(cfg: Any, arch: str, data_root: Path, device: torch.device, steps: int) -> Any:
    """A real-only :class:`isdm.evaluation.cell.CellRun` validating only after ``steps``."""
    from isdm.evaluation.cell import CellRun, plan_cell
    from isdm.evaluation.loading import empty_set, load_split

    cfg = cfg.replace(evaluate=dataclasses.replace(cfg.evaluate, val_every=steps + 1))
    real = load_split(cfg, data_root, "train")
    cell = plan_cell(cfg, arch, "RALLF000", 0, real.keys, [])
    return CellRun(cfg, cell, real, empty_set(cfg), device=device)


def step_flops(arch: str, data_root: Path, device: torch.device) -> float:
    """FLOPs of one optimiser step of a cell of ``arch`` (counted, see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    run = _run(_config(1, 1), arch, data_root, device, 1)
    with FlopCounterMode(display=False) as counter:
        run.advance(1)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step(arch: str, data_root: Path, device: torch.device, warmup: int, steps: int,
              precision: str = "fp32") -> float:
    """Median seconds of one training step (batch, augmentation, forward, loss, backward,
    Adam), ``warmup`` steps untimed, in this process at its current thread count."""
    run = _run(_config(warmup + steps, 1, precision), arch, data_root, device, warmup + steps)
    run.advance(warmup)
    times = []
    for k in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        run.advance(warmup + k + 1)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def pool_cells(arch: str, data_root: Path, device: torch.device, steps: int,
               cells: Optional[int] = None) -> dict[str, Any]:
    """``cells`` (default: one per worker of the auto pool) real-only cells of ``arch`` side by
    side on the pool, into a fresh store: ``{"workers", "threads", "cell_s", "pool_s"}``."""
    from isdm.evaluation.cell import plan_cell
    from isdm.evaluation.pool import CellPool, plan_workers
    from isdm.evaluation.store import CellStore
    from isdm.evaluation.worker import Digests, load_real, make_job

    cfg = _config(steps, 20)
    workers, threads, _ = plan_workers(0, 0, device, 1 << 10)
    n = cells or workers
    digests = Digests(data_root)
    real = load_real(cfg, data_root, "train", digests.split("train"))
    with tempfile.TemporaryDirectory() as tmp:
        store = CellStore(tmp)
        jobs = [make_job(cfg, data_root, plan_cell(cfg, arch, "RALLF000", seed, real.keys, []),
                         digests=digests, synthetic=None, test=True, device_type=device.type,
                         store=store, save_every_s=None) for seed in range(n)]
        t0 = time.perf_counter()
        with CellPool.for_cells(cfg.evaluate, device, n) as pool:
            records = [o.record for o in pool.run(jobs)]
        wall = time.perf_counter() - t0
    return {"workers": pool.workers, "threads": pool.threads, "cells": n,
            "cell_s": max(r.run["seconds"] for r in records), "pool_s": wall}


def pool_cells_fresh(arch: str, data_root: Path, device: torch.device, steps: int,
                     cells: Optional[int] = None) -> dict[str, Any]:
    """:func:`pool_cells` in a fresh Python process, the parent that ``isdm evaluate`` is: this
    one has run 2-thread ops (the matmul, the bare step), and their OpenMP threads would spin
    beside the workers under OMP_WAIT_POLICY=ACTIVE (:func:`isdm.evaluation.pool.calm_parent`)."""
    args = [sys.executable, "-m", "isdm.bench.cell_bench", arch, str(data_root), str(device),
            str(steps), str(cells or 0)]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def matmul_gflops(device: torch.device, n: int = 1024, repeats: int = 20) -> float:
    """fp32 ``n x n`` matmul GFLOP/s on ``device`` (all threads on a CPU): the best of five
    timings of ``repeats`` products after a warm-up of about half a second (a short or cold
    timing underestimates the rate and so overstates every MFU)."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    t_end = time.perf_counter() + 0.5
    while time.perf_counter() < t_end:
        torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * repeats / best / 1e9


def _row(arch: str, root: Path, device: torch.device, matmul: float, quick: bool,
         pool: dict) -> dict:
    gflop = step_flops(arch, root, device) / 1e9
    step = bare_step(arch, root, device, warmup=1 if quick else 3, steps=2 if quick else 10)
    steps = pool["steps"]
    cells_gflops = pool["cells"] * steps * gflop / pool["cell_s"]
    return {"arch": arch, "gflop_per_step": gflop, "step_ms": step * 1e3,
            "step_gflops": gflop / step, "step_mfu": gflop / step / matmul,
            "workers": pool["workers"], "threads": pool["threads"], "cell_steps": steps,
            "cell_s": pool["cell_s"], "cells_gflops": cells_gflops,
            "cells_mfu": cells_gflops / matmul, "pool_s": pool["pool_s"]}


def run(quick: bool = False, device: str = "auto") -> dict:
    """The rows of the module docstring; quick: FPN and DeepLabV3Plus, 2 timed steps, 2 cells
    of 4 steps (a smoke test of the code, not a measurement)."""
    from isdm.config import SynthConfig
    from isdm.data.synth import write_synthetic_dataset
    from isdm.evaluation.pool import available_cpus
    from isdm.utils.cpu import native_bf16
    from isdm.utils.runtime import resolve_device

    dev = resolve_device(device)
    cores = available_cpus()
    archs = ARCHS[:2] if quick else ARCHS
    steps = 4 if quick else CELL_STEPS
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP team of this process may spin beside the pool's workers
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_synthetic_dataset(tmp, SynthConfig())
            pools = {arch: {**pool_cells_fresh(arch, Path(tmp), dev, steps,
                                               cells=2 if quick else None), "steps": steps}
                     for arch in archs}  # first: before this process runs any 2-thread op
            torch.set_num_threads(cores)
            matmul = matmul_gflops(dev)
            rows = [_row(arch, Path(tmp), dev, matmul, quick, pools[arch]) for arch in archs]
            bf16 = native_bf16(dev)
            if bf16:
                for row in rows:
                    row["step_ms_bf16"] = 1e3 * bare_step(row["arch"], Path(tmp), dev, 1 if quick
                                                          else 3, 2 if quick else 10, "bf16")
    finally:
        torch.set_num_threads(before)
    notes = [f"{dev}: {cores} cores; fp32 1024x1024 matmul {matmul:.1f} GFLOP/s on all of them "
             "(the MFU denominator); step_* = one process at all cores' threads, cells_* = the "
             "pool (one worker per core, one thread each), its cells' validations and test "
             "counted as time",
             "bf16 autocast: " + ("native here, step_ms_bf16 measured (use it only where its "
                                  "loss curve and validation track fp32)" if bf16 else
                                  "not native here (emulated, slower than fp32): not measured, "
                                  "keep evaluate.precision fp32")]
    if quick:
        notes.append("quick: a smoke test of the code, not a measurement")
    return {"table": rows, "notes": notes, "matmul_gflops": matmul, "cores": cores}


if __name__ == "__main__":  # pool_cells_fresh's child: ARCH ROOT DEVICE STEPS CELLS -> JSON
    from isdm.evaluation.pool import calm_parent

    _arch, _root, _device, _steps, _cells = sys.argv[1:6]
    calm_parent(0, 0, torch.device(_device))  # as evaluate's CLI does, before any torch op
    print(json.dumps(pool_cells(_arch, Path(_root), torch.device(_device), int(_steps),
                                int(_cells) or None)))
