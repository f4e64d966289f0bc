"""Schedules, samplers and classifier-free guidance, checked against closed forms on Gaussian data.

For data x0 ~ N(mu, v) per pixel, x_t ~ N(alpha mu, S_t^2) with S_t^2 = alpha^2 v + sigma^2, the true
eps-predictor is E[eps | x_t] = sigma (x_t - alpha mu) / S_t^2, and the probability-flow ODE keeps
z = (x_t - alpha_t mu) / S_t fixed along each path.
"""

import math

import pytest
import torch

from dimstudy.diffusion import (
    GRIDS,
    SAMPLERS,
    SCHEDULES,
    VPSDE,
    DiscreteDDPM,
    append_dims,
    build_schedule,
    cfg_eps,
    drop_labels,
    sample,
    time_grid,
)

MU, VAR = 0.5, 0.25


def gaussian_eps(schedule, mu, var):
    """True eps-predictor for data N(mu, var) per pixel; mu, var broadcast against x (B, C, H, W)."""

    def model(x, t_model, y=None):
        t = schedule.continuous_time(t_model.double())
        alpha, sigma = (append_dims(v, x.ndim) for v in schedule.marginal(t))
        return (sigma * (x - alpha * mu) / (alpha**2 * var + sigma**2)).to(x.dtype)

    return model


def gaussian_marginal(schedule, t: float, z):
    """The point of N(alpha_t mu, S_t^2) with standard score z (the exact PF-ODE path through z)."""
    alpha, sigma = (v.item() for v in schedule.marginal(torch.tensor(t, dtype=torch.float64)))
    return alpha * MU + math.sqrt(alpha**2 * VAR + sigma**2) * z


@pytest.fixture(params=list(SCHEDULES))
def schedule(request):
    return build_schedule(request.param)


# ---------------------------------------------------------------- schedules


