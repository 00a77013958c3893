"""Diffusion process, schedules, hybrid loss and respacing against closed forms (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isdm.config import DiffusionConfig
from isdm.diffusion import GaussianDiffusion, build_diffusion, get_betas, respace, space_timesteps
from isdm.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl

F64 = torch.float64


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(get_betas("linear", 100))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("T", [1000, 250, 50])
def test_linear_schedule_endpoints_scale_with_T(T):
    betas = get_betas("linear", T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert betas[0] == pytest.approx(1e-4 * 1000 / T, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * 1000 / T, rel=1e-12)
    assert (np.diff(betas) > 0).all()


def test_cosine_schedule_matches_closed_form_alpha_bar():
    T = 1000
    betas = get_betas("cosine", T)
    assert betas.dtype == np.float64 and (betas > 0).all() and betas.max() <= 0.999
    assert betas.max() == 0.999  # the last step is clipped
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = np.cumprod(1 - betas)
    expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    # telescoping product is exact until the clipping at the very end
    np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-10)
    assert (np.diff(abar) < 0).all()


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="cosine"):
        get_betas("quadratic", 10)


def test_build_diffusion_from_config():
    d = build_diffusion(DiffusionConfig(diffusion_steps=20, noise_schedule="cosine",
                                        prediction="eps"))
    assert d.num_timesteps == 20 and d.prediction == "eps"
    np.testing.assert_array_equal(d.betas, get_betas("cosine", 20))
    v = build_diffusion(DiffusionConfig(diffusion_steps=50, prediction="v"))
    assert v.prediction == "v" and respace(v, [0, 9, 49])[0].prediction == "v"


def test_linear_schedule_refuses_a_chain_whose_last_beta_is_one():
    from isdm.config import ConfigError

    with pytest.raises(ValueError, match="more than 20 steps"):
        get_betas("linear", 20)
    with pytest.raises(ConfigError, match="at least 21 steps or diffusion.noise_schedule=cosine"):
        DiffusionConfig(diffusion_steps=20)
    assert get_betas("linear", 21)[-1] < 1


# ----------------------------------------------------------------------------- forward process
def test_q_sample_is_the_closed_form(diffusion):
    x0 = torch.rand(4, 3, 5, 5, generator=_gen(1), dtype=F64) * 2 - 1
    noise = torch.randn(4, 3, 5, 5, generator=_gen(2), dtype=F64)
    t = torch.tensor([0, 10, 50, 99])
    abar = np.cumprod(1 - diffusion.betas)[t.numpy()]
    a = torch.from_numpy(abar).view(-1, 1, 1, 1)
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise),
                               a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=1e-14, atol=1e-14)


def test_q_sample_statistics_with_a_generator(diffusion):
    n = 200_000
    x0 = torch.full((1, 1, n, 1), 0.5, dtype=F64)
    t = torch.tensor([60])
    noise = torch.randn(x0.shape, generator=_gen(3), dtype=F64)
    xt = diffusion.q_sample(x0, t, noise)
    abar = diffusion.alphas_cumprod[60]
    std = math.sqrt(1 - abar)
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.5, abs=5 * std / math.sqrt(n))
    assert xt.std().item() == pytest.approx(std, rel=0.01)


def test_posterior_matches_bayes_rule(diffusion):
    """q(x_{t-1}|x_t,x0) ~ N(sqrt(abar_{t-1}) x0, 1-abar_{t-1}) x N(x_t; sqrt(alpha_t) x_{t-1}, beta_t)."""
    x0 = torch.rand(3, 3, 4, 4, generator=_gen(4), dtype=F64) * 2 - 1
    xt = torch.randn(3, 3, 4, 4, generator=_gen(5), dtype=F64)
    t = torch.tensor([1, 30, 99])
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
    b = diffusion.betas
    for i, ti in enumerate(t.tolist()):
        abar_prev = np.prod(1 - b[:ti])
        alpha = 1 - b[ti]
        precision = 1 / (1 - abar_prev) + alpha / b[ti]
        exp_var = 1 / precision
        exp_mean = exp_var * (math.sqrt(abar_prev) * x0[i] / (1 - abar_prev)
                              + math.sqrt(alpha) * xt[i] / b[ti])
        assert var[i].item() == pytest.approx(exp_var, rel=1e-12)
        assert log_var[i].item() == pytest.approx(math.log(exp_var), rel=1e-12)
        torch.testing.assert_close(mean[i], exp_mean, rtol=1e-12, atol=1e-12)


def test_posterior_log_variance_at_t0_uses_t1(diffusion):
    assert diffusion.posterior_variance[0] == 0.0
    assert diffusion.posterior_log_variance_clipped[0] == math.log(diffusion.posterior_variance[1])


def test_eps_and_xstart_predictions_invert_each_other(diffusion):
    x0 = torch.rand(2, 3, 4, 4, generator=_gen(6), dtype=F64)
    eps = torch.randn(2, 3, 4, 4, generator=_gen(7), dtype=F64)
    t = torch.tensor([3, 77])
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.predict_xstart_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(xt, t, x0), eps)


# ----------------------------------------------------------------------------- reverse process
def test_learned_range_variance_interpolates_the_log_bounds(diffusion):
    xt = torch.zeros(2, 3, 2, 2, dtype=F64)
    t = torch.tensor([0, 40])
    eps = torch.zeros_like(xt)
    for v, expected in [(-1.0, diffusion.posterior_log_variance_clipped),
                        (1.0, np.log(diffusion.betas))]:
        out = diffusion.p_mean_variance(torch.cat([eps, torch.full_like(xt, v)], 1), xt, t)
        assert out["log_variance"][:, 0, 0, 0].tolist() == pytest.approx(expected[[0, 40]], rel=1e-12)
    out = diffusion.p_mean_variance(torch.cat([eps, torch.zeros_like(xt)], 1), xt, t)
    mid = 0.5 * (np.log(diffusion.betas) + diffusion.posterior_log_variance_clipped)[[0, 40]]
    assert out["log_variance"][:, 0, 0, 0].tolist() == pytest.approx(mid, rel=1e-12)


def test_fixed_variance_without_variance_channels(diffusion):
    xt = torch.zeros(1, 3, 2, 2, dtype=F64)
    out = diffusion.p_mean_variance(torch.zeros_like(xt), xt, torch.tensor([50]))
    assert out["variance"][0, 0, 0, 0].item() == pytest.approx(diffusion.betas[50], rel=1e-12)
    with pytest.raises(ValueError, match="channels"):
        diffusion.p_mean_variance(torch.zeros(1, 4, 2, 2, dtype=F64), xt, torch.tensor([50]))


def test_p_mean_variance_clips_x0(diffusion):
    xt = torch.full((1, 3, 2, 2), 3.0, dtype=F64)
    out = diffusion.p_mean_variance(torch.zeros(1, 6, 2, 2, dtype=F64), xt, torch.tensor([5]))
    assert out["pred_xstart"].max().item() == 1.0


# ----------------------------------------------------------------------------- losses
def test_normal_kl_closed_forms():
    z = torch.zeros(1, dtype=F64)
    assert normal_kl(z, z, z, z).item() == 0.0
    assert normal_kl(z + 1, z, z, z).item() == pytest.approx(0.5)
    # KL(N(0,1) || N(0,e^2)) = 0.5 (-1 + 2 + e^-2)
    assert normal_kl(z, z, z, z + 2).item() == pytest.approx(0.5 * (1 + math.exp(-2)))


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    x = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, log_scale in [(0.0, -2.0), (0.3, -4.0), (-0.9, -1.0)]:
        ll = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean),
                                                 torch.full_like(x, log_scale))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        assert (ll <= 0).all()


def _oracle(noise: torch.Tensor, v: float = -1.0):
    """Returns the true noise and, with v=-1, the true posterior variance."""
    return lambda x_t, t: torch.cat([noise, torch.full_like(noise, v)], dim=1)


def test_oracle_denoiser_has_zero_loss(diffusion):
    x0 = torch.rand(4, 3, 6, 6, generator=_gen(8), dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, generator=_gen(9), dtype=F64)
    t = torch.tensor([1, 5, 50, 99])
    losses = diffusion.training_losses(_oracle(noise), x0, t, noise)
    assert set(losses) == {"loss", "mse", "vb"}
    assert losses["mse"].shape == (4,) and torch.equal(losses["mse"], torch.zeros(4, dtype=F64))
    assert losses["vb"].abs().max().item() < 1e-9
    # a wrong variance costs a positive KL (tiny at large t, where beta_t ~ beta~_t)
    worse = diffusion.training_losses(_oracle(noise, v=1.0), x0, t, noise)
    assert (worse["vb"] > 0).all() and (worse["vb"][:3] > 1e-6).all()


def test_v_prediction_oracle_has_zero_loss_and_converts_to_eps(diffusion):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0: the true v gives exactly the eps loss of the
    true eps, and eps_output inverts the definition."""
    v_chain = GaussianDiffusion(diffusion.betas, prediction="v")
    x0 = torch.rand(4, 3, 6, 6, generator=_gen(8), dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, generator=_gen(9), dtype=F64)
    t = torch.tensor([1, 5, 50, 99])  # t = 0 has the decoder NLL, not a KL
    abar = torch.as_tensor(diffusion.alphas_cumprod, dtype=F64)[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    x_t = diffusion.q_sample(x0, t, noise)
    out = torch.cat([v, torch.full_like(v, -1.0)], dim=1)
    converted = v_chain.eps_output(out, x_t, t)
    torch.testing.assert_close(converted[:, :3], noise, rtol=0, atol=1e-12)
    assert torch.equal(converted[:, 3:], out[:, 3:])
    assert diffusion.eps_output(out, x_t, t) is out  # eps chains pass outputs through
    losses = v_chain.training_losses(lambda x, tt: torch.cat(
        [abar.sqrt() * noise - (1 - abar).sqrt() * x0, torch.full_like(x0, -1.0)], 1), x0, t, noise)
    assert losses["mse"].abs().max() < 1e-20 and losses["vb"].abs().max() < 1e-9
    with pytest.raises(ValueError, match="prediction='x0'"):
        GaussianDiffusion(diffusion.betas, prediction="x0")


def test_vb_is_nonnegative_and_decoder_nll_at_t0(diffusion):
    x0 = (torch.randint(0, 256, (6, 3, 4, 4), generator=_gen(10)).to(F64) / 127.5) - 1
    t = torch.tensor([0, 0, 1, 2, 60, 99])
    out = torch.randn(6, 6, 4, 4, generator=_gen(11), dtype=F64).clamp(-1, 1)
    losses = diffusion.training_losses(lambda x_t, t: out, x0, t, generator=_gen(12))
    assert (losses["vb"] >= 0).all()
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    # at t=0 the term is the discretised decoder NLL, not a KL
    xt = diffusion.q_sample(x0, t, torch.zeros_like(x0))
    nll = -discretized_gaussian_log_likelihood(
        x0[:1], *(lambda o: (o["mean"], 0.5 * o["log_variance"]))(
            diffusion.p_mean_variance(out[:1], xt[:1], t[:1], clip_denoised=False)))
    assert nll.mean().item() / math.log(2) > 0


def test_vb_trains_only_the_variance_and_mse_only_eps(diffusion):
    x0 = torch.rand(2, 3, 4, 4, generator=_gen(13), dtype=F64)
    out = torch.zeros(2, 6, 4, 4, dtype=F64, requires_grad=True)
    t = torch.tensor([10, 70])
    losses = diffusion.training_losses(lambda x_t, t: out, x0, t, generator=_gen(14))
    (vb_grad,) = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    assert vb_grad[:, :3].abs().max() == 0 and vb_grad[:, 3:].abs().max() > 0
    (mse_grad,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert mse_grad[:, 3:].abs().max() == 0 and mse_grad[:, :3].abs().max() > 0


def test_without_learned_sigma_loss_is_mse(diffusion):
    x0 = torch.rand(2, 3, 4, 4, generator=_gen(15), dtype=F64)
    out = torch.randn(2, 3, 4, 4, generator=_gen(16), dtype=F64)
    losses = diffusion.training_losses(lambda x_t, t: out, x0, torch.tensor([0, 9]),
                                       generator=_gen(17))
    assert torch.equal(losses["vb"], torch.zeros(2, dtype=F64))
    assert torch.equal(losses["loss"], losses["mse"])


def test_training_losses_same_generator_same_result(diffusion):
    x0 = torch.rand(2, 3, 4, 4, generator=_gen(18))
    fn = lambda x_t, t: torch.cat([x_t, x_t], 1) * 0.1  # noqa: E731
    a = diffusion.training_losses(fn, x0, torch.tensor([3, 4]), generator=_gen(19))
    b = diffusion.training_losses(fn, x0, torch.tensor([3, 4]), generator=_gen(19))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- respacing
def test_int_spec_gives_exactly_n_distinct_steps_with_both_ends():
    T = 60
    for n in range(1, T + 1):
        kept = space_timesteps(T, n)
        assert len(kept) == n and len(set(kept)) == n and kept == sorted(kept)
        assert kept[-1] == T - 1 and 0 <= kept[0]
        if n >= 2:
            assert kept[0] == 0
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]  # round half up of i*999/4
    assert space_timesteps(1000, 1) == [999]
    assert space_timesteps(1000, 1000) == list(range(1000))


def test_section_and_ddim_specs():
    # sections [0,50) and [50,100): round-half-up(i*49/9) and 50 + round-half-up(i*49/4)
    assert space_timesteps(100, "10,5") == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49,
                                           50, 62, 75, 87, 99]
    assert space_timesteps(1000, "20") == space_timesteps(1000, 20)
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    # uneven sections: 10 steps split 4,3,3
    assert space_timesteps(10, "1,1,1") == [3, 6, 9]


