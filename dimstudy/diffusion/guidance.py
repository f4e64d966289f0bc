"""Classifier-free guidance (U-ViT form) and upsample guidance (the DiM paper's Eq. (4)).

Upsample guidance (Hwang et al. 2024, used by DiM for training-free 2x / 3x resolution):
    eps <- eps(x, t) + w_t * U_m( eps(D_m(x) / sqrt(P_t), tau) / m - D_m(eps(x, t)) )      # Eq. (4)
with D_m = m x m average pooling, U_m = nearest upsampling by m, P_t = abar_t + (1 - abar_t) / m^2
(abar_t = alpha_t^2). Why: D_m(x_t) = alpha_t D_m(x0) + (sigma_t / m) eps' with eps' = m D_m(eps) ~ N(0, I);
dividing by sqrt(P_t) restores unit power, giving a low-resolution sample with alpha' = alpha_t / sqrt(P_t),
sigma' = sigma_t / (m sqrt(P_t)), i.e. SNR' = m^2 SNR(t): the time tau with lambda(tau) = lambda(t) + log m.
The low-resolution prediction of eps' divided by m is then what D_m(eps(x, t)) should be.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .schedules import NoiseSchedule, append_dims

_PROGRESS_SLACK = 1e-6  # float32 time grids put step boundaries a rounding error off the eta cut


def cfg_eps(
    model, x: Tensor, t_model: Tensor, y: Tensor | None, scale: float, null_class: int | None
) -> Tensor:
    """eps = eps_c + s (eps_c - eps_u) (U-ViT form), cond and uncond batched in one forward.

    x (B, C, H, W), t_model (B,) network time, y (B,) long or None. scale 0 or y None -> plain model call.
    """
    if y is None or scale == 0.0:
        return model(x, t_model, y)
    if null_class is None:
        raise ValueError("classifier-free guidance needs null_class (the model's unconditional class id)")
    out = model(
        torch.cat([x, x]), torch.cat([t_model, t_model]), torch.cat([y, torch.full_like(y, null_class)])
    )
    eps_c, eps_u = out.chunk(2)  # (B, C, H, W) each
    return eps_c + scale * (eps_c - eps_u)


def drop_labels(
    y: Tensor, p_uncond: float, null_class: int, generator: torch.Generator | None = None
) -> Tensor:
    """Replace each label by null_class with probability p_uncond (CFG training); y (B,) long."""
    drop = torch.rand(y.shape, generator=generator, device=y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null_class), y)


def upsample_tau(schedule: NoiseSchedule, t: Tensor, m: int) -> Tensor:
    """tau with SNR(tau) = m^2 SNR(t), i.e. lambda(tau) = lambda(t) + log m, and tau <= t; t (B,).

    Continuous schedules solve it exactly with inverse_lambda. Discrete ones take the training grid point
    whose SNR is closest to m^2 SNR(t) among those not later than t.
    """
    lam_target = schedule.lambda_(t) + math.log(m)
    if schedule.grid is None:
        return torch.minimum(schedule.inverse_lambda(lam_target), t)
    grid = schedule.grid.to(t.device)  # (N,)
    dist = (schedule.snr(grid)[None, :] - torch.exp(2.0 * lam_target.double())[:, None]).abs()  # (B, N)
    dist = dist.masked_fill(grid[None, :] > t.double()[:, None], math.inf)
    return torch.minimum(grid[dist.argmin(1)].to(t.dtype), t)


def power_calibration(schedule: NoiseSchedule, t: Tensor, m: int) -> Tensor:
    """P_t = abar_t + (1 - abar_t) / m^2, the power of D_m(x_t) per pixel; t (B,)."""
    abar = schedule.marginal(t)[0] ** 2
    return abar + (1.0 - abar) / m**2


def guidance_weight(t: Tensor, theta: float, eta: float, t_start: float = 1.0, t_end: float = 1e-3) -> Tensor:
    """w_t of Eq. (4): theta over the noisiest fraction eta of the trajectory [t_start -> t_end], else 0.

    Progress is measured in time, (t_start - t) / (t_start - t_end), so on a uniform time grid of n
    steps exactly the first ceil(eta * n) steps are guided. t (B,) -> (B,).
    """
    progress = (t_start - t) / (t_start - t_end)
    return torch.where(progress < eta - _PROGRESS_SLACK, theta, 0.0).to(t.dtype)


class UpsampleGuidance:
    """Eq. (4) as an `eps_fn(x, t, y)` for `sample()`; t is continuous time, (B,).

    CFG (cfg_scale, null_class) is applied to both the high- and the low-resolution prediction.
    t_end is the sampler's end time used to measure the eta fraction (None: schedule.eps).
    """

    def __init__(
        self,
        model,
        schedule: NoiseSchedule,
        m: int = 2,
        theta: float = 1.0,
        eta: float = 0.3,
        cfg_scale: float = 0.0,
        null_class: int | None = None,
        t_end: float | None = None,
    ):
        self.model, self.schedule, self.m = model, schedule, int(m)
        self.theta, self.eta = float(theta), float(eta)
        self.cfg_scale, self.null_class = cfg_scale, null_class
        self.t_end = schedule.eps if t_end is None else float(t_end)

    def _eps(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        return cfg_eps(self.model, x, self.schedule.model_time(t), y, self.cfg_scale, self.null_class)

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        m = self.m
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"upsample guidance needs H and W divisible by m={m}, got {tuple(x.shape[-2:])}")
        eps_hi = self._eps(x, t, y)  # (B, C, H, W)
        w = guidance_weight(t, self.theta, self.eta, self.schedule.T, self.t_end)  # (B,)
        if not bool((w != 0).any()):
            return eps_hi
        tau = upsample_tau(self.schedule, t, m)
        p = power_calibration(self.schedule, t, m)
        x_lo = F.avg_pool2d(x, m) / append_dims(p.sqrt(), x.ndim)  # (B, C, H/m, W/m)
        eps_lo = self._eps(x_lo, tau, y)
        bracket = eps_lo / m - F.avg_pool2d(eps_hi, m)  # (B, C, H/m, W/m)
        return eps_hi + append_dims(w, x.ndim) * F.interpolate(bracket, scale_factor=m, mode="nearest")
