"""The sampling benchmark's helpers (the benchmark itself runs in ``make bench``)."""

from __future__ import annotations

import torch

from isdm.bench.sample_bench import binary_mask, randomize_zero_init, time_sampler_steps
from isdm.diffusion import GaussianDiffusion, get_betas
from isdm.samplers import get_sampler


def test_time_sampler_steps_runs_only_the_asked_steps_of_the_real_loop():
    calls = []

    def model_fn(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    chain = GaussianDiffusion(get_betas("linear", 1000))
    sec = time_sampler_steps(get_sampler("ddpm"), model_fn, torch.zeros(1, 3, 4, 4), chain, 300,
                             n_timed=2)
    # warm-up + 2 timed steps of the 300-step loop, starting at the noisiest original index
    assert calls[:3] == [999, 996, 992] and len(calls) == 3 and sec >= 0


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
