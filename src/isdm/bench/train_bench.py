"""Training throughput and model FLOP utilisation (MFU) of the real optimisation step.

For each configuration and precision the benchmark times steady-state calls of
:func:`isdm.training.loop.optimisation_step` (forward + hybrid loss + backward + AdamW + EMA) on a
fixed random batch, after warm-up steps that are not timed. Utilisation::

    MFU = 3 * forward_FLOPs_per_image * images_per_s / matmul_FLOP_s

(backward ~ 2x forward), where ``matmul_FLOP_s`` is a big fp32 ``torch.mm`` measured in the same
run, on the same threads. Configurations:

- ``default``: the embedded pipeline's preset (64 px, 5 classes, batch 8);
- ``original-cpu``: the original ISDM code's CPU-measured set-up: 64 px, 64 channels,
  channel_mult (1,2,3,4), 2 res blocks, attention at 32/16/8, 64 head channels, resblock_updown,
  learn_sigma, 2 classes, batch 4 (the original reached ~0.6 img/s, ~38% of matmul peak there).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from isdm.config import DiffusionConfig, ModelConfig

__all__ = ["run", "matmul_flops", "measure_training"]

ORIGINAL_CPU = ModelConfig(num_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                           attention_resolutions=(32, 16, 8), num_head_channels=64,
                           resblock_updown=True, learn_sigma=True, spade_hidden=128,
                           use_checkpoint=False)
CONFIGS = {
    "default": (ModelConfig(preset="default"), 64, 5, 8),
    "original-cpu": (ORIGINAL_CPU, 64, 2, 4),
}


def matmul_flops(n: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.float32,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Achieved FLOP/s of an ``n x n @ n x n`` matmul (2 n^3 FLOPs each), best of 3 timings.

    ``clock=time.process_time`` gives FLOPs per CPU-second of this process (all threads), which
    stays meaningful on a machine shared with other jobs.
    """
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        start = clock()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, clock() - start)
    return 2 * n**3 * repeats / best


