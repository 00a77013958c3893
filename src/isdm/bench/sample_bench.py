"""Sampling speed and solver accuracy.

Speed, on ONE model of the original ISDM code's CPU configuration (64 px, 64 channels,
channel_mult (1,2,3,4), 2 res blocks, attention at 32/16/8, 64 head channels, resblock_updown,
learn_sigma, 2 classes; random weights, guidance s = 1.5), seconds per image for

- (a) the original recipe: 300 respaced DDPM steps, conditional and unconditional forwards run
  separately, SPADE recomputed from the segmap at every forward, fp32. Steps are identical in
  cost, so ``a_steps_timed`` steps of the real 300-step loop are timed and extrapolated;
- (b) DPM-Solver++(2M) at 10, 20 and 25 steps with SPADE cached once per mask, the encoder run
  once for both guidance passes, the channels-last layout, and the fastest of batched / separate
  decoder passes and of fp32 / bf16 autocast (bf16 only where the CPU runs it natively), each
  measured on timed steps of the real loop; 10/20/25 are then run end to end in the best set-up
  (``end_to_end``), else extrapolated. Rows for each speed-up alone show where the time goes.

The ratio (a) / (b @ 20) is measured in the same run. Absolute times on a shared 2-core machine
are noisy; the ratio is the number to read.

Accuracy: RMSE of each sampler's x0 against a ``reference_steps``-step DDIM eta=0 solution from
the same x_T and mask, on a trained checkpoint (``$ISDM_BENCH_CHECKPOINT`` or
``models/sdm_ft/best.pt``, the guidance-finetuned pipeline model) if one exists, else on a
random model of ``accuracy_preset`` (noted in the output); and, exactly, on Gaussian data whose
probability-flow ODE has a closed-form solution.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from isdm.config import MODEL_PRESETS, ModelConfig

__all__ = ["run", "ORIGINAL_CPU", "time_sampler_steps", "binary_mask", "randomize_zero_init"]

ORIGINAL_CPU = ModelConfig(num_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
                           attention_resolutions=(32, 16, 8), num_head_channels=64,
                           resblock_updown=True, learn_sigma=True, spade_hidden=128,
                           use_checkpoint=False)
GUIDANCE_S = 1.5


class _Stop(Exception):
    """Raised by :class:`_StopAfter` to end a timed sampling loop early."""


class _StopAfter:
    """model_fn wrapper that stops the loop after ``n`` calls; ``timed_s`` is the time from the
    end of the first (warm-up) call to the start of call ``n + 1``: ``n - 1`` whole steps, solver
    work included."""

    def __init__(self, model_fn: Callable, n: int) -> None:
        self.model_fn, self.n, self.calls = model_fn, n, 0
        self.first_end = self.last_start = 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        now = time.perf_counter()
        if self.calls == self.n:
            self.last_start = now
            raise _Stop
        out = self.model_fn(x, t)
        self.calls += 1
        if self.calls == 1:
            self.first_end = time.perf_counter()
        return out

    @property
    def timed_s(self) -> float:
        return max(self.last_start - self.first_end, 0.0)


def time_sampler_steps(sampler: Callable, model_fn: Callable, x_T: torch.Tensor, schedule: Any,
                       n_timed: int, **opts: Any) -> float:
    """Seconds per step of ``sampler`` on ``schedule`` (built beforehand, so not timed), from its
    first ``n_timed`` + 1 steps (the first is a warm-up and not counted), solver work included."""
    stopper = _StopAfter(model_fn, n_timed + 1)
    try:
        sampler(stopper, x_T, schedule, generator=torch.Generator().manual_seed(0), **opts)
    except _Stop:
        pass
    return stopper.timed_s / max(stopper.calls - 1, 1)


def binary_mask(batch: int, size: int) -> torch.Tensor:
    """A one-hot ``[batch, 2, size, size]`` segmap: background with a diagonal crack band and a
    round pit (deterministic)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    crack = (yy - xx).abs() < max(size // 16, 1)
    pit = (yy - size // 4) ** 2 + (xx - 3 * size // 4) ** 2 < (size // 8) ** 2
    labels = (crack | pit).long().expand(batch, size, size)
    return torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()


def randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised convs (residual outputs, head) PyTorch's default random init,
    so an untrained model's eps depends on x_t, t and the mask (for accuracy runs)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.detach().abs().any():
            m.reset_parameters()
    return model


@dataclass(frozen=True)
class SetUp:
    """One way to run the guided network during sampling."""

    precision: str  # "fp32" | "bf16"
    batched: bool  # conditional + unconditional decoders in one 2B-row pass
    channels_last: bool = True
    share_encoder: bool = True

    def label(self) -> str:
        return (f"{self.precision}, {'channels-last' if self.channels_last else 'NCHW'}, "
                f"{'shared encoder, ' if self.share_encoder else ''}"
                f"{'batched' if self.batched else 'separate'} passes")


def _bf16_is_native(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any,
                    null: Any, fp32_s: float) -> tuple[bool, float]:
    """bf16 autocast is emulated (dozens of times slower) on CPUs without bf16 instructions:
    time one guided step before timing the sampler loop with it."""
    from isdm.sampling.guidance import GuidedModel

    fn = GuidedModel(model, cond, null, GUIDANCE_S, batch_passes=False, precision="bf16")
    fn(x, t)  # warm-up: oneDNN builds its bf16 kernels on first use
    start = time.perf_counter()
    fn(x, t)
    probe = time.perf_counter() - start
    return probe < 1.5 * fp32_s, probe


def _speed(quick: bool, batch: int, end_to_end: bool, n_timed: Optional[int],
           bf16: bool) -> tuple[list[dict], dict, list[str]]:
    import copy

    from isdm.diffusion import GaussianDiffusion, get_betas
    from isdm.models import build_model, forward_flops, place
    from isdm.sampling.guidance import GuidedModel
    from isdm.solvers import get_sampler, make_schedule

    size, cfg = (32, ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])) if quick else \
        (64, ORIGINAL_CPU)
    n_timed = n_timed or (1 if quick else 2)
    nchw = randomize_zero_init(build_model(cfg, size, 2).eval())
    nhwc = place(copy.deepcopy(nchw), "cpu", channels_last=True)
    chain = GaussianDiffusion(get_betas("linear", 1000))
    segmap = binary_mask(batch, size)
    null = torch.zeros_like(segmap)
    x_T = torch.randn((batch, 3, size, size), generator=torch.Generator().manual_seed(0))
    flops = forward_flops(cfg, size, 2)
    dpmpp = get_sampler("dpmpp2m")
    dpmpp_20 = make_schedule(chain, 20, "logsnr")
    rows, notes = [], []
    with torch.no_grad():
        # (a) the original recipe: full NCHW forwards, SPADE from the segmap every time
        orig_fn = GuidedModel(nchw, segmap, null, GUIDANCE_S, batch_passes=False,
                              share_encoder=False)
        a_step = time_sampler_steps(get_sampler("ddpm"), orig_fn, x_T,
                                    make_schedule(chain, 300, "uniform"), n_timed)
        a_total = 300 * a_step / batch
        rows.append({"recipe": "(a) original: ddpm 300, 2 full forwards, no SPADE cache, fp32, "
                               "NCHW", "steps": 300, "s_per_step": a_step, "s_per_image": a_total,
                     "how": f"{n_timed} steps timed x 300", "speedup": 1.0})

        # (b) set-ups, each timed on steps of the real dpmpp2m loop; SPADE cached in all
        def conds(model):
            return model.precompute_condition(segmap), model.precompute_condition(null)

        def guided(setup: SetUp) -> GuidedModel:
            model = nhwc if setup.channels_last else nchw
            return GuidedModel(model, *conds(model), GUIDANCE_S, batch_passes=setup.batched,
                               precision=setup.precision, share_encoder=setup.share_encoder)

        start = time.perf_counter()
        conds(nhwc)
        cache_s = time.perf_counter() - start
        candidates = [SetUp("fp32", False, channels_last=False, share_encoder=False),
                      SetUp("fp32", False, share_encoder=False)]
        candidates += [SetUp("fp32", batched) for batched in (False, True)]
        per_step = {c: time_sampler_steps(dpmpp, guided(c), x_T, dpmpp_20, n_timed)
                    for c in candidates}
        fp32_best = min(per_step.values())
        if bf16:
            t = torch.full((batch,), 999, dtype=torch.long)
            native, probe = _bf16_is_native(nhwc, x_T, t, *conds(nhwc), fp32_best)
            if native:
                for batched in (False, True):
                    c = SetUp("bf16", batched)
                    per_step[c] = time_sampler_steps(dpmpp, guided(c), x_T, dpmpp_20, n_timed)
            else:
                notes.append(f"bf16: one guided step took {probe:.3f} s vs {fp32_best:.3f} s in "
                             "fp32 (emulated, or too small a network to gain); not timed further")
        else:
            notes.append("bf16 not measured (bf16=False)")
        for c, sec in per_step.items():
            rows.append({"recipe": f"dpmpp2m step, SPADE cache, {c.label()}", "steps": 1,
                         "s_per_step": sec, "how": "timed steps", "speedup": a_step / sec})
        best = min(per_step, key=per_step.get)
        best_fp32 = min((c for c in per_step if c.precision == "fp32"), key=per_step.get)
        finals = [(best, steps) for steps in (10, 20, 25)]
        if best != best_fp32:
            finals.append((best_fp32, 20))
        for setup, steps in finals:
            if end_to_end:
                start = time.perf_counter()
                fn = guided(setup)  # SPADE maps once per mask batch and the schedule: counted
                dpmpp(fn, x_T, make_schedule(chain, steps, "logsnr"), generator=torch.Generator())
                total, how = (time.perf_counter() - start) / batch, "measured end to end"
            else:
                total, how = (cache_s + steps * per_step[setup]) / batch, "timed steps x steps"
            rows.append({"recipe": f"(b) dpmpp2m {steps}, SPADE cache, {setup.label()}",
                         "steps": steps, "s_per_image": total, "how": how,
                         "speedup": a_total / total})
    b20 = next(r for r in rows if r.get("steps") == 20)
    summary = {"model": "tiny 32 px (quick)" if quick else "original-cpu 64 px", "batch": batch,
               "threads": torch.get_num_threads(), "gflops_forward": flops["flops"] / 1e9,
               "gflops_cached": flops["cached_flops"] / 1e9, "spade_share": flops["spade_share"],
               "a_s_per_image": a_total, "b20_s_per_image": b20["s_per_image"],
               "speedup_a_over_b20": b20["speedup"], "best_setup": best.label()}
    notes.append(f"speed-up (a)/(b@20) = {b20['speedup']:.1f}x on {summary['model']}, batch "
                 f"{batch}, {summary['threads']} threads; best set-up: {best.label()}")
    return rows, summary, notes


