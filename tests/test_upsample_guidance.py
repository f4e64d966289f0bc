"""Upsample guidance, the DiM paper's Eq. (4).

Consistent analytic denoiser: high-resolution data with i.i.d. N(mu, v) pixels pools (m x m average) to
i.i.d. N(mu, v / m^2) pixels. A Gaussian eps-predictor whose pixel variance scales with the pixel count,
v(H, W) = v_hi * H W / (H_hi W_hi), is then exact at both resolutions. For it the bracket of Eq. (4)
vanishes: with y = D_m(x_t) / sqrt(P_t), alpha' = alpha_t / sqrt(P_t), sigma' = sigma_t / (m sqrt(P_t)),
    eps_lo(y, tau) / m = sigma' (y - alpha' mu) / (m (alpha'^2 v / m^2 + sigma'^2))
                       = sigma_t (D_m(x_t) - alpha_t mu) / (alpha_t^2 v + sigma_t^2) = D_m(eps_hi(x_t, t)).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from dimstudy.diffusion import (
    VPSDE,
    DiscreteDDPM,
    UpsampleGuidance,
    append_dims,
    build_schedule,
    cfg_eps,
    guidance_weight,
    power_calibration,
    sample,
    upsample_tau,
)

MU, VAR_HI = 0.3, 0.8


def pooled_gaussian_eps(schedule, hi_hw, mu=MU, var_hi=VAR_HI):
    """True eps-predictor for i.i.d. Gaussian pixels at any resolution obtained by pooling hi_hw."""

    def model(x, t_model, y=None):
        var = var_hi * x.shape[-2] * x.shape[-1] / (hi_hw[0] * hi_hw[1])
        alpha, sigma = (
            append_dims(v, x.ndim) for v in schedule.marginal(schedule.continuous_time(t_model.double()))
        )
        return (sigma * (x - alpha * mu) / (alpha**2 * var + sigma**2)).to(x.dtype)

    return model


def noisy_batch(schedule, t: float, shape, seed=0):
    """x_t for i.i.d. N(MU, VAR_HI) data, with t as a (B,) float32 tensor."""
    g = torch.Generator().manual_seed(seed)
    x0 = MU + math.sqrt(VAR_HI) * torch.randn(shape, generator=g, dtype=torch.float64)
    tt = torch.full((shape[0],), t)
    alpha, sigma = (append_dims(v, 4).double() for v in schedule.marginal(tt))
    return (alpha * x0 + sigma * torch.randn(shape, generator=g, dtype=torch.float64)), tt


def guidance_term(guide, x, t):
    return guide(x, t) - cfg_eps(guide.model, x, guide.schedule.model_time(t), None, 0.0, None)


# ---------------------------------------------------------------- tau, P_t, w_t


@pytest.mark.parametrize("m", [2, 3])
def test_tau_has_m_squared_snr_and_is_not_later(m):
    s = VPSDE()
    t = torch.linspace(1e-3, 1.0, 200, dtype=torch.float64)
    tau = upsample_tau(s, t, m)
    torch.testing.assert_close(s.lambda_(tau) - s.lambda_(t), torch.full_like(t, math.log(m)))
    torch.testing.assert_close(s.snr(tau) / s.snr(t), torch.full_like(t, float(m * m)))
    assert (tau < t).all()


@pytest.mark.parametrize("name", ["ddpm_linear", "ddpm_scaled_linear"])
@pytest.mark.parametrize("m", [2, 3])
def test_discrete_tau_is_the_closest_grid_snr_not_later_than_t(name, m):
    s = build_schedule(name)
    t = torch.linspace(0.02, 1.0, 50, dtype=torch.float64)
    tau = upsample_tau(s, t, m)
    assert (tau <= t).all()
    idx = s.model_time(tau)
    torch.testing.assert_close(idx, idx.round())  # on the training grid
    snr_grid, target = s.snr(s.grid), m**2 * s.snr(t)
    for ti, tau_i, target_i in zip(t, tau, target, strict=True):
        allowed = s.grid <= ti
        best = s.grid[allowed][(snr_grid[allowed] - target_i).abs().argmin()]
        assert tau_i == best
    # and close to the exact SNR relation where the grid is fine
    lam_gap = s.lambda_(tau) - s.lambda_(t)
    assert (lam_gap[t > 0.2] - math.log(m)).abs().max() < 0.03


@pytest.mark.parametrize("m", [2, 3])
def test_power_calibration_restores_unit_power(m):
    s = VPSDE()
    t = torch.tensor([0.1, 0.5, 0.9])
    abar = s.marginal(t)[0] ** 2
    torch.testing.assert_close(power_calibration(s, t, m), abar + (1 - abar) / m**2)
    # unit-power data that is constant on m x m blocks keeps its power under D_m; the noise loses 1/m^2
    g = torch.Generator().manual_seed(0)
    x0 = F.interpolate(torch.randn(3, 1, 60, 60, generator=g), scale_factor=m, mode="nearest")
    alpha, sigma = (append_dims(v, 4) for v in s.marginal(t))
    x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=g)
    power = (F.avg_pool2d(x_t, m) / append_dims(power_calibration(s, t, m).sqrt(), 4)).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(power, torch.ones(3), atol=0.04, rtol=0)


def test_guidance_weight_is_theta_for_the_noisiest_eta_then_zero():
    t = torch.tensor([1.0, 0.9, 0.75, 0.71, 0.69, 0.5, 0.01])
    w = guidance_weight(t, theta=2.5, eta=0.3, t_start=1.0, t_end=0.0)
    assert w.tolist() == [2.5, 2.5, 2.5, 2.5, 0.0, 0.0, 0.0]
    # a 50-step uniform time grid guides exactly its first 30% (15 steps)
    grid = torch.linspace(1.0, 1e-3, 51)[:-1]
    assert (guidance_weight(grid, 1.0, 0.3, 1.0, 1e-3) == 1.0).sum() == 15


# ---------------------------------------------------------------- Eq. (4)


@pytest.mark.parametrize("m,hw", [(2, (8, 12)), (3, (9, 6)), (2, (6, 6))])
@pytest.mark.parametrize("t", [1.0, 0.85, 0.72])
def test_guidance_vanishes_for_a_consistent_denoiser(m, hw, t):
    s = VPSDE()
    guide = UpsampleGuidance(pooled_gaussian_eps(s, hw), s, m=m)
    x, tt = noisy_batch(s, t, (4, 2, *hw))
    term = guidance_term(guide, x, tt)
    assert term.shape == x.shape
    assert term.abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["ddpm_linear", "ddpm_scaled_linear"])
def test_guidance_nearly_vanishes_on_a_discrete_grid(name):
    # tau is rounded to the training grid, so the calibration is exact only up to one grid step
    s = build_schedule(name)
    hw = (8, 12)
    guide = UpsampleGuidance(pooled_gaussian_eps(s, hw), s, m=2)
    for t in (1.0, 0.85, 0.72):
        x, tt = noisy_batch(s, t, (4, 2, *hw))
        eps = guide.model(x, s.model_time(tt))
        assert guidance_term(guide, x, tt).abs().max().item() < 1e-3 * eps.abs().max().item()


@pytest.mark.parametrize("m,hw", [(2, (8, 12)), (3, (6, 9))])
def test_full_weight_moves_the_pooled_prediction_onto_the_low_res_one(m, hw):
    # Any model: with w = 1, D_m(guided eps) = eps_lo / m and the correction is constant on m x m blocks.
    def model(x, t, y=None):
        return torch.tanh(x.roll(1, -1) * 1.7) + append_dims(t / 1000, 4)

    s = DiscreteDDPM()
    guide = UpsampleGuidance(model, s, m=m)
    x, tt = noisy_batch(s, 0.9, (3, 2, *hw))
    out = guide(x, tt)
    assert out.shape == x.shape
    tau = upsample_tau(s, tt, m)
    x_lo = F.avg_pool2d(x, m) / append_dims(power_calibration(s, tt, m).sqrt(), 4)
    torch.testing.assert_close(F.avg_pool2d(out, m), model(x_lo, s.model_time(tau)) / m)
    term = guidance_term(guide, x, tt)
    assert term.abs().max() > 0.05
    torch.testing.assert_close(term, F.interpolate(F.avg_pool2d(term, m), scale_factor=m, mode="nearest"))


def test_no_guidance_after_eta_and_no_low_res_call():
    calls = []

    def model(x, t, y=None):
        calls.append(tuple(x.shape[-2:]))
        return x

    s = VPSDE()
    guide = UpsampleGuidance(model, s, m=2, eta=0.3)
    x = torch.randn(2, 1, 4, 6)
    torch.testing.assert_close(guide(x, torch.full((2,), 0.5)), x)
    assert calls == [(4, 6)]
    guide(x, torch.full((2,), 0.95))
    assert calls[1:] == [(4, 6), (2, 3)]


def test_rejects_sizes_not_divisible_by_m():
    guide = UpsampleGuidance(lambda x, t, y=None: x, VPSDE(), m=3)
    with pytest.raises(ValueError, match="divisible by m=3"):
        guide(torch.randn(1, 1, 6, 8), torch.ones(1))


def test_cfg_is_applied_to_both_predictions():
    seen = []

    def model(x, t, y=None):
        seen.append((tuple(x.shape), y.tolist()))
        return 0.1 * x + append_dims(y.float(), 4)

    s = VPSDE()
    guide = UpsampleGuidance(model, s, m=2, cfg_scale=0.4, null_class=10)
    y = torch.tensor([3, 7])
    guide(torch.randn(2, 1, 4, 4), torch.ones(2), y)
    assert seen == [((4, 1, 4, 4), [3, 7, 10, 10]), ((4, 1, 2, 2), [3, 7, 10, 10])]


# ---------------------------------------------------------------- inside the samplers


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "dpm_solver++", "euler_maruyama"])
def test_samplers_accept_upsample_guidance(sampler):
    s = VPSDE()
    hw = (6, 4)
    model = pooled_gaussian_eps(s, hw)
    low_res_calls = []

    def counting(x, t, y=None):
        if x.shape[-1] != hw[1]:
            low_res_calls.append(t[0].item())
        return model(x, t, y)

    guide = UpsampleGuidance(counting, s, m=2)
    kw = dict(sampler=sampler, steps=50, grid="time_uniform", x_T=torch.randn(8, 1, *hw))
    guided = sample(None, s, (8, 1, *hw), eps_fn=guide, generator=torch.Generator().manual_seed(0), **kw)
    plain = sample(model, s, (8, 1, *hw), generator=torch.Generator().manual_seed(0), **kw)
    assert len(low_res_calls) == 15  # the noisiest 30% of 50 steps
    torch.testing.assert_close(guided, plain, atol=1e-4, rtol=1e-4)  # the term vanishes for this model
    with pytest.raises(ValueError, match="cfg_scale"):
        sample(None, s, (1, 1, *hw), eps_fn=guide, cfg_scale=1.0)
