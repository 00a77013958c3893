"""Sampling speed like for like with the original code, at equal output.

Speed, on ONE model of the original ISDM code's configuration (:mod:`isdm.original.reference`;
random weights, guidance s = 1.5), seconds per image:

- ``original code (quoted)``: the original code's 300-step recipe, figure and source quoted;
- (a) isdm's re-implementation of that recipe: 300 respaced DDPM steps, conditional and
  unconditional forwards run separately, SPADE recomputed from the segmap at every forward,
  fp32, NCHW. Steps cost the same, so ``n_timed`` steps of the real loop are timed x 300;
- per step, each of isdm's speed-ups in turn (SPADE maps cached once per mask, channels-last,
  the encoder run once for both guidance passes, batched decoder passes, bf16 autocast);
- (b) the recommended recipes, run end to end as ``isdm sample`` runs them: the solver and step
  count that :mod:`isdm.bench.solver_accuracy` picked (fewest steps at RMSE <= 0.015 against a
  1000-step DDIM solution), fp32 and bf16 (where native), batch 1 and 4; and DPM-Solver++(2M)
  20 steps, the pipeline's setting.

Ratios are measured in the same run; absolute times on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from isdm.bench import solver_accuracy
from isdm.original import reference as original
from isdm.original.reference import GUIDANCE_S, ORIGINAL_CPU
from isdm.bench.solver_accuracy import binary_mask, randomize_zero_init

__all__ = ["run", "ORIGINAL_CPU", "time_sampler_steps", "binary_mask", "randomize_zero_init",
           "pick_recipe"]

RECIPE_BATCHES = (1, 4)


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


def pick_recipe(picks: dict[str, Optional[int]],
                rmse: Optional[dict[tuple[str, int, str], float]] = None) -> tuple[str, int]:
    """The solver with the fewest steps at the accuracy threshold (the lower fp32 RMSE in
    ``rmse``, keyed ``(name, steps, "fp32")``, on a tie); DPM-Solver++(2M) 20 steps when no
    solver reached it."""
    rmse = rmse or {}
    reached = [(steps, rmse.get((name, steps, "fp32"), 0.0), name)
               for name, steps in picks.items() if steps is not None]
    if not reached:
        return "dpmpp2m", 20
    steps, _, name = min(reached)
    return name, steps


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


class _Bench:
    """The original configuration's network (NCHW and channels-last copies) and its inputs."""

    def __init__(self, quick: bool) -> None:
        from isdm.config import MODEL_PRESETS, ModelConfig
        from isdm.diffusion import GaussianDiffusion, get_betas
        from isdm.models import build_model, forward_flops, place

        self.size, cfg = ((32, ModelConfig(preset="tiny", **MODEL_PRESETS["tiny"])) if quick
                          else (original.IMAGE_SIZE, ORIGINAL_CPU))
        self.nchw = randomize_zero_init(build_model(cfg, self.size, 2).eval())
        self.nhwc = place(copy.deepcopy(self.nchw), "cpu", channels_last=True)
        self.chain = GaussianDiffusion(get_betas("linear", 1000))
        self.flops = forward_flops(cfg, self.size, 2)
        self.model_label = "tiny 32 px (quick)" if quick else "original config, 64 px"

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        x_T = torch.randn((batch, 3, self.size, self.size),
                          generator=torch.Generator().manual_seed(0))
        return x_T, binary_mask(batch, self.size)

    def guided(self, setup: SetUp, segmap: torch.Tensor, batch_passes: Any = None) -> Any:
        """The guided model_fn of ``setup`` with SPADE maps cached (built here: counted by the
        caller's clock when it times end to end)."""
        from isdm.sampling.guidance import GuidedModel

        model = self.nhwc if setup.channels_last else self.nchw
        cond = model.precompute_condition(segmap)
        null = model.precompute_condition(torch.zeros_like(segmap[:1]))
        return GuidedModel(model, cond, null, GUIDANCE_S,
                           batch_passes=setup.batched if batch_passes is None else batch_passes,
                           precision=setup.precision, share_encoder=setup.share_encoder)


def _per_step_rows(b: _Bench, n_timed: int, bf16: bool) -> tuple[list[dict], float, float]:
    """(a) and each speed-up per step; returns ``(rows, a_step_s, a_s_per_image)``."""
    from isdm.sampling.guidance import GuidedModel
    from isdm.solvers import get_sampler, make_schedule

    x_T, segmap = b.inputs(1)
    orig_fn = GuidedModel(b.nchw, segmap, torch.zeros_like(segmap), GUIDANCE_S,
                          batch_passes=False, share_encoder=False)
    a_step = time_sampler_steps(get_sampler("ddpm"), orig_fn, x_T,
                                make_schedule(b.chain, 300, "uniform"), n_timed)
    rows = [{"recipe": "(a) isdm's re-implementation of the original recipe: ddpm 300, 2 full "
                       "forwards, no SPADE cache, fp32, NCHW", "steps": 300, "batch": 1,
             "s_per_step": a_step, "s_per_image": 300 * a_step,
             "how": f"{n_timed} steps timed x 300", "vs_a": 1.0}]
    dpmpp, schedule = get_sampler("dpmpp2m"), make_schedule(b.chain, 20, "logsnr")
    setups = [SetUp("fp32", False, channels_last=False, share_encoder=False),
              SetUp("fp32", False, share_encoder=False), SetUp("fp32", False),
              SetUp("fp32", True)]
    if bf16:
        setups += [SetUp("bf16", False), SetUp("bf16", True)]
    for setup in setups:
        sec = time_sampler_steps(dpmpp, b.guided(setup, binary_mask(1, b.size)), x_T, schedule,
                                 n_timed)
        rows.append({"recipe": f"one step, SPADE cache, {setup.label()}", "steps": 1, "batch": 1,
                     "s_per_step": sec, "how": "timed steps", "vs_a": a_step / sec})
    return rows, a_step, 300 * a_step


