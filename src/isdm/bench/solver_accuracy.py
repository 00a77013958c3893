"""How many steps each solver needs for the same output: RMSE against a long DDIM solution.

On a trained checkpoint (``$ISDM_BENCH_CHECKPOINT`` or ``models/sdm_ft/best.pt``, the
guidance-finetuned pipeline model) if one exists, else on a random model of the ``default``
preset (a weak proxy, noted in the output): masks of the checkpoint's train split plus the
benchmark's binary mask, one x_T per mask, guidance s = 1.5. Each solver's x0 is compared with a
``reference_steps``-step DDIM (eta = 0) solution from the same x_T; the steps of each solver grow
until the RMSE (images in [-1, 1]) is at most :data:`THRESHOLD` (0.015, about 2 of 255 grey
levels), and that step count is the solver's pick. The picked recipes are also run in bf16
autocast against the same fp32 reference. Gaussian rows: RMSE against the closed-form solution
of the probability-flow ODE for Gaussian data (no network).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from isdm.original.reference import GUIDANCE_S

__all__ = ["THRESHOLD", "CANDIDATES", "accuracy", "gaussian_accuracy", "binary_mask",
           "randomize_zero_init"]

THRESHOLD = 0.015
# step counts tried in order (the error is not monotone in N: where the log-SNR steps meet the
# coarse indices near t = 0 differs from one N to the next)
CANDIDATES: dict[str, tuple[int, ...]] = {"dpmpp2m": (12, 13, 14, 15, 20, 25),
                                          "dpmpp3m": (10, 11, 12, 15, 20),
                                          "unipc": (8, 10, 11, 12, 15, 20)}


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


def _model(quick: bool) -> tuple[torch.nn.Module, Any, torch.Tensor, str]:
    """``(model, trained chain, segmaps [M, C, H, W], description)``."""
    from isdm.diffusion import build_diffusion

    path = os.environ.get("ISDM_BENCH_CHECKPOINT") or "models/sdm_ft/best.pt"
    if Path(path).is_file() and not quick:
        from isdm.training.checkpoint import load_model

        model, cfg, _ = load_model(path, ema_rate=None, device="cpu")
        size, classes = cfg.data.image_size, cfg.data.num_classes
        masks = [_pad(binary_mask(1, size), classes)] + _train_masks(cfg, 4)
        return model.eval(), build_diffusion(cfg.diffusion), torch.cat(masks), f"trained {path}"
    from isdm.config import MODEL_PRESETS, DiffusionConfig, ModelConfig
    from isdm.models import build_model, place

    preset, size = ("tiny", 32) if quick else ("default", 64)
    cfg = ModelConfig(preset=preset, **MODEL_PRESETS[preset])
    model = place(randomize_zero_init(build_model(cfg, size, 2).eval()), "cpu")
    return model, build_diffusion(DiffusionConfig(prediction="eps")), binary_mask(1, size), (
        f"RANDOMLY INITIALISED {preset} preset at {size} px (no checkpoint at {path}"
        f"{' or --quick' if quick else ''}): a weak proxy for a trained model")


def _pad(segmap: torch.Tensor, classes: int) -> torch.Tensor:
    extra = classes - segmap.shape[1]
    return torch.cat([segmap, segmap.new_zeros(segmap.shape[0], extra, *segmap.shape[2:])], 1)


def _train_masks(cfg: Any, n: int) -> list[torch.Tensor]:
    """Up to ``n`` one-hot masks of the checkpoint's train split, spread over the split."""
    from isdm.data import SegmentationFolder
    from isdm.data.masks import one_hot

    try:
        data = SegmentationFolder(cfg.data.root, "train", cfg.data, augment=False)
    except Exception:  # the checkpoint's dataset is not here: the binary mask alone
        return []
    picks = sorted({i * len(data) // n for i in range(n)})
    return [one_hot(data[i]["label"][None], cfg.data.num_classes, cfg.data.ignore_index)
            for i in picks]


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).mean().sqrt().item()


def accuracy(quick: bool = False, reference_steps: Optional[int] = None,
             candidates: Optional[dict[str, tuple[int, ...]]] = None, bf16: bool = True,
             also: tuple[tuple[str, int], ...] = (("dpmpp2m", 20),)
             ) -> tuple[list[dict], dict[str, Optional[int]], list[str]]:
    """``(rows, picks, notes)``: RMSE rows, the smallest step count of each solver at RMSE <=
    :data:`THRESHOLD` (None if none of its candidates reaches it), notes. The ``(solver,
    steps)`` of ``also`` (the pipeline's setting) get rows too, in fp32 and bf16."""
    from isdm.sampling.guidance import GuidedModel
    from isdm.solvers import get_sampler, make_schedule, resolve_spacing

    model, chain, segmap, what = _model(quick)
    candidates = candidates or CANDIDATES
    reference_steps = reference_steps or (100 if quick else 1000)
    x_T = torch.randn((segmap.shape[0], 3, *segmap.shape[2:]),
                      generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = model.precompute_condition(segmap)
        null = model.precompute_condition(torch.zeros_like(segmap[:1]))

        def sample(name: str, steps: int, precision: str = "fp32") -> torch.Tensor:
            fn: Callable = GuidedModel(model, cond, null, GUIDANCE_S, batch_passes=False,
                                       precision=precision)
            schedule = make_schedule(chain, steps, resolve_spacing(name))
            return get_sampler(name)(fn, x_T, schedule, generator=torch.Generator())

        start = time.perf_counter()
        ref = sample("ddim", reference_steps)
        ref_s = time.perf_counter() - start
        rows, picks = [], {}
        model_label = what.split(" (")[0]
        for name, steps_list in candidates.items():
            picks[name] = None
            for steps in steps_list:
                out = sample(name, steps)
                err = _rmse(out, ref)
                per_mask = (out.double() - ref.double()).pow(2).mean((1, 2, 3)).sqrt()
                rows.append({"accuracy": f"{name} {steps}", "precision": "fp32",
                             "rmse_vs_reference": err, "max_mask_rmse": per_mask.max().item(),
                             "model": model_label})
                if err <= THRESHOLD:
                    picks[name] = steps
                    break
        done = {r["accuracy"] for r in rows}
        for name, steps in also:
            if f"{name} {steps}" not in done:
                rows.append({"accuracy": f"{name} {steps}", "precision": "fp32",
                             "rmse_vs_reference": _rmse(sample(name, steps), ref),
                             "model": model_label})
        bf16_runs = [(n, k) for n, k in picks.items() if k is not None]
        bf16_runs += [run for run in also if run not in bf16_runs]
        for name, steps in bf16_runs if bf16 else []:
            rows.append({"accuracy": f"{name} {steps}", "precision": "bf16",
                         "rmse_vs_reference": _rmse(sample(name, steps, "bf16"), ref),
                         "model": model_label})
    notes = [f"accuracy reference: {reference_steps}-step DDIM eta=0 (fp32), s={GUIDANCE_S}, "
             f"{segmap.shape[0]} masks, same x_T ({ref_s:.0f} s); model: {what}; a solver's pick "
             f"= its fewest steps at RMSE <= {THRESHOLD}"]
    return rows, picks, notes


def gaussian_accuracy() -> list[dict]:
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
    runs = [("dpmpp2m", n) for n in (10, 20)] + [("dpmpp3m", n) for n in (10, 20)]
    runs += [("unipc", n) for n in (10, 20)] + [("ddim", 20), ("ddim", 300)]
    for name, steps in runs:
        schedule = make_schedule(chain, steps, resolve_spacing(name))
        out = get_sampler(name)(eps_fn, x_T, schedule, generator=torch.Generator(),
                                clip_denoised=False)
        rows.append({"accuracy": f"{name} {steps}", "rmse_vs_reference": _rmse(out, exact),
                     "model": "Gaussian data, exact ODE solution"})
    return rows