def test_schedule_identities(schedule):
    t = torch.linspace(schedule.eps, 1.0, 97, dtype=torch.float64)
    alpha, sigma = schedule.marginal(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    torch.testing.assert_close(schedule.lambda_(t), torch.log(alpha / sigma))
    torch.testing.assert_close(schedule.snr(t), alpha**2 / sigma**2)
    torch.testing.assert_close(schedule.inverse_lambda(schedule.lambda_(t)), t)
    assert (schedule.lambda_(t).diff() < 0).all()  # SNR falls with t
    torch.testing.assert_close(schedule.continuous_time(schedule.model_time(t)), t)
    # beta(t) = -2 d log(alpha)/dt, checked by central differences off the grid knots
    tm = t[1:-1] + 1e-4
    fd = -(schedule.log_alpha(tm + 1e-7) - schedule.log_alpha(tm - 1e-7)) / 1e-7
    torch.testing.assert_close(schedule.beta(tm), fd, rtol=1e-5, atol=1e-5)


def test_vpsde_closed_form():
    s = VPSDE()
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.log_alpha(t), -0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    torch.testing.assert_close(s.model_time(t), t * 999)
    u = s.sample_train_t(10_000, generator=torch.Generator().manual_seed(0))
    assert u.dtype == torch.float32 and 0.0 <= u.min() < 0.001 and 0.999 < u.max() < 1.0


@pytest.mark.parametrize(
    "name,first,last", [("ddpm_linear", 1e-4, 0.02), ("ddpm_scaled_linear", 0.00085, 0.012)]
)
def test_ddpm_matches_discrete_alphas(name, first, last):
    s = build_schedule(name)
    assert s.betas[0].item() == pytest.approx(first) and s.betas[-1].item() == pytest.approx(last)
    if name == "ddpm_scaled_linear":  # linear in sqrt(beta)
        torch.testing.assert_close(s.betas.sqrt().diff(), s.betas.sqrt().diff()[:1].expand(999))
    alpha_bar = torch.cumprod(1 - s.betas, 0)
    # discrete step n sits at t = n / N and is fed to the network as the label n in 1..1000, the public
    # DiM / U-ViT convention; label n belongs to alpha_bar_n = prod_{k <= n} (1 - beta_k)
    alpha, _ = s.marginal(s.grid)
    torch.testing.assert_close(alpha**2, alpha_bar)
    torch.testing.assert_close(s.model_time(s.grid), torch.arange(1, 1001, dtype=torch.float64))
    idx = s.model_time(s.sample_train_t(5000, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(idx, idx.round(), atol=1e-3, rtol=0)
    assert idx.round().min() == 1 and idx.round().max() == 1000 and len(idx.round().unique()) > 900
    # the least noisy label is 1 with alpha_bar_1 = 1 - beta_1, the noisiest 1000
    a1, _ = s.marginal(s.continuous_time(torch.tensor([1.0], dtype=torch.float64)))
    torch.testing.assert_close(a1**2, 1 - s.betas[:1])


def test_training_loss_of_true_predictor_is_zero(schedule):
    # Point-mass data (v = 0, mu = the batch itself): the true eps-predictor recovers eps exactly.
    x0 = torch.randn(64, 3, 8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = schedule.training_loss(
        gaussian_eps(schedule, x0, 0.0), x0, generator=torch.Generator().manual_seed(2)
    )
    assert loss.shape == (64,)
    assert loss.max().item() < 1e-9


def test_training_loss_of_wrong_predictor_is_not_zero(schedule):
    x0 = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    loss = schedule.training_loss(
        lambda x, t, y: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(2)
    )
    assert loss.mean().item() == pytest.approx(1.0, abs=0.2)  # E[eps^2] = 1


# ---------------------------------------------------------------- samplers

# steps and grid per sampler: enough for ~1-2% bias, below the tolerances
SAMPLER_SETTINGS = {
    "euler_maruyama": dict(steps=500),
    "ddim": dict(steps=200, grid="logsnr"),
    "dpm_solver": dict(steps=50, grid="logsnr"),
    "dpm_solver++": dict(steps=50, grid="logsnr"),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampler_recovers_gaussian(schedule, sampler):
    g = torch.Generator().manual_seed(0)
    shape = (4000, 1, 2, 2)  # 16k i.i.d. pixels: s.e. 0.004 on the mean, 1.1% on the variance
    x_T = gaussian_marginal(schedule, 1.0, torch.randn(shape, generator=g))  # exact prior at T
    x = sample(
        gaussian_eps(schedule, MU, VAR),
        schedule,
        shape,
        sampler=sampler,
        generator=g,
        x_T=x_T,
        **SAMPLER_SETTINGS[sampler],
    )
    assert x.shape == shape and torch.isfinite(x).all()
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.var().item() == pytest.approx(VAR, rel=0.05)


def _flow_error(schedule, sampler, steps, grid):
    """Max deviation from the exact PF-ODE path, over paths started at z in [-3, 3]."""
    z = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(4, 1, 4, 4)
    x = sample(
        gaussian_eps(schedule, MU, VAR),
        schedule,
        z.shape,
        sampler=sampler,
        steps=steps,
        grid=grid,
        x_T=gaussian_marginal(schedule, 1.0, z),
    )
    return (x - gaussian_marginal(schedule, schedule.eps, z)).abs().max().item()


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("dpm_solver", 2), ("dpm_solver++", 2)])
def test_deterministic_samplers_converge_at_their_order(schedule, sampler, order):
    # logSNR grid: the error shrinks by 2^order when the steps double
    coarse, fine = (_flow_error(schedule, sampler, n, "logsnr") for n in (20, 40))
    assert 2**order * 0.8 < coarse / fine < 2**order * 1.15
    if order == 2:
        assert fine < 6e-3
    # time-uniform grid (the discrete default): still converges
    coarse, fine = (_flow_error(schedule, sampler, n, "time_uniform") for n in (40, 80))
    assert fine < 0.06 and coarse / fine > 1.8


def test_time_grids(schedule):
    for kind in GRIDS:
        ts = time_grid(schedule, 10, schedule.eps, kind)
        assert ts.shape == (11,) and ts[0] == 1.0 and ts[-1] == schedule.eps and (ts.diff() < 0).all()
    lams = schedule.lambda_(time_grid(schedule, 10, schedule.eps, "logsnr"))
    torch.testing.assert_close(lams.diff(), lams.diff()[:1].expand(10))


def test_sample_default_prior_generator_and_progress():
    s = VPSDE()
    model = gaussian_eps(s, MU, VAR)
    a = sample(model, s, (2, 1, 4, 4), steps=5, generator=torch.Generator().manual_seed(3), progress=True)
    b = sample(model, s, (2, 1, 4, 4), steps=5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_sample_passes_labels_and_guidance_to_the_model():
    seen = []

    def model(x, t, y=None):
        seen.append((x.shape[0], t.clone(), y.clone()))
        return torch.zeros_like(x)

    s = DiscreteDDPM()
    y = torch.tensor([3, 1])
    sample(model, s, (2, 1, 4, 4), sampler="ddim", steps=4, y=y, cfg_scale=0.4, null_class=10)
    assert len(seen) == 4 and all(n == 4 for n, _, _ in seen)  # one batched forward per step
    assert seen[0][2].tolist() == [3, 1, 10, 10]
    # time-uniform grid from t = 1 to 1/N; the network sees the label t * N (1000 at t = 1)
    t_seen = torch.stack([t for _, t, _ in seen])  # (4 steps, 2B)
    expected = 1000 * torch.linspace(1.0, 0.001, 5)[:4]  # 1000, 750.25, 500.5, 250.75
    torch.testing.assert_close(t_seen, expected[:, None].expand(4, 4))


def test_unknown_names_list_valid_choices():
    with pytest.raises(
        ValueError, match="unknown sampler 'heun'; valid choices: euler_maruyama, ddim, dpm_solver"
    ):
        sample(None, VPSDE(), (1, 1, 2, 2), sampler="heun")
    with pytest.raises(
        ValueError, match="unknown schedule 'cosine'; valid choices: vpsde, ddpm_linear, ddpm_scaled"
    ):
        build_schedule("cosine")
    with pytest.raises(ValueError, match="valid choices: linear, scaled_linear"):
        DiscreteDDPM(beta_schedule="cosine")
    with pytest.raises(ValueError, match="valid choices: time_uniform, logsnr"):
        time_grid(VPSDE(), 10, 1e-3, "karras")


# ---------------------------------------------------------------- classifier-free guidance


class ToyConditional:
    """eps = 0.5 x + emb[y] (+ t / 1000); counts forwards and their batch sizes."""

    def __init__(self, num_classes=10):
        self.emb = torch.randn(num_classes + 1, generator=torch.Generator().manual_seed(0))
        self.batches = []

    def __call__(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return 0.5 * x + append_dims(self.emb[y] + t / 1000, x.ndim)


def test_cfg_scale_zero_is_conditional_and_form_is_linear():
    model = ToyConditional()
    x, t, y = torch.randn(3, 2, 4, 4), torch.full((3,), 500.0), torch.tensor([0, 4, 9])
    torch.testing.assert_close(cfg_eps(model, x, t, y, 0.0, 10), model(x, t, y))
    model.batches.clear()
    out = cfg_eps(model, x, t, y, 0.4, 10)
    assert model.batches == [6]  # cond and uncond in one forward
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(out, cond + 0.4 * (cond - uncond))
    with pytest.raises(ValueError, match="null_class"):
        cfg_eps(model, x, t, y, 1.0, None)


def test_drop_labels():
    y = torch.arange(10).repeat(1000)
    dropped = drop_labels(y, 0.15, 10, torch.Generator().manual_seed(0))
    is_null = dropped == 10
    assert is_null.float().mean().item() == pytest.approx(0.15, abs=0.02)
    assert (dropped[~is_null] == y[~is_null]).all()
    assert (drop_labels(y, 0.0, 10) == y).all() and (drop_labels(y, 1.0, 10) == 10).all()


def test_small_sample_grids_are_enlarged_by_whole_factors(tmp_path):
    """8 samples of 16 px, 3 per row, would make a 56 px wide grid; it comes out >= 512 px wide, each sample pixel
    an 11 x 11 block (the smallest whole factor that reaches 512: 3 x 16 x 11 = 528)."""
    import numpy as np
    from PIL import Image

    from dimstudy.diffusion.sampling import save_grid

    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grid = np.asarray(Image.open(save_grid(x, tmp_path / "small.png")))
    assert grid.shape == (3 * 176 + 4 * 2, 3 * 176 + 4 * 2, 3)  # 3 x 3 cells of 16 x 11 px, 2 px padding
    first = grid[2:178, 2:178]  # sample 0, enlarged
    expected = np.round(((x[0] + 1) / 2 * 255).clamp(0, 255).permute(1, 2, 0).numpy()).astype(np.uint8)
    assert (first == np.repeat(np.repeat(expected, 11, axis=0), 11, axis=1)).all()
    big = np.asarray(Image.open(save_grid(torch.zeros(4, 3, 300, 300), tmp_path / "big.png")))
    assert big.shape[1] == 2 * 300 + 3 * 2  # already wide enough: unchanged
