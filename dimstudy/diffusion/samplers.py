"""Samplers that integrate a schedule's reverse process with an eps-predictor.

Every sampler walks a time grid from T = 1 down to the end time `eps` (schedule default: 1e-3 for the
VP-SDE, 1/N for discrete DDPM) and calls `eps_fn(x, t)` with t the continuous time, (B,) float32.
- "euler_maruyama": reverse VP-SDE, U-ViT's layout: `steps` evaluations at `steps` grid points from T
  down to eps, then a last, noise-free step from eps to 0 (the paper's final-FID sampler, 1000 steps).
- "ddim": deterministic DDIM (eta = 0), i.e. first-order DPM-Solver.
- "dpm_solver": multistep DPM-Solver-2 on the noise prediction (Lu et al. 2022b), first step first order.
- "dpm_solver++": multistep DPM-Solver++(2M) on the data prediction.
`grid="time_uniform"` spaces the grid uniformly in t, `grid="logsnr"` uniformly in
lambda = log(alpha/sigma). grid=None takes time_uniform for Euler-Maruyama (U-ViT) and
`schedule.default_grid` for the ODE solvers (VP-SDE: logsnr, as U-ViT's CIFAR DPM-Solver; discrete DDPM:
time_uniform, as U-ViT's latent ImageNet one). On Gaussian data the 2nd-order solvers converge at order 2
on the logsnr grid; the time-uniform grid takes large lambda steps near t = eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .guidance import cfg_eps
from .schedules import NoiseSchedule

EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x (B, C, H, W), t continuous (B,)) -> eps like x
GRIDS = ("time_uniform", "logsnr")


def time_grid(schedule: NoiseSchedule, steps: int, t_end: float, kind: str = "time_uniform") -> Tensor:
    """(steps + 1,) float64 times from schedule.T down to t_end."""
    if kind == "time_uniform":
        return torch.linspace(schedule.T, t_end, steps + 1, dtype=torch.float64)
    if kind == "logsnr":
        lam_ends = schedule.lambda_(torch.tensor([schedule.T, t_end], dtype=torch.float64))
        ts = schedule.inverse_lambda(
            torch.linspace(lam_ends[0].item(), lam_ends[1].item(), steps + 1, dtype=torch.float64)
        )
        ts[0], ts[-1] = schedule.T, t_end  # pin the ends against round-off
        return ts
    raise ValueError(f"unknown time grid {kind!r}; valid choices: {', '.join(GRIDS)}")


def _alpha_sigma_lambda(schedule: NoiseSchedule, t: Tensor) -> tuple[float, float, float]:
    alpha, sigma = schedule.marginal(t)
    return alpha.item(), sigma.item(), schedule.lambda_(t).item()


def _euler_maruyama(eps_fn: EpsFn, schedule: NoiseSchedule, x: Tensor, ts: Tensor, generator, bar) -> Tensor:
    # Reverse VP-SDE dx = [-1/2 beta x - beta * score] dt + sqrt(beta) dw_bar, score = -eps / sigma,
    # stepped backwards by h = t - s: x <- x + beta h (x / 2 - eps / sigma) + sqrt(beta h) z.
    ts = torch.cat([ts, ts.new_zeros(1)])  # last step eps -> 0
    for i in bar(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        h = (t - s).item()
        beta = schedule.beta(t).item()
        _, sigma = schedule.marginal(t)
        x = x + beta * h * (0.5 * x - eps_fn(x, t) / sigma.item())
        if s > 0:  # the last step adds no noise (U-ViT)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(beta * h) * z
    return x


def _multistep(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x: Tensor,
    ts: Tensor,
    generator,
    bar,
    *,
    order: int,
    data_pred: bool,
) -> Tensor:
    """Multistep DPM-Solver (data_pred=False) / DPM-Solver++ (data_pred=True) of order 1 or 2.

    With h = lambda_s - lambda_t and D the (extrapolated) model output:
      noise prediction: x_s = (alpha_s / alpha_t) x_t - sigma_s (e^h - 1) D
      data prediction:  x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D
    Order 2 uses D = m_t + (m_t - m_prev) / (2 r), r = (lambda_t - lambda_prev) / h; order 1 is DDIM.
    """
    prev: tuple[Tensor, float] | None = None  # (model output, lambda) at the previous grid point
    for i in bar(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        alpha_t, sigma_t, lam_t = _alpha_sigma_lambda(schedule, t)
        alpha_s, sigma_s, lam_s = _alpha_sigma_lambda(schedule, s)
        h = lam_s - lam_t
        eps = eps_fn(x, t)
        out = (x - sigma_t * eps) / alpha_t if data_pred else eps
        d = out
        if order == 2 and prev is not None:
            r = (lam_t - prev[1]) / h
            d = out + (out - prev[0]) / (2.0 * r)
        if data_pred:
            x = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * d
        else:
            x = (alpha_s / alpha_t) * x - sigma_s * math.expm1(h) * d
        prev = (out, lam_t)
    return x


SAMPLERS = {
    "euler_maruyama": _euler_maruyama,
    "ddim": partial(_multistep, order=1, data_pred=False),
    "dpm_solver": partial(_multistep, order=2, data_pred=False),
    "dpm_solver++": partial(_multistep, order=2, data_pred=True),
}


def _default_device(model, x_T: Tensor | None) -> torch.device:
    if x_T is not None:
        return x_T.device
    params = getattr(model, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def sample(
    model,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    sampler: str = "dpm_solver",
    steps: int = 50,
    y: Tensor | None = None,
    cfg_scale: float = 0.0,
    null_class: int | None = None,
    generator: torch.Generator | None = None,
    device=None,
    progress: bool = False,
    eps: float | None = None,
    x_T: Tensor | None = None,
    eps_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None,
    grid: str | None = None,
) -> Tensor:
    """Draw samples of `shape` (B, C, H, W) and return x at the end time (x_0 for Euler-Maruyama).

    The model is evaluated as `cfg_eps(model, x, schedule.model_time(t), y, cfg_scale, null_class)`, or
    as `eps_fn(x, t, y)` (t continuous) when given, e.g. an `UpsampleGuidance`, which then owns the CFG
    settings. eps=None uses schedule.eps; grid=None is explained in the module docstring. x_T defaults
    to N(0, I) drawn from `generator` (which must live on `device`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid choices: {', '.join(SAMPLERS)}")
    if eps_fn is not None and cfg_scale != 0.0:
        raise ValueError("pass cfg_scale to the eps_fn (e.g. UpsampleGuidance), not to sample()")
    device = torch.device(device) if device is not None else _default_device(model, x_T)
    t_end = schedule.eps if eps is None else float(eps)
    n_grid = steps - 1 if sampler == "euler_maruyama" else steps  # EM adds its own final step to 0
    if grid is None:
        grid = "time_uniform" if sampler == "euler_maruyama" else schedule.default_grid
    ts = time_grid(schedule, n_grid, t_end, grid).to(device)
    x = x_T.to(device) if x_T is not None else torch.randn(shape, generator=generator, device=device)
    if y is not None:
        y = y.to(device)

    def evaluate(x_t: Tensor, t: Tensor) -> Tensor:  # t: 0-dim float64 -> (B,) float32
        t_batch = t.float().repeat(x_t.shape[0])
        if eps_fn is not None:
            return eps_fn(x_t, t_batch, y)
        return cfg_eps(model, x_t, schedule.model_time(t_batch), y, cfg_scale, null_class)

    def bar(n: int):
        return tqdm(range(n), desc=sampler, disable=not progress, leave=False)

    return SAMPLERS[sampler](evaluate, schedule, x, ts, generator, bar)