def _recipe_rows(b: _Bench, recipes: list[tuple[str, int, str]], rmse: dict, a_total: float,
                 end_to_end: bool, n_timed: int) -> list[dict]:
    """Each (solver, steps, precision) at each batch of :data:`RECIPE_BATCHES`, as ``isdm
    sample`` runs it (SPADE cache, shared encoder, guidance passes chosen by device)."""
    from isdm.solvers import get_sampler, make_schedule, resolve_spacing

    rows = []
    quoted = original.FIGURES["sample_s_per_image"]
    for name, steps, precision in recipes:
        sampler = get_sampler(name)
        for batch in RECIPE_BATCHES:
            x_T, segmap = b.inputs(batch)
            setup = SetUp(precision, False)
            start = time.perf_counter()
            fn = b.guided(setup, segmap, batch_passes="auto")
            schedule = make_schedule(b.chain, steps, resolve_spacing(name))
            if end_to_end:
                sampler(fn, x_T, schedule, generator=torch.Generator())
                total, how = (time.perf_counter() - start) / batch, "end to end"
            else:
                per_step = time_sampler_steps(sampler, fn, x_T, schedule, n_timed)
                total, how = steps * per_step / batch, "timed steps x steps"
            rows.append({"recipe": f"(b) {name} {steps} steps, {precision}", "steps": steps,
                         "batch": batch, "precision": precision, "s_per_image": total, "how": how,
                         "rmse_vs_reference": rmse.get((name, steps, precision)),
                         "vs_a": a_total / total, "vs_original": quoted / total})
    return rows


def run(quick: bool = False, end_to_end: Optional[bool] = None, n_timed: Optional[int] = None,
        bf16: bool = True, accuracy: bool = True, reference_steps: Optional[int] = None) -> dict:
    """Accuracy first (it picks the recipe), then speed; returns ``{"table", "speed",
    "headline", "notes"}``.

    ``quick`` (about two minutes): a tiny 32 px model, a random tiny model for accuracy and a
    100-step reference. ``end_to_end`` (default: not quick) runs each recipe fully, else times
    ``n_timed`` steps (default 1 quick, 2 full); ``accuracy=False`` skips the network accuracy
    (the recipe is then DPM-Solver++(2M) 20 steps); ``bf16=False`` skips bf16 rows (they run only
    where :func:`isdm.utils.cpu.native_bf16`).
    """
    from isdm.utils.cpu import native_bf16

    end_to_end = (not quick) if end_to_end is None else end_to_end
    n_timed = n_timed or (1 if quick else 2)
    bf16 = bf16 and native_bf16("cpu")
    notes = [] if bf16 else ["bf16 rows skipped: no native bf16 on this CPU (or bf16=False)"]
    if accuracy:
        acc_rows, picks, acc_notes = solver_accuracy.accuracy(quick, reference_steps, bf16=bf16)
    else:
        acc_rows, picks, acc_notes = [], {}, ["network accuracy skipped (accuracy=False)"]
    rmse = {(r["accuracy"].split()[0], int(r["accuracy"].split()[1]), r["precision"]):
            r["rmse_vs_reference"] for r in acc_rows}
    name, steps = pick_recipe(picks, rmse)
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    recipes = [(name, steps, p) for p in precisions]
    if (name, steps) != ("dpmpp2m", 20):
        recipes += [("dpmpp2m", 20, p) for p in precisions]
    b = _Bench(quick)
    with torch.no_grad():
        step_rows, a_step, a_total = _per_step_rows(b, n_timed, bf16)
        recipe_rows = _recipe_rows(b, recipes, rmse, a_total, end_to_end, n_timed)
    quoted = original.FIGURES["sample_s_per_image"]
    rows = [{"recipe": "original code (quoted): 300 respaced DDPM steps, s=1.5, "
                       f"{original.CONFIG_TEXT}", "s_per_image": quoted, "vs_original": 1.0,
             "how": original.SOURCE}] + step_rows + recipe_rows
    headline = [{"what": f"sampling, s/image ({b.model_label}, s={GUIDANCE_S})",
                 "isdm_setting": f"{r['recipe'][4:]}, batch {r['batch']}",
                 "precision": r["precision"], "value": r["s_per_image"], "original": quoted,
                 "ratio": None if quick else r["vs_original"],  # a tiny model is not comparable
                 "rmse_vs_reference": r["rmse_vs_reference"]}
                for r in recipe_rows if r["steps"] == steps and r["recipe"].split()[1] == name]
    summary = {"model": b.model_label, "threads": torch.get_num_threads(),
               "gflops_forward": b.flops["flops"] / 1e9, "spade_share": b.flops["spade_share"],
               "a_s_per_image": a_total, "recipe": f"{name} {steps}", "picks": picks}
    notes.append(f"recipe: {name} {steps} steps (fewest steps at RMSE <= "
                 f"{solver_accuracy.THRESHOLD}); vs_original = {quoted} s / isdm s per image; "
                 f"vs_a = isdm's own re-implementation of the original recipe, measured here")
    acc_rows += solver_accuracy.gaussian_accuracy()
    return {"table": rows + acc_rows, "speed": summary, "headline": headline,
            "notes": notes + acc_notes + ["Gaussian rows: RMSE against the closed-form ODE "
                                          "solution (no network)."]}
