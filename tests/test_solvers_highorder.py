"""DPM-Solver++(3M) and UniPC against closed forms: exact x0 from an oracle denoiser, the
observed order on Gaussian data (exact ODE solution), the calls they make, determinism."""

from __future__ import annotations

import pytest
import torch
from test_solvers import (
    SHAPE,
    T,
    gaussian_data_model,
    gen,
    known_x0,
    oracle,
    run,
    v_oracle,
)

from isdm.diffusion import GaussianDiffusion, get_betas
from isdm.solvers import logsnr_timesteps, resolve_spacing
from isdm.solvers.unipc import unipc_coefficients

HIGH_ORDER = [("dpmpp3m", {}), ("dpmpp3m", {"order": 2}), ("unipc", {}), ("unipc", {"order": 3}),
              ("unipc", {"order": 1}), ("unipc", {"corrector": False})]


@pytest.fixture(scope="module")
def chain() -> GaussianDiffusion:
    return GaussianDiffusion(get_betas("linear", T))


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("steps", [2, 3, 7, 25, 300])
@pytest.mark.parametrize("name,opts", HIGH_ORDER)
def test_oracle_recovers_x0_exactly(chain, steps, name, opts, spacing):
    x0 = known_x0()
    out = run(name, oracle(chain, x0), torch.randn(SHAPE, generator=gen(1)), chain, steps,
              spacing=spacing, generator=gen(2), **opts)
    assert out.shape == SHAPE and out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,opts", HIGH_ORDER[:3])
def test_v_prediction_oracle_recovers_x0(chain, name, opts):
    v_chain = GaussianDiffusion(chain.betas, prediction="v")
    x0 = known_x0()
    v_fn = v_oracle(chain, x0)

    out = run(name, v_fn, torch.randn(SHAPE, generator=gen(1)), v_chain, 20, generator=gen(2),
              **opts)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def _gaussian_errors(chain, name, steps, **opts) -> dict[int, float]:
    """RMSE against the exact probability-flow ODE solution for data x0 ~ N(0.3, 0.5^2)."""
    mu, s0 = 0.3, 0.5
    model_fn = gaussian_data_model(chain, mu, s0)
    x_T = torch.randn(SHAPE, generator=gen(4)).double()
    abar_T = chain.alphas_cumprod[-1]
    exact = mu + s0 * (x_T - abar_T**0.5 * mu) / (abar_T * s0**2 + 1 - abar_T) ** 0.5
    errors = {}
    for n in steps:
        out = run(name, model_fn, x_T.float(), chain, n, generator=gen(0), clip_denoised=False,
                  **opts)
        errors[n] = (out.double() - exact).pow(2).mean().sqrt().item()
    return errors


def test_dpmpp3m_is_third_order_on_gaussian_data(chain):
    e3 = _gaussian_errors(chain, "dpmpp3m", (20, 40, 80))
    e2 = _gaussian_errors(chain, "dpmpp2m", (20, 40, 80))
    # error ratio per halving of the step: ~4 at second order, ~8 at third
    assert e3[20] / e3[40] > 5.0 and e3[40] / e3[80] > 6.0
    assert all(e3[n] < e2[n] / 1.5 for n in e3)


def test_unipc_corrector_raises_the_order(chain):
    with_c = _gaussian_errors(chain, "unipc", (20, 40, 80))
    without = _gaussian_errors(chain, "unipc", (20, 40, 80), corrector=False)
    assert with_c[20] / with_c[40] > 5.0 and with_c[40] / with_c[80] > 6.0
    assert 3.0 < without[20] / without[40] < 5.0  # UniP-2 alone: second order
    assert all(with_c[n] < without[n] / 1.5 for n in with_c)


def test_unipc_predictor_of_order_2_is_dpmpp2m(chain):
    """UniP-2 (bh2) and DPM-Solver++(2M) are the same update written two ways."""
    model_fn = gaussian_data_model(chain, 0.1, 0.4)
    x_T = torch.randn(SHAPE, generator=gen(5))
    a = run("unipc", model_fn, x_T, chain, 12, generator=gen(0), corrector=False)
    b = run("dpmpp2m", model_fn, x_T, chain, 12, generator=gen(0))
    torch.testing.assert_close(a, b, atol=2e-6, rtol=0)
    assert not torch.equal(a, run("unipc", model_fn, x_T, chain, 12, generator=gen(0)))


def test_unipc_coefficients_solve_the_order_conditions():
    """a solves sum_m a_m r_m^k = b_k (k < p) with b_k = phi_{k+2}(-h) (k+1)! / (e^{-h} - 1);
    one unknown has the closed-form weight 1/2 (Zhao et al., eq. 13)."""
    import math

    h, rks = 0.7, [-0.8, -1.9, 1.0]
    a = unipc_coefficients(h, rks)
    hh = -h
    phi = [math.expm1(hh) / hh - 1.0]  # the paper's h-scaled phi_2, phi_3, phi_4
    phi.append(phi[0] / hh - 1.0 / 2)
    phi.append(phi[1] / hh - 1.0 / 6)
    b = [phi[k] * math.factorial(k + 1) / math.expm1(hh) for k in range(3)]
    for k in range(3):
        assert sum(am * r**k for am, r in zip(a, rks)) == pytest.approx(b[k], rel=1e-12)
    assert unipc_coefficients(h, [1.0]) == [0.5] and unipc_coefficients(h, [-0.8]) == [0.5]


@pytest.mark.parametrize("name", ["dpmpp3m", "unipc"])
def test_one_call_per_step_at_the_logsnr_timesteps(chain, name):
    calls: list = []
    run(name, oracle(chain, known_x0(), calls), torch.randn(SHAPE, generator=gen(1)), chain, 9,
        generator=gen(0))
    assert [int(t[0]) for t in calls] == logsnr_timesteps(chain, 9)[::-1]
    assert resolve_spacing(name) == "logsnr"


@pytest.mark.parametrize("name,opts", HIGH_ORDER[:3])
def test_rows_are_independent_of_their_batch(chain, name, opts):
    model_fn = gaussian_data_model(chain, 0.1, 0.4)
    x_T = torch.randn((4, 3, 8, 8), generator=gen(10))
    batch = run(name, model_fn, x_T, chain, 8, generator=gen(0), **opts)
    for i in range(4):
        assert torch.equal(batch[i:i + 1], run(name, model_fn, x_T[i:i + 1], chain, 8,
                                               generator=gen(0), **opts))


@pytest.mark.parametrize("name", ["dpmpp3m", "unipc"])
def test_order_is_checked(chain, name):
    with pytest.raises(ValueError, match=f"{name} order=4: must be 1, 2 or 3"):
        run(name, oracle(chain, known_x0()), torch.randn(SHAPE), chain, 5, generator=gen(0),
            order=4)
