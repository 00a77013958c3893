"""Training throughput of the real optimisation step, like for like with the original code.

Each row times steady-state calls of :func:`isdm.training.step.optimisation_step` (forward +
hybrid loss + backward + AdamW + EMA) on a fixed random batch, after warm-up steps that are not
timed, with the network placed as ``isdm train`` places it on CPU (channels-last). Rows:

- ``original code (quoted)``: the original ISDM code on its own config
  (:mod:`isdm.original.reference`), the figure and its source as quoted there;
- ``isdm, original config exactly``: the same config, ``use_checkpoint`` on, fp32;
- ``isdm, recommended (fp32)``: the same network with ``use_checkpoint`` off (checkpointing
  recomputes every block's forward during backward to save memory; the gradients are bit-identical,
  and on a CPU memory is rarely the limit), fp32;
- ``isdm, recommended (bf16)``: the same with bf16 autocast, where the CPU has native bf16;
- the ``default`` preset (the embedded pipeline's network) in fp32 and bf16;
- ``fp32 ceiling``: the images/s at which the step's FLOPs (3 x forward, 4 x with checkpointing)
  would run at the fp32 ``torch.mm`` rate measured in the same run: no fp32 implementation of
  this network gets past it on this CPU.

Utilisation (MFU) = 3 x forward FLOPs/image x images/s / fp32 matmul FLOP/s. The loss-curve rows
train the ``default`` preset in fp32 and bf16 from the same weights and batches: bf16 is only
recommended when its curve stays on the fp32 one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from isdm.original import reference as original
from isdm.config import DiffusionConfig, ModelConfig

__all__ = ["run", "matmul_flops", "measure_training", "loss_curves", "training_rows"]

DEFAULT = ModelConfig(preset="default")


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
    diffusion = build_diffusion(DiffusionConfig(prediction="eps"))
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


def training_rows(bf16: bool) -> list[tuple[str, ModelConfig, int, int, int, str]]:
    """``(label, model config, image size, classes, batch, precision)`` of each measured row."""
    cfg, size, classes, batch = (original.ORIGINAL_CPU, original.IMAGE_SIZE,
                                 original.NUM_CLASSES, original.BATCH)
    fast = dataclasses.replace(cfg, use_checkpoint=False)
    rows = [("isdm, original config exactly (use_checkpoint on)", cfg, size, classes, batch, "fp32"),
            ("isdm, recommended: use_checkpoint off", fast, size, classes, batch, "fp32")]
    if bf16:
        rows.append(("isdm, recommended: use_checkpoint off, bf16 autocast", fast, size, classes,
                     batch, "bf16"))
    rows.append(("isdm default preset (embedded pipeline)", DEFAULT, 64, 5, 8, "fp32"))
    if bf16:
        rows.append(("isdm default preset (embedded pipeline)", DEFAULT, 64, 5, 8, "bf16"))
    return rows


def loss_curves(steps: int, precisions: tuple[str, ...] = ("fp32", "bf16"), window: int = 20,
                batch: int = 8, seed: int = 0) -> dict[str, Any]:
    """Does bf16 autocast harm training? The ``default`` preset trained ``steps`` real steps on
    the embedded dataset once per precision, from the same weights and the same batches, t and
    noise (channels-last, as training runs on CPU).

    Returns per precision the mean hybrid loss of the last ``window`` steps and of all steps,
    and each curve's largest windowed-mean gap to the first precision's curve.
    """
    import tempfile

    from isdm.config import DataConfig, SynthConfig
    from isdm.data import SegmentationFolder
    from isdm.data.masks import one_hot
    from isdm.data.synth import write_synthetic_dataset
    from isdm.diffusion import build_diffusion
    from isdm.models import build_model, place
    from isdm.training.ema import EMA
    from isdm.training.step import optimisation_step

    data_cfg = DataConfig()
    diffusion = build_diffusion(DiffusionConfig(prediction="v"))  # as the embedded pipeline
    curves: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(tmp, SynthConfig())
        data = SegmentationFolder(tmp, "train", data_cfg, augment=False)
        items = [data[i] for i in range(len(data))]
        for precision in precisions:
            torch.manual_seed(seed)
            model = place(build_model(DEFAULT, data_cfg.image_size, data_cfg.num_classes), "cpu")
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


def run(quick: bool = False) -> dict[str, Any]:
    """The rows of the module docstring; ``quick`` (about a minute) times 2 steps per row and
    runs 10-step loss curves. bf16 rows only where :func:`isdm.utils.cpu.native_bf16`."""
    from isdm.utils.cpu import native_bf16

    warmup, steps = (1, 2) if quick else (2, 7)
    peak = matmul_flops(1024 if quick else 2048)
    peak_cpu = matmul_flops(1024 if quick else 2048, clock=time.process_time)
    bf16 = native_bf16("cpu")
    quoted = original.FIGURES["train_images_per_s"]
    rows: list[dict[str, Any]] = [{
        "config": f"original code (quoted): {original.CONFIG_TEXT}", "batch": original.BATCH,
        "precision": "fp32", "images_per_s": quoted,
        "images_per_s_overall": original.FIGURES["train_images_per_s_overall"],
        "vs_original": 1.0, "source": original.SOURCE}]
    for label, cfg, size, classes, batch, precision in training_rows(bf16):
        res = measure_training(cfg, size, classes, batch, precision, warmup, steps)
        train_flops = 3 * res["fwd_GFLOP_per_img"] * 1e9
        row = {"config": label, "image_size": size, "classes": classes, "batch": batch,
               "precision": precision, "use_checkpoint": cfg.use_checkpoint,
               "layout": "channels_last", **res,
               "mfu_vs_fp32_mm": train_flops * res["images_per_s"] / peak,
               "mfu_cpu_time": train_flops * res["images_per_cpu_s"] / peak_cpu}
        if cfg.num_channels == original.ORIGINAL_CPU.num_channels:
            row["vs_original"] = res["images_per_s"] / quoted
            row["vs_original_overall"] = (res["images_per_s"]
                                          / original.FIGURES["train_images_per_s_overall"])
        rows.append(row)
    fwd = rows[1]["fwd_GFLOP_per_img"] * 1e9
    for passes, what in ((4, "use_checkpoint on"), (3, "use_checkpoint off")):
        rows.append({"config": f"fp32 ceiling, original config, {what}: {passes} x forward FLOPs "
                               "at the fp32 torch.mm rate", "precision": "fp32",
                     "images_per_s": peak / (passes * fwd),
                     "vs_original": peak / (passes * fwd) / quoted})
    curve_steps = 10 if quick else 200
    curves = loss_curves(curve_steps, ("fp32", "bf16") if bf16 else ("fp32",),
                         window=5 if quick else 25)
    for precision in ("fp32", "bf16"):
        if precision in curves:
            c = curves[precision]
            rows.append({"config": f"default preset, loss curve over {curve_steps} steps",
                         "precision": precision, "last_window_loss": c["last_window_loss"],
                         "mean_loss": c["mean_loss"],
                         "max_window_gap_to_fp32": c["max_window_gap_to_fp32"]})
    notes = [
        f"fp32 matmul peak (torch.mm): {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} "
        f"threads ({torch.backends.cpu.get_cpu_capability()}); native bf16: {bf16}",
        "MFU = 3 x forward FLOPs/image x images/s / fp32 matmul FLOP/s; steady state "
        f"(median of {steps} steps after {warmup} warm-up steps); mfu_cpu_time uses CPU seconds",
        f"original code (quoted): {quoted} img/s on its train steps, "
        f"{original.FIGURES['train_images_per_s_overall']} overall; source: {original.SOURCE}",
        "use_checkpoint gives bit-identical gradients (tests/test_perf.py); it only trades time "
        "for memory",
    ]
    return {"table": rows, "matmul_gflops_fp32": peak / 1e9,
            "matmul_gflops_fp32_per_cpu_s": peak_cpu / 1e9, "native_bf16": bf16,
            "loss_curves": curves, "headline": _headline(rows), "notes": notes}


def _headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The like-for-like rows for the summary: original (quoted) and isdm on its network."""
    return [{"what": "training, images/s (original config, batch 4)", "isdm_setting": r["config"],
             "precision": r["precision"], "value": r["images_per_s"],
             "original": original.FIGURES["train_images_per_s"], "ratio": r["vs_original"]}
            for r in rows[1:] if "vs_original" in r and "ceiling" not in r["config"]]


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=2, default=str))
