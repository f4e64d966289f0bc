"""Exponential moving average of a model's weights, kept in fp32 and updated after every optimiser step."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from dimstudy.train.config import TrainConfig


class EMA:
    """ema <- decay * ema + (1 - decay) * param, for every parameter; buffers are copied.

    The copy is a full fp32 module in eval mode, so it can be sampled from directly (`ema.module`).

    U-ViT (and so DiM) use a fixed 0.9999 from step 0, starting at the init: fine over 500K steps, but after
    n steps the average still holds decay**n of the initial weights (0.999 over 1000 steps: 37%), and such a
    blend of the init and the trained network samples noise. `warmup=True` uses the decay
    min(decay, (1 + t) / (10 + t)) at the t-th update (TensorFlow's ExponentialMovingAverage with
    num_updates), so short runs average only their recent weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, t: int) -> float:
        """The decay of update number t (0-based: the first update is t = 0)."""
        return decay_at(self.decay, self.warmup, t)

    @torch.no_grad()
    def update(self, model: nn.Module, t: int = 0) -> None:
        """One update; `t` counts the updates before it (the optimiser step), used by the warm-up only."""
        ema_params = list(self.module.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(t))  # one fused kernel per dtype/device group
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", False))  # checkpoints from before the warm-up option had none
        self.module.load_state_dict(state["module"])


def decay_at(decay: float, warmup: bool, t: int) -> float:
    return min(decay, (1 + t) / (10 + t)) if warmup else decay


def init_share(decay: float, steps: int, warmup: bool = False) -> float:
    """The weight the EMA still gives the initial parameters after `steps` updates: the product of the decays."""
    # (1 + t) / (10 + t) >= decay from t = (10 decay - 1) / (1 - decay) on; from there every factor is `decay`.
    ramp = 0
    if warmup:
        ramp = steps if decay >= 1 else min(steps, max(0, math.ceil((10 * decay - 1) / (1 - decay))))
    return math.prod(decay_at(decay, True, t) for t in range(ramp)) * decay ** (steps - ramp)


EMA_INIT_WARN = 0.01  # warn when the final EMA keeps more than this share of the initial weights


def ema_warning(cfg: TrainConfig) -> str | None:
    """The warning for a run whose final EMA would keep more than EMA_INIT_WARN of the initial weights, else None."""
    share = init_share(cfg.ema_decay, cfg.steps, cfg.ema_warmup)
    if share <= EMA_INIT_WARN:
        return None
    return (f"EMA: with ema_decay {cfg.ema_decay} over {cfg.steps} steps"
            f"{' (with warm-up)' if cfg.ema_warmup else ''}, the final EMA weights are still {share:.0%} the "
            f"initial ones, and samples from them are mostly noise; set ema_warmup = true or lower ema_decay")