def _accuracy_model(preset: str, size: int) -> tuple[torch.nn.Module, Any, int, int, str]:
    """``(model, trained chain, image_size, num_classes, description)``."""
    from isdm.diffusion import build_diffusion

    path = os.environ.get("ISDM_BENCH_CHECKPOINT") or "models/sdm_ft/best.pt"
    if Path(path).is_file():
        from isdm.training.checkpoint import load_model

        model, cfg, _ = load_model(path, ema_rate=None, device="cpu")
        return (model.eval(), build_diffusion(cfg.diffusion), cfg.data.image_size,
                cfg.data.num_classes, f"trained {path}")
    from isdm.config import DiffusionConfig
    from isdm.models import build_model, place

    cfg = ModelConfig(preset=preset, **MODEL_PRESETS[preset])
    model = place(randomize_zero_init(build_model(cfg, size, 2).eval()), "cpu")
    return model, build_diffusion(DiffusionConfig()), size, 2, (
        f"RANDOMLY INITIALISED {preset} preset at {size} px (no checkpoint at {path}): a weak "
        "proxy for a trained model")


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def _accuracy(quick: bool, preset: str, size: int, reference_steps: int
              ) -> tuple[list[dict], list[str]]:
    import copy

    from isdm.sampling.guidance import GuidedModel
    from isdm.solvers import get_sampler, make_schedule, resolve_spacing

    model, chain, size, num_classes, what = _accuracy_model(preset, size)
    segmap = binary_mask(1, size)
    if num_classes > 2:
        segmap = torch.cat([segmap, torch.zeros(1, num_classes - 2, size, size)], dim=1)
    x_T = torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator()

    def sample(name: str, fn: Callable, steps: int, spacing: str = "auto", **opts: Any
               ) -> torch.Tensor:
        schedule = make_schedule(chain, steps, resolve_spacing(name, spacing))
        return get_sampler(name)(fn, x_T, schedule, generator=gen, **opts)

    rows = []
    with torch.no_grad():
        cond = model.precompute_condition(segmap)
        null = model.precompute_condition(torch.zeros_like(segmap))
        fn = GuidedModel(model, cond, null, GUIDANCE_S)
        start = time.perf_counter()
        ref = sample("ddim", fn, reference_steps)
        ref_s = time.perf_counter() - start
        runs = [("dpmpp2m", n, {}) for n in (10, 20, 25)]
        runs += [("dpmpp2m", 20, {"spacing": "uniform"}), ("ddim", 20, {}), ("ddim", 25, {})]
        if not quick:
            runs.append(("ddim", 300, {}))
        for name, steps, opts in runs:
            out = sample(name, fn, steps, **opts)
            rows.append({"accuracy": f"{name} {steps}" + "".join(f" {k}={v}" for k, v in
                                                                  opts.items()),
                         "rmse_vs_reference": _rmse(out, ref), "model": what.split(" (")[0]})
        fp32 = sample("dpmpp2m", fn, 20)
        bf16_fn = GuidedModel(model, cond, null, GUIDANCE_S, precision="bf16")
        bf16 = sample("dpmpp2m", bf16_fn, 20)
        rows.append({"accuracy": "dpmpp2m 20 bf16 vs fp32", "rmse_vs_reference": _rmse(bf16, fp32),
                     "model": what.split(" (")[0]})
        nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        nchw_fn = GuidedModel(nchw, nchw.precompute_condition(segmap),
                              nchw.precompute_condition(torch.zeros_like(segmap)), GUIDANCE_S)
        other = sample("dpmpp2m", nchw_fn, 20)
        rows.append({"accuracy": "dpmpp2m 20 NCHW vs channels-last", "model": what.split(" (")[0],
                     "rmse_vs_reference": _rmse(other, fp32)})
    notes = [f"accuracy reference: {reference_steps}-step DDIM eta=0, s={GUIDANCE_S}, same x_T "
             f"({ref_s:.0f} s); model: {what}"]
    return rows, notes


