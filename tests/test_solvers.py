"""Solvers against closed forms: an oracle denoiser for a known x0, exact respacing calls,
Gaussian data whose probability-flow ODE has a closed-form solution, determinism; schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isdm.diffusion import GaussianDiffusion, get_betas, space_timesteps
from isdm.errors import ConfigError
from isdm.solvers import (SAMPLERS, get_sampler, logsnr_timesteps, make_schedule,
                          resolve_spacing)

T = 1000
SHAPE = (2, 3, 8, 8)


@pytest.fixture(scope="module")
def chain() -> GaussianDiffusion:
    return GaussianDiffusion(get_betas("linear", T))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(name: str, model_fn, x_T: torch.Tensor, chain: GaussianDiffusion, steps, *,
        spacing: str = "auto", **opts) -> torch.Tensor:
    """Solver ``name`` on ``chain`` respaced to ``steps`` (the engine's way)."""
    schedule = make_schedule(chain, steps, resolve_spacing(name, spacing))
    return get_sampler(name)(model_fn, x_T, schedule, **opts)


def oracle(diffusion: GaussianDiffusion, x0: torch.Tensor, calls: list | None = None):
    """model_fn whose eps makes x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps exact (t ORIGINAL);
    the variance channels are noise-free constants (any value is allowed)."""
    abar_table = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t.clone())
        abar = abar_table[t].view(-1, 1, 1, 1)
        eps = (x_t.double() - abar.sqrt() * x0.double()) / (1 - abar).sqrt()
        return torch.cat([eps, torch.full_like(eps, 0.3)], dim=1).float()

    return model_fn


def v_oracle(diffusion: GaussianDiffusion, x0: torch.Tensor):
    """The exact v network for data ``x0``: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0, from
    ``oracle``'s eps at the ORIGINAL t of ``diffusion``; variance channels passed through."""
    eps_oracle = oracle(diffusion, x0)
    abar_table = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)

    def v_fn(x_t, t):
        eps = eps_oracle(x_t, t).double()
        abar = abar_table[t].view(-1, 1, 1, 1)
        v = abar.sqrt() * eps[:, :3] - (1 - abar).sqrt() * x0.double()
        return torch.cat([v, eps[:, 3:]], dim=1).float()

    return v_fn


def known_x0() -> torch.Tensor:
    return torch.rand(SHAPE, generator=gen(7)) * 1.8 - 0.9


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("steps", [2, 7, 25, 300, T])
@pytest.mark.parametrize("name,opts", [("ddim", {"eta": 0.0}), ("dpmpp2m", {}),
                                       ("dpmpp2m", {"order": 1})])
def test_deterministic_samplers_recover_x0_exactly(chain, steps, name, opts, spacing):
    x0 = known_x0()
    x_T = torch.randn(SHAPE, generator=gen(1))
    out = run(name, oracle(chain, x0), x_T, chain, steps, spacing=spacing, generator=gen(2),
              **opts)
    assert out.shape == SHAPE and out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,opts", [("ddim", {"eta": 0.0}), ("dpmpp2m", {}), ("ddpm", {})])
def test_v_prediction_oracle_recovers_x0_through_the_respaced_chain(chain, name, opts):
    """A v network is converted with the TRAINED chain at the original t: samplers see eps."""
    v_chain = GaussianDiffusion(chain.betas, prediction="v")
    x0 = known_x0()
    v_fn = v_oracle(chain, x0)

    x_T = torch.randn(SHAPE, generator=gen(1))
    out = run(name, v_fn, x_T, v_chain, 20, generator=gen(2), **opts)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("steps", [3, 50])