@pytest.mark.parametrize("spec, match", [(0, "1..60"), (61, "1..60"), ("ddim14", "plain count"),
                                         ("abc", "comma-separated"), ("40,1", "section 0")])
def test_bad_specs_say_how_to_fix(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(60 if spec != "ddim14" else 100, spec)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_respaced_alpha_bar_equals_the_original_chain(schedule):
    base = GaussianDiffusion(get_betas(schedule, 1000))
    for spec in (1, 7, 20, 300, "10,15,20", "ddim50", 1000):
        kept = space_timesteps(1000, spec)
        spaced, tmap = respace(base, kept)
        assert tmap.dtype == np.int64 and tmap.tolist() == kept
        assert np.array_equal(spaced.alphas_cumprod, base.alphas_cumprod[tmap])
        # the recomputed betas reproduce those alpha_bar: beta'_i = 1 - abar_k_i / abar_k_{i-1}
        np.testing.assert_allclose(np.cumprod(1 - spaced.betas), spaced.alphas_cumprod,
                                   rtol=1e-10, atol=1e-15)  # 1 - beta loses digits near 1
        assert (spaced.betas > 0).all() and (spaced.betas <= 1).all()
    full, _ = respace(base, range(1000))
    np.testing.assert_allclose(full.betas, base.betas, rtol=1e-12)


def test_respaced_chain_predicts_the_same_x0_at_kept_steps():
    base = GaussianDiffusion(get_betas("linear", 1000))
    spaced, tmap = respace(base, space_timesteps(1000, 10))
    xt = torch.randn(1, 3, 4, 4, generator=_gen(20), dtype=F64)
    eps = torch.randn(1, 3, 4, 4, generator=_gen(21), dtype=F64)
    for i in range(10):
        a = spaced.predict_xstart_from_eps(xt, torch.tensor([i]), eps)
        b = base.predict_xstart_from_eps(xt, torch.tensor([int(tmap[i])]), eps)
        assert torch.equal(a, b)


def test_single_step_chain_jumps_to_the_predicted_x0():
    base = GaussianDiffusion(get_betas("linear", 1000))
    spaced, tmap = respace(base, space_timesteps(1000, 1))
    assert tmap.tolist() == [999] and spaced.num_timesteps == 1
    xt = torch.randn(1, 3, 4, 4, generator=_gen(22), dtype=F64)
    out = spaced.p_mean_variance(torch.zeros(1, 6, 4, 4, dtype=F64), xt, torch.tensor([0]),
                                 clip_denoised=False)
    torch.testing.assert_close(out["mean"], out["pred_xstart"])
    assert torch.isfinite(out["log_variance"]).all()
