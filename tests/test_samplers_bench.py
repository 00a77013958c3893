"""The sampling benchmark's helpers (the benchmark itself runs in ``make bench``)."""

from __future__ import annotations

import torch

from isdm.bench import sample_bench
from isdm.bench.sample_bench import binary_mask, randomize_zero_init, time_sampler_steps
from isdm.diffusion import GaussianDiffusion, get_betas
from isdm.solvers import get_sampler, make_schedule


def test_time_sampler_steps_runs_only_the_asked_steps_of_the_real_loop():
    calls = []

    def model_fn(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    schedule = make_schedule(GaussianDiffusion(get_betas("linear", 1000)), 300, "uniform")
    time_sampler_steps(get_sampler("ddpm"), model_fn, torch.zeros(1, 3, 4, 4), schedule, n_timed=2)
    # warm-up + 2 timed steps of the 300-step loop, starting at the noisiest original index
    assert calls == [999, 996, 992]


def test_time_sampler_steps_leaves_out_the_warm_up(monkeypatch):
    """On a fake clock the warm-up step takes 1 s and every later network call 0.25 s (the
    solver's own work 0 s): the time per step is 0.25, not (1 + 2 * 0.25) / 3 = 0.5."""
    clock = [0.0]
    monkeypatch.setattr(sample_bench.time, "perf_counter", lambda: clock[0])

    def model_fn(x, t):
        clock[0] += 1.0 if clock[0] == 0.0 else 0.25
        return torch.zeros_like(x)

    schedule = make_schedule(GaussianDiffusion(get_betas("linear", 100)), 10, "uniform")
    sec = time_sampler_steps(get_sampler("ddim"), model_fn, torch.zeros(1, 3, 4, 4), schedule,
                             n_timed=2)
    assert sec == 0.25 and clock[0] == 1.5


def test_binary_mask_is_one_hot_with_both_classes():
    m = binary_mask(2, 32)
    assert m.shape == (2, 2, 32, 32) and torch.equal(m.sum(1), torch.ones(2, 32, 32))
    assert 0 < m[:, 1].mean() < 0.5


def test_randomize_zero_init_gives_the_head_weights():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.Conv2d(3, 3, 3))
    torch.nn.init.zeros_(net[1].weight)
    before = net[0].weight.clone()
    randomize_zero_init(net)
    assert net[1].weight.abs().sum() > 0 and torch.equal(net[0].weight, before)