def test_stochastic_samplers_with_oracle_end_at_x0(chain, steps, spacing):
    # the last step of DDPM is the posterior mean at abar_prev = 1, i.e. x0_hat itself
    x0 = known_x0()
    x_T = torch.randn(SHAPE, generator=gen(1))
    for name, opts in [("ddpm", {}), ("ddim", {"eta": 1.0})]:
        out = run(name, oracle(chain, x0), x_T, chain, steps, spacing=spacing, generator=gen(3),
                  **opts)
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_clip_denoised_clamps_the_result(chain):
    x0 = known_x0() * 3  # outside [-1, 1]
    x_T = torch.randn(SHAPE, generator=gen(1))
    for name in SAMPLERS:
        clipped = run(name, oracle(chain, x0), x_T, chain, 5, generator=gen(0))
        free = run(name, oracle(chain, x0), x_T, chain, 5, generator=gen(0), clip_denoised=False)
        assert clipped.abs().max() <= 1.0
        torch.testing.assert_close(free, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,opts", [("ddpm", {}), ("ddim", {}),
                                       ("dpmpp2m", {"spacing": "uniform"})])
def test_model_gets_original_timesteps(chain, name, opts):
    x0, x_T = known_x0(), torch.randn(SHAPE, generator=gen(1))
    expected = {T: list(range(T - 1, -1, -1)), 3: [999, 500, 0], 4: [999, 666, 333, 0],
                "ddim4": [750, 500, 250, 0]}
    for steps, want in expected.items():
        calls: list = []
        run(name, oracle(chain, x0, calls), x_T, chain, steps, generator=gen(0), **opts)
        assert [int(t[0]) for t in calls] == want
        assert all(t.dtype == torch.int64 and t.shape == (SHAPE[0],) and len(set(t.tolist())) == 1
                   for t in calls)


def test_logsnr_spacing_is_uniform_in_lambda_and_exact(chain):
    abar = chain.alphas_cumprod
    lam = 0.5 * np.log(abar / (1 - abar))
    for n in (2, 3, 10, 20, 25):
        kept = logsnr_timesteps(chain, n)
        assert len(set(kept)) == n and kept[0] == 0 and kept[-1] == T - 1
        step = (lam[0] - lam[-1]) / (n - 1)
        targets = lam[0] - step * np.arange(n)
        # each kept lambda is the trained chain's closest to its target (within one index)
        res = np.abs(np.diff(lam))
        for k, target in zip(kept, targets):
            assert abs(lam[k] - target) <= max(res[max(k - 1, 0)], res[min(k, T - 2)])
        calls: list = []
        run("dpmpp2m", oracle(chain, known_x0(), calls), torch.randn(SHAPE), chain, n,
            generator=gen(0))
        assert [int(t[0]) for t in calls] == kept[::-1]
    middle = logsnr_timesteps(chain, 3)[1]
    assert middle == 302 and abs(lam[middle] - (lam[0] + lam[-1]) / 2) < 0.005
    assert logsnr_timesteps(chain, T) == list(range(T))  # crowded near t=0: still distinct
    assert len(set(logsnr_timesteps(chain, 900))) == 900


def test_small_chain_respacing_list(chain):
    small = GaussianDiffusion(get_betas("cosine", 10))
    calls: list = []
    run("ddpm", oracle(small, known_x0(), calls), torch.randn(SHAPE, generator=gen(1)), small, 4,
        generator=gen(0))
    assert [int(t[0]) for t in calls] == [9, 6, 3, 0]