def _gaussian_accuracy() -> list[dict]:
    """Exact ODE error on Gaussian data x0 ~ N(0.3, 0.5^2), where the optimal eps is known and
    the probability-flow ODE keeps z = (x_t - a mu) / sqrt(a^2 s0^2 + sigma^2) constant."""
    from isdm.diffusion import GaussianDiffusion, get_betas
    from isdm.solvers import get_sampler, make_schedule, resolve_spacing

    chain = GaussianDiffusion(get_betas("linear", 1000))
    mu, s0 = 0.3, 0.5
    abar_table = torch.as_tensor(chain.alphas_cumprod, dtype=torch.float64)

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = abar_table[t].view(-1, 1, 1, 1)
        a, v = abar.sqrt(), abar * s0**2 + 1 - abar
        x0 = mu + a * s0**2 * (x_t.double() - a * mu) / v
        return ((x_t.double() - a * x0) / (1 - abar).sqrt()).float()

    x_T = torch.randn((4, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    abar_T = chain.alphas_cumprod[-1]
    exact = mu + s0 * (x_T.double() - abar_T**0.5 * mu) / (abar_T * s0**2 + 1 - abar_T) ** 0.5
    rows = []
    for name, steps in [("dpmpp2m", 10), ("dpmpp2m", 20), ("dpmpp2m", 25), ("ddim", 20),
                        ("ddim", 300), ("ddim", 1000)]:
        schedule = make_schedule(chain, steps, resolve_spacing(name))
        out = get_sampler(name)(eps_fn, x_T, schedule, generator=torch.Generator(),
                                clip_denoised=False)
        rows.append({"accuracy": f"{name} {steps}", "rmse_vs_reference": _rmse(out, exact),
                     "model": "Gaussian data, exact ODE solution"})
    return rows


def run(quick: bool = False, batch: int = 1, end_to_end: Optional[bool] = None,
        n_timed: Optional[int] = None, bf16: bool = True, accuracy: bool = True,
        accuracy_preset: str = "default",
        accuracy_size: int = 64, reference_steps: Optional[int] = None) -> dict:
    """Run the sampling benchmark; returns ``{"table": rows, "speed": summary, "notes": [...]}``.

    ``quick`` (about a minute): a tiny 32 px model for speed, a tiny random model and a 200-step
    reference for accuracy. ``end_to_end`` (default: not quick) runs dpmpp2m 10/20/25 fully;
    ``n_timed`` steps are timed per set-up (default 1 quick, 2 full); ``accuracy=False`` skips
    the network accuracy part (its 1000-step reference is ~2000 forwards); ``bf16=False`` skips
    the bf16 probe (emulated, ~10x slower, on CPUs without bf16 instructions).
    """
    torch.set_num_threads(os.cpu_count() or 1)
    end_to_end = (not quick) if end_to_end is None else end_to_end
    speed_rows, summary, notes = _speed(quick, batch, end_to_end, n_timed, bf16)
    if quick:
        accuracy_preset, accuracy_size = "tiny", 32
    ref_steps = reference_steps or (100 if quick else 1000)
    acc_rows, acc_notes = _accuracy(quick, accuracy_preset, accuracy_size, ref_steps) \
        if accuracy else ([], ["network accuracy skipped (accuracy=False)"])
    rows = speed_rows + acc_rows + _gaussian_accuracy()
    return {"table": rows, "speed": summary, "notes": notes + acc_notes + [
        "Gaussian rows: RMSE against the closed-form ODE solution (no network)."]}
