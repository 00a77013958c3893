"""``make bench-gpu``: training images/s and sampling s/image of the ``original`` preset on one GPU.

``python -m isdm.bench.gpu_bench [--tiny] [--budget-s 420] [--out bench/gpu.json]``

For each precision (fp16 autocast with GradScaler loss scaling, bf16 autocast) on the 256 px
``original`` preset (652 M parameters, 6 classes, ``use_checkpoint`` as the preset sets it):

1. training: the batch doubles (1, 2, 4, ...) while one optimisation step fits in memory and the
   time budget; the largest that fits is timed over steady steps (forward, hybrid loss,
   backward, AdamW, EMA), after one warm-up step;
2. sampling: DPM-Solver++(2M) 20 steps with guidance s = 1.5 as ``isdm sample`` runs it on CUDA
   (SPADE maps cached, encoder once for both passes, both decoder passes batched); the batch
   grows in the same way and the largest that fits is timed on steps of the real loop.

A step that runs out of memory ends the batch search; a budget (default 7 minutes) keeps the
whole script under 8 minutes: sizes not reached are reported as skipped. ``--tiny`` runs the
``tiny`` preset at 32 px on whatever device there is (CPU included), a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Optional

import torch

__all__ = ["main", "largest_batch", "training_step_fn", "sampling_step_fn"]

PRECISIONS = ("fp16", "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error)


def largest_batch(make_step: Callable[[int], Callable[[], None]], device: torch.device,
                  deadline: float, max_batch: int,
                  n_timed: int = 0) -> tuple[Optional[int], Optional[Callable]]:
    """Double the batch from 1 while ``make_step(batch)()`` fits in memory and ``max_batch``, and
    while the next batch (assumed twice as slow) plus ``n_timed`` timed steps of it would end
    before ``deadline`` (a ``time.perf_counter()`` value): ``(largest batch, its step)``;
    ``(None, None)`` when batch 1 does not fit or no time is left.

    Batch 1 runs twice and its second step is the one timed: the first pays for the lazy CUDA
    set-up (cuBLAS / cuDNN handles, kernel loading), seconds that would make the doubling stop
    at once."""
    best: tuple[Optional[int], Optional[Callable]] = (None, None)
    batch, last_s = 1, 0.0
    while batch <= max_batch and time.perf_counter() + 2 * last_s * (1 + n_timed) < deadline:
        try:
            step = make_step(batch)
            for _ in range(2 if batch == 1 else 1):
                start = time.perf_counter()
                step()
                _sync(device)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not _oom(error):
                raise
            step = None  # the failed batch's tensors go with it
            break
        last_s = time.perf_counter() - start
        best = (batch, step)
        batch *= 2
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":  # after the except block: the failed batch's blocks are free now
        torch.cuda.empty_cache()
    return best


def training_step_fn(cfg: Any, size: int, classes: int, device: torch.device,
                     precision: str) -> Callable[[int], Callable[[], None]]:
    """``make_step(batch)``: a model, optimiser, EMA and batch on ``device``, returning one
    optimisation step (as ``isdm train`` runs it)."""
    from isdm.config import DiffusionConfig
    from isdm.data.masks import one_hot
    from isdm.diffusion import build_diffusion
    from isdm.models import build_model, place
    from isdm.training.ema import EMA
    from isdm.training.step import optimisation_step, resolve_precision

    torch.manual_seed(0)
    model = place(build_model(cfg, size, classes), device).train()
    diffusion = build_diffusion(DiffusionConfig(prediction="eps"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    precision = resolve_precision(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = EMA(model, [0.9999])

    def make_step(batch: int) -> Callable[[], None]:
        g = torch.Generator(device).manual_seed(batch)
        x0 = torch.rand(batch, 3, size, size, generator=g, device=device) * 2 - 1
        labels = torch.randint(0, classes, (batch, size, size), generator=g, device=device)
        segmap = one_hot(labels, classes, None)

        def step() -> None:
            t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g, device=device)
            noise = torch.randn(x0.shape, generator=g, device=device)
            optimisation_step(model, model, diffusion, optimizer, scaler, ema, x0, segmap, t,
                              noise, precision=precision, grad_clip=1.0)

        return step

    return make_step


def sampling_step_fn(model: torch.nn.Module, size: int, classes: int, device: torch.device,
                     precision: str) -> Callable[[int], Callable[[], None]]:
    """``make_step(batch)``: one guided DPM-Solver++(2M) step per call on a fixed ``x_t``, as
    the sampling engine builds it (conditions cached, passes chosen by device)."""
    from isdm.diffusion import GaussianDiffusion, get_betas
    from isdm.sampling.guidance import GuidedModel
    from isdm.solvers import Denoiser, make_schedule

    schedule = make_schedule(GaussianDiffusion(get_betas("linear", 1000)), 20, "logsnr")

    def make_step(batch: int) -> Callable[[], None]:
        g = torch.Generator(device).manual_seed(0)
        labels = torch.randint(0, classes, (batch, size, size), generator=g, device=device)
        segmap = torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            cond = model.precompute_condition(segmap)
            null = model.precompute_condition(torch.zeros_like(segmap[:1]))
        denoise = Denoiser(GuidedModel(model, cond, null, 1.5, precision=precision), schedule,
                           clip_denoised=True)
        x = torch.randn(batch, 3, size, size, generator=g, device=device)

        def step() -> None:
            with torch.no_grad():
                denoise(x, 10)

        return step

    return make_step


def _time(step: Callable[[], None], device: torch.device, n: int) -> float:
    """Median seconds of ``n`` calls (synchronised)."""
    times = []
    for _ in range(n):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run(tiny: bool = False, budget_s: float = 420.0, max_batch: int = 256) -> dict[str, Any]:
    """Rows ``{"what", "precision", "batch", "images_per_s" | "s_per_image"}`` per precision."""
    from isdm.config import MODEL_PRESETS, ModelConfig
    from isdm.models import build_model, count_parameters, place
    from isdm.training.step import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset, size, classes = ("tiny", 32, 2) if tiny else ("original", 256, 6)
    cfg = ModelConfig(preset=preset, **MODEL_PRESETS[preset])
    start = time.perf_counter()
    deadline = start + budget_s
    n_timed = 2 if tiny else 5
    rows: list[dict[str, Any]] = []
    # per precision: training then sampling, each with half of what is left of its share
    for k, precision in enumerate(PRECISIONS):
        share = (deadline - time.perf_counter()) / (len(PRECISIONS) - k)
        used = resolve_precision(precision, device)
        train_deadline = time.perf_counter() + share / 2
        batch, step = largest_batch(training_step_fn(cfg, size, classes, device, precision),
                                    device, train_deadline, max_batch, n_timed)
        row = {"what": f"training, {preset} preset, {size} px", "precision": used,
               "batch": batch}
        rows.append({**row, "images_per_s": batch / _time(step, device, n_timed)} if step
                    else {**row, "skipped": "batch 1 does not fit or no time left"})
        del step
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = place(build_model(cfg, size, classes), device).eval()
        params = count_parameters(model)
        batch, step = largest_batch(sampling_step_fn(model, size, classes, device, used),
                                    device, time.perf_counter() + share / 2, max_batch, n_timed)
        row = {"what": f"sampling, dpmpp2m 20 steps, s=1.5, {preset} preset, {size} px",
               "precision": used, "batch": batch}
        rows.append({**row, "s_per_image": 20 * _time(step, device, n_timed) / batch} if step
                    else {**row, "skipped": "batch 1 does not fit or no time left"})
        del model, step
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "preset": preset, "image_size": size, "params_M": params / 1e6,
            "seconds": time.perf_counter() - start, "table": rows}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isdm.bench.gpu_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny preset, 32 px, any device")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--out", default="bench/gpu.json")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("bench-gpu needs CUDA (torch.cuda.is_available() is False); --tiny runs the smoke "
              "test on CPU", file=sys.stderr)
        return 2
    from pathlib import Path

    from isdm.bench.__main__ import markdown_table
    from isdm.utils.io import atomic_write_text

    result = run(args.tiny, args.budget_s, args.max_batch)
    print(f"{result['device']}: {result['preset']} preset ({result['params_M']:.1f} M params), "
          f"{result['image_size']} px, {result['seconds']:.0f} s")
    print(markdown_table(result["table"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