def test_legacy_300_steps_means_300_respaced_steps_of_the_trained_chain(chain, tmp_path):
    from isdm.original import load_original_config

    cfg = load_original_config("configs/config_sample.json", action="sample")
    assert cfg.sample.steps == 300 and cfg.diffusion.diffusion_steps == 1000
    trained = GaussianDiffusion(get_betas(cfg.diffusion.noise_schedule,
                                          cfg.diffusion.diffusion_steps))
    schedule = make_schedule(trained, cfg.sample.steps, resolve_spacing(cfg.sample.sampler))
    spaced, timestep_map = schedule.spaced, schedule.timestep_map
    assert spaced.num_timesteps == 300 and timestep_map[0] == 0 and timestep_map[-1] == 999
    assert np.array_equal(spaced.alphas_cumprod, trained.alphas_cumprod[timestep_map])
    # ...unlike the original's rebuilt 300-step chain (beta x 10/3), which drifts to ~0.81x
    rebuilt = np.cumprod(1 - get_betas("linear", 300))
    assert abs(rebuilt[-1] / spaced.alphas_cumprod[-1] - 1) > 0.1
    calls: list = []
    get_sampler(cfg.sample.sampler)(oracle(trained, known_x0(), calls),
                                    torch.randn(SHAPE, generator=gen(1)), schedule,
                                    generator=gen(0))
    assert [int(t[0]) for t in calls] == [int(k) for k in timestep_map[::-1]]


def gaussian_data_model(diffusion: GaussianDiffusion, mu: float, s0: float):
    """The exact eps of data x0 ~ N(mu, s0^2): E[x0 | x_t] = mu + a s0^2 (x_t - a mu) / v."""
    abar_table = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)

    def model_fn(x_t, t):
        abar = abar_table[t].view(-1, 1, 1, 1)
        a, sig = abar.sqrt(), (1 - abar).sqrt()
        v = a**2 * s0**2 + sig**2
        x0 = mu + a * s0**2 * (x_t.double() - a * mu) / v
        return ((x_t.double() - a * x0) / sig).float()

    return model_fn


def test_dpmpp2m_is_second_order_on_gaussian_data(chain):
    """For Gaussian data the probability-flow ODE keeps z = (x_t - a_t mu) / sqrt(a_t^2 s0^2 +
    sigma_t^2) constant, so the exact ODE solution from x_T is x0 = mu + s0 z."""
    mu, s0 = 0.3, 0.5
    model_fn = gaussian_data_model(chain, mu, s0)
    x_T = torch.randn(SHAPE, generator=gen(4)).double()
    abar_T = chain.alphas_cumprod[-1]
    exact = mu + s0 * (x_T - abar_T**0.5 * mu) / (abar_T * s0**2 + 1 - abar_T) ** 0.5

    def err(name, steps, **opts):
        out = run(name, model_fn, x_T.float(), chain, steps, generator=gen(0),
                  clip_denoised=False, **opts)
        return (out.double() - exact).pow(2).mean().sqrt().item()

    e_ddim = {n: err("ddim", n) for n in (10, 20, 40)}
    e_dpm = {n: err("dpmpp2m", n) for n in (10, 20, 40, 80)}
    e_first = {n: err("dpmpp2m", n, order=1) for n in (20, 40, 80)}
    assert all(e_dpm[n] < e_ddim[n] / 5 for n in e_ddim)
    assert e_dpm[20] < 0.01
    # error ratio per halving of the step size: ~2 for first order, ~4 for second order
    assert 1.5 < e_ddim[20] / e_ddim[40] < 2.5 and 1.5 < e_first[40] / e_first[80] < 2.5
    assert e_dpm[20] / e_dpm[40] > 3.0 and e_dpm[40] / e_dpm[80] > 3.0


