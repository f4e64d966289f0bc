"""Noise schedules in continuous time, behind one interface.

Every schedule is variance preserving: x_t = alpha_t * x0 + sigma_t * eps with alpha_t^2 + sigma_t^2 = 1,
for t in [eps, T] with T = 1. Samplers, guidance and the trainer only use the `NoiseSchedule` interface.

Conventions (the trainer and the samplers rely on them):
- `VPSDE`: the network sees t * 999 (U-ViT / DiM CIFAR). Training draws t ~ U(train_eps, 1) with
  train_eps = 0 by default, exactly as U-ViT's `sde.sample` (t_init = 0). Sampling ends at eps = 1e-3.
- `DiscreteDDPM`: discrete step n in {1, ..., N} (alpha_bar_n = prod_{k<=n} (1 - beta_k)) sits at continuous
  time t_n = n / N, and the network sees the label n = t * N, 1..1000 for N = 1000, as the public DiM and
  U-ViT latent code feed it (training draws n in 1..N; their DPM-Solver feeds 1000 * t). dimstudy fed n - 1
  (0..999) before issue 13; checkpoints trained so are one label off (README). Between grid points
  log(alpha) is interpolated linearly in t (DPM-Solver's NoiseScheduleVP('discrete')). Training draws a
  uniform integer index, so the network sees integers (up to float32 rounding, < 1e-4).
  Sampling ends at eps = 1 / N (the first grid point) on a time-uniform grid by default.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """(B,) -> (B, 1, ..., 1) with `ndim` dims in total, to broadcast per-sample scalars over images."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class NoiseSchedule(ABC):
    """A variance-preserving schedule in continuous time t in [eps, T]."""

    T: float = 1.0
    eps: float  # default end time of sampling
    default_grid: str  # default sampling time grid, see samplers.GRIDS
    # continuous times of a discrete model's training steps, (N,) float64; None for continuous models
    grid: Tensor | None = None

    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log alpha_t, same shape as t."""

    @abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """Continuous-time noise rate beta(t) = -2 d log(alpha_t)/dt (the VP-SDE's g(t)^2)."""

    @abstractmethod
    def inverse_lambda(self, lam: Tensor) -> Tensor:
        """The time t with lambda_(t) = lam."""

    @abstractmethod
    def model_time(self, t: Tensor) -> Tensor:
        """Continuous t -> the time value the network is fed."""

    @abstractmethod
    def continuous_time(self, t_model: Tensor) -> Tensor:
        """Inverse of `model_time` (for analytic denoisers that receive network time)."""

    @abstractmethod
    def sample_train_t(self, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """(n,) float32 continuous training times."""

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t), each shaped like t; x_t = alpha_t * x0 + sigma_t * eps."""
        log_alpha = self.log_alpha(t)
        return log_alpha.exp(), self._sigma_from_log_alpha(log_alpha)

    def lambda_(self, t: Tensor) -> Tensor:
        """Half-log-SNR lambda_t = log(alpha_t / sigma_t)."""
        log_alpha = self.log_alpha(t)
        return log_alpha - self._sigma_from_log_alpha(log_alpha).log()

    def snr(self, t: Tensor) -> Tensor:
        """alpha_t^2 / sigma_t^2."""
        return torch.exp(2.0 * self.lambda_(t))

    @staticmethod
    def _sigma_from_log_alpha(log_alpha: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * log_alpha))  # sigma^2 = 1 - alpha^2, precise near t = 0

    @staticmethod
    def _log_alpha_from_lambda(lam: Tensor) -> Tensor:
        return -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)  # alpha^2 = 1 / (1 + e^{-2 lam})

    def training_loss(
        self, model, x0: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Per-sample eps-prediction MSE, (B,), averaged over C, H, W.

        x0 (B, C, H, W); `generator` (if given) must live on x0's device.
        """
        t = self.sample_train_t(x0.shape[0], x0.device, generator)  # (B,)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        alpha, sigma = self.marginal(t)
        x_t = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * noise
        pred = model(x_t, self.model_time(t), y)
        return (pred.float() - noise.float()).pow(2).flatten(1).mean(1)


class VPSDE(NoiseSchedule):
    """Continuous VP-SDE (Song et al. 2021): beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3, train_eps: float = 0.0
    ):
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)
        self.eps, self.train_eps = float(eps), float(train_eps)
        self.default_grid = "logsnr"  # as U-ViT's CIFAR DPM-Solver

    def log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        # Solve 1/4 t^2 (b1 - b0) + 1/2 t b0 + log_alpha = 0 for t >= 0, written to avoid cancellation.
        d = self.beta_1 - self.beta_0
        c = -4.0 * d * self._log_alpha_from_lambda(lam)  # >= 0
        return c / (torch.sqrt(self.beta_0**2 + c) + self.beta_0) / d

    def model_time(self, t: Tensor) -> Tensor:
        return t * 999.0

    def continuous_time(self, t_model: Tensor) -> Tensor:
        return t_model / 999.0

    def sample_train_t(self, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, generator=generator, device=device)
        return self.train_eps + (1.0 - self.train_eps) * u

    def __repr__(self) -> str:
        return f"VPSDE(beta_min={self.beta_0}, beta_max={self.beta_1})"


class DiscreteDDPM(NoiseSchedule):
    """Discrete DDPM betas made continuous by piecewise-linear interpolation of log(alpha) in t."""

    BETA_DEFAULTS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}

    def __init__(
        self,
        num_steps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
    ):
        if beta_schedule not in self.BETA_DEFAULTS:
            raise ValueError(
                f"unknown beta_schedule {beta_schedule!r}; valid choices: {', '.join(self.BETA_DEFAULTS)}"
            )
        start, end = self.BETA_DEFAULTS[beta_schedule]
        start = start if beta_start is None else beta_start
        end = end if beta_end is None else beta_end
        n = int(num_steps)
        if beta_schedule == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        else:  # LDM / Stable Diffusion
            betas = torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
        self.num_steps, self.beta_schedule = n, beta_schedule
        self.betas = betas  # (N,)
        self.log_alphas = 0.5 * torch.cumsum(torch.log1p(-betas), 0)  # (N,) log sqrt(alpha_bar_i), decreasing
        self.grid = torch.arange(1, n + 1, dtype=torch.float64) / n  # (N,) t_n = n / N, n = 1..N
        self.eps = 1.0 / n
        self.default_grid = "time_uniform"  # as U-ViT's latent ImageNet DPM-Solver

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Segment k (knots t_k, t_{k+1}) holding t, or the one below t at a knot; end segments extrapolate."""
        u = t.double() * self.num_steps - 1.0  # fractional index
        k = (torch.ceil(u) - 1).clamp(0, self.num_steps - 2).long()
        la = self.log_alphas.to(t.device)
        return u - k, la[k], la[k + 1]

    def log_alpha(self, t: Tensor) -> Tensor:
        frac, la0, la1 = self._segment(t)
        return (la0 + frac * (la1 - la0)).to(t.dtype)

    def beta(self, t: Tensor) -> Tensor:
        _, la0, la1 = self._segment(t)
        return (-2.0 * self.num_steps * (la1 - la0)).to(t.dtype)

    def inverse_lambda(self, lam: Tensor) -> Tensor:
        target = self._log_alpha_from_lambda(lam.double())
        la = self.log_alphas.to(lam.device)
        # segment k with la[k] >= target >= la[k+1]; -la is increasing
        k = (torch.searchsorted(-la, -target) - 1).clamp(0, self.num_steps - 2)
        frac = (target - la[k]) / (la[k + 1] - la[k])
        return ((k + 1 + frac) / self.num_steps).to(lam.dtype)

    def model_time(self, t: Tensor) -> Tensor:
        return t * self.num_steps  # label n in 1..N at grid point t_n = n / N (public DiM / U-ViT)

    def continuous_time(self, t_model: Tensor) -> Tensor:
        return t_model / self.num_steps

    def sample_train_t(self, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        i = torch.randint(0, self.num_steps, (n,), generator=generator, device=device)
        return (i + 1).float() / self.num_steps

    def __repr__(self) -> str:
        b = self.betas
        return f"DiscreteDDPM(num_steps={self.num_steps}, {self.beta_schedule}, {b[0].item():.3g}->{b[-1].item():.3g})"


SCHEDULES = {
    "vpsde": VPSDE,
    "ddpm_linear": lambda **kw: DiscreteDDPM(beta_schedule="linear", **kw),
    "ddpm_scaled_linear": lambda **kw: DiscreteDDPM(beta_schedule="scaled_linear", **kw),
}


def build_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a schedule by registry name (see SCHEDULES); kwargs go to its constructor."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid choices: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