def measure_training(model_cfg: ModelConfig, image_size: int, num_classes: int, batch: int,
                     precision: str, warmup: int, steps: int,
                     channels_last: bool = True) -> dict[str, Any]:
    """Images/s of steady-state optimisation steps (CPU), plus the model's size and FLOPs.

    ``channels_last`` places the network as training does on CPU (:func:`isdm.models.place`);
    False keeps the NCHW layout of the original code.
    """
    from isdm.data.masks import one_hot
    from isdm.diffusion import build_diffusion
    from isdm.models import build_model, count_parameters, forward_flops, place
    from isdm.training.ema import EMA
    from isdm.training.step import optimisation_step

    torch.manual_seed(0)
    model = place(build_model(model_cfg, image_size, num_classes), "cpu", channels_last)
    diffusion = build_diffusion(DiffusionConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ema = EMA(model, [0.9999])
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1
    labels = torch.randint(0, num_classes, (batch, image_size, image_size), generator=g)
    segmap = one_hot(labels, num_classes, None)
    model.train()

    def step() -> None:
        t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        optimisation_step(model, model, diffusion, optimizer, scaler, ema, x0, segmap, t, noise,
                          precision=precision, grad_clip=1.0)

    for _ in range(warmup):
        step()
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median = sorted(times)[len(times) // 2]
    cpu_median = sorted(cpu_times)[len(cpu_times) // 2]
    return {
        "params_M": count_parameters(model) / 1e6,
        "fwd_GFLOP_per_img": forward_flops(model_cfg, image_size, num_classes)["flops"] / 1e9,
        "step_s": median,
        "images_per_s": batch / median,
        "images_per_cpu_s": batch / cpu_median,
    }


def loss_curves(steps: int, precisions: tuple[str, ...] = ("fp32", "bf16"), window: int = 20,
                batch: int = 8, seed: int = 0) -> dict[str, Any]:
    """Does bf16 autocast harm training? The ``default`` preset trained ``steps`` real steps on
    the embedded dataset once per precision, from the same weights and the same batches, t and
    noise (channels-last, as training runs on CPU).

    Returns per precision the mean hybrid loss of the last ``window`` steps and of all steps,
    and each curve's largest windowed-mean gap to the first precision's curve.
    """
    import tempfile

    from isdm.config import SynthConfig, DataConfig
    from isdm.data import SegmentationFolder
    from isdm.data.masks import one_hot
    from isdm.data.synth import write_synthetic_dataset
    from isdm.diffusion import build_diffusion
    from isdm.models import build_model, place
    from isdm.training.ema import EMA
    from isdm.training.step import optimisation_step

    data_cfg = DataConfig()
    model_cfg = ModelConfig(preset="default")
    diffusion = build_diffusion(DiffusionConfig(prediction="v"))  # as the embedded pipeline
    curves: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(tmp, SynthConfig())
        data = SegmentationFolder(tmp, "train", data_cfg, augment=False)
        items = [data[i] for i in range(len(data))]
        for precision in precisions:
            torch.manual_seed(seed)
            model = place(build_model(model_cfg, data_cfg.image_size, data_cfg.num_classes), "cpu")
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler("cpu", enabled=False)
            ema = EMA(model, [0.999])
            g = torch.Generator().manual_seed(seed)
            losses = []
            start = time.perf_counter()
            for _ in range(steps):
                idx = torch.randint(0, len(items), (batch,), generator=g).tolist()
                x0 = torch.stack([items[i]["image"] for i in idx])
                segmap = one_hot(torch.stack([items[i]["label"] for i in idx]),
                                 data_cfg.num_classes, data_cfg.ignore_index)
                t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=g)
                noise = torch.randn(x0.shape, generator=g)
                loss = optimisation_step(model, model, diffusion, optimizer, scaler, ema, x0,
                                         segmap, t, noise, precision=precision, grad_clip=1.0)
                losses.append(float(loss))
            seconds[precision] = time.perf_counter() - start
            curves[precision] = losses

    def windowed(xs: list[float]) -> list[float]:
        w = min(window, len(xs))
        return [sum(xs[i:i + w]) / w for i in range(len(xs) - w + 1)]

    ref = windowed(curves[precisions[0]])
    out: dict[str, Any] = {"steps": steps, "window": window, "batch": batch}
    for precision in precisions:
        win = windowed(curves[precision])
        out[precision] = {"last_window_loss": win[-1], "mean_loss": sum(curves[precision]) / steps,
                          "max_window_gap_to_" + precisions[0]: max(abs(a - b) for a, b in
                                                                  zip(win, ref)),
                          "seconds": seconds[precision], "curve": curves[precision]}
    return out


def conv_gflops(precision: str, repeats: int = 3) -> float:
    """Achieved GFLOP/s of a 3x3 conv (128 -> 128 channels, 4 x 32 x 32) under ``precision``."""
    from isdm.utils.precision import autocast

    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(4, 128, 32, 32)
    flops = 2 * 128 * 128 * 9 * 4 * 32 * 32
    best = float("inf")
    with torch.no_grad(), autocast(precision, torch.device("cpu")):
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def run(quick: bool = False) -> dict[str, Any]:
    """Benchmark both configurations in fp32 and (where the CPU runs it natively) bf16 autocast.

    CPUs without bf16 instructions (AVX2 only) emulate bf16 convolutions dozens of times slower
    than fp32; a conv probe decides, and such rows are reported as skipped with the probe's ratio.
    """
    warmup, steps = (1, 2) if quick else (2, 7)
    peak = matmul_flops(1024 if quick else 2048)
    peak_cpu = matmul_flops(1024 if quick else 2048, clock=time.process_time)
    peak_bf16 = matmul_flops(1024, repeats=3, dtype=torch.bfloat16)
    probe = {p: conv_gflops(p) for p in ("fp32", "bf16")}
    bf16_ok = probe["bf16"] >= 0.5 * probe["fp32"]
    rows = []
    variants = [("fp32", False), ("fp32", True), ("bf16", True)]
    for name, (model_cfg, size, classes, batch) in CONFIGS.items():
        for precision, channels_last in variants:
            row: dict[str, Any] = {"config": name, "image_size": size, "classes": classes,
                                   "batch": batch, "precision": precision,
                                   "layout": "channels_last" if channels_last else "NCHW"}
            if precision == "bf16" and not bf16_ok:
                row["skipped"] = (f"no native bf16: conv probe {probe['bf16']:.2f} vs fp32 "
                                  f"{probe['fp32']:.2f} GFLOP/s")
                rows.append(row)
                continue
            res = measure_training(model_cfg, size, classes, batch, precision, warmup, steps,
                                   channels_last=channels_last)
            train_flops = 3 * res["fwd_GFLOP_per_img"] * 1e9
            rows.append({**row, **res, "mfu_vs_fp32_mm": train_flops * res["images_per_s"] / peak,
                         "mfu_cpu_time": train_flops * res["images_per_cpu_s"] / peak_cpu})
    curve_steps = 10 if quick else 200
    curves = loss_curves(curve_steps, ("fp32", "bf16") if bf16_ok else ("fp32",),
                         window=5 if quick else 25)
    for precision in ("fp32", "bf16"):
        if precision in curves:
            c = curves[precision]
            rows.append({"config": f"default, loss curve over {curve_steps} steps",
                         "precision": precision, "layout": "channels_last",
                         "last_window_loss": c["last_window_loss"], "mean_loss": c["mean_loss"],
                         "max_window_gap_to_fp32": c["max_window_gap_to_fp32"]})
    notes = [
        f"fp32 matmul peak (torch.mm): {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads "
        f"({torch.backends.cpu.get_cpu_capability()}); bf16 torch.mm: {peak_bf16 / 1e9:.1f} GFLOP/s",
        "MFU = 3 x forward FLOPs/image x images/s / fp32 matmul FLOP/s; steady state "
        f"(median of {steps} steps after {warmup} warm-up steps); mfu_cpu_time uses CPU seconds "
        "of this process for both (robust to other jobs on a shared machine)",
        "reference: the original ISDM code, original-cpu config, ~0.6 img/s (~38% MFU) fp32",
    ]
    return {"table": rows, "matmul_gflops_fp32": peak / 1e9,
            "matmul_gflops_fp32_per_cpu_s": peak_cpu / 1e9, "matmul_gflops_bf16": peak_bf16 / 1e9,
            "conv_probe_gflops": probe, "loss_curves": curves, "notes": notes}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=2))