@pytest.mark.parametrize("name,opts", [("ddpm", {}), ("ddim", {"eta": 1.0})])
def test_same_seed_same_bits(chain, name, opts):
    model_fn = gaussian_data_model(chain, 0.1, 0.4)
    x_T = torch.randn(SHAPE, generator=gen(1))
    runs = [run(name, model_fn, x_T, chain, 10, generator=gen(s), **opts) for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("name,opts", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp2m", {})])
def test_per_row_generators_make_samples_independent_of_the_batch(chain, name, opts):
    """Row i drawn with generator seeded i equals the same sample generated alone."""
    model_fn = gaussian_data_model(chain, 0.1, 0.4)  # acts on each row alone

    def x_T_for(seeds):
        gens = [gen(s) for s in seeds]
        return torch.cat([torch.randn((1, 3, 8, 8), generator=g) for g in gens]), gens

    x_T, gens = x_T_for([10, 11, 12, 13])
    batch = run(name, model_fn, x_T, chain, 6, generator=gens, **opts)
    for i, seed in enumerate([10, 11, 12, 13]):
        x_1, g_1 = x_T_for([seed])
        alone = run(name, model_fn, x_1, chain, 6, generator=g_1, **opts)
        assert torch.equal(batch[i : i + 1], alone)
    assert not torch.equal(batch[0], batch[1])


def test_errors_name_the_fix(chain):
    x_T = torch.randn(SHAPE, generator=gen(1))
    model_fn = gaussian_data_model(chain, 0.0, 1.0)
    with pytest.raises(ConfigError, match="unknown; use one of"):
        get_sampler("euler")
    with pytest.raises(ConfigError, match="unknown; use one of"):
        resolve_spacing("euler")
    with pytest.raises(ConfigError, match=r"sample.steps=1001: must be in 1\.\.1000"):
        make_schedule(chain, 1001, "uniform")
    with pytest.raises(ConfigError, match=r"spacing='auto': use one of \['uniform', 'logsnr'\]"):
        make_schedule(chain, 10, "auto")  # "auto" is the config's; the caller resolves it
    with pytest.raises(ValueError, match="one per batch row"):
        run("ddpm", model_fn, x_T, chain, 5, generator=[gen(0)])
    with pytest.raises(ValueError, match="eta"):
        run("ddim", model_fn, x_T, chain, 5, generator=gen(0), eta=-1.0)
    assert space_timesteps(T, 3) == [0, 500, 999]


def test_the_caller_chooses_the_spacing(chain):
    """An int ``steps`` is placed by ``spacing``; a string spec is used as given under either."""
    uniform, logsnr = make_schedule(chain, 10, "uniform"), make_schedule(chain, 10, "logsnr")
    assert uniform.timestep_map.tolist() == space_timesteps(T, 10)
    assert logsnr.timestep_map.tolist() == logsnr_timesteps(chain, 10)
    assert uniform.timestep_map.tolist() != logsnr.timestep_map.tolist()
    for schedule in (uniform, logsnr):
        assert schedule.num_steps == 10 and schedule.trained is chain
        assert np.array_equal(schedule.spaced.alphas_cumprod,
                              chain.alphas_cumprod[schedule.timestep_map])
    for spacing in ("uniform", "logsnr"):
        assert make_schedule(chain, "ddim4", spacing).timestep_map.tolist() == [0, 250, 500, 750]
    assert [resolve_spacing(n) for n in ("ddpm", "ddim", "dpmpp2m")] == \
        ["uniform", "uniform", "logsnr"]
    assert resolve_spacing("dpmpp2m", "uniform") == "uniform"
    assert resolve_spacing("ddim", "logsnr") == "logsnr"


def test_schedule_alpha_sigma_lambda_closed_form(chain):
    schedule = make_schedule(chain, 4, "uniform")  # kept 0, 333, 666, 999
    alpha, sigma, lam = schedule.alpha_sigma_lambda()
    abar = chain.alphas_cumprod[[0, 333, 666, 999]]
    np.testing.assert_allclose(alpha**2, abar, rtol=1e-14)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-14)
    np.testing.assert_allclose(lam, 0.5 * np.log(abar / (1 - abar)), rtol=1e-12)
    assert (np.diff(lam) < 0).all()


def test_ddpm_takes_a_logsnr_schedule(chain):
    """Every solver takes any schedule: ddpm on log-SNR steps calls the network at exactly them."""
    calls: list = []
    x0 = known_x0()
    out = run("ddpm", oracle(chain, x0, calls), torch.randn(SHAPE, generator=gen(1)), chain, 6,
              spacing="logsnr", generator=gen(0))
    assert [int(t[0]) for t in calls] == logsnr_timesteps(chain, 6)[::-1]
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
