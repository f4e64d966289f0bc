"""Exponential moving average of a model's weights, kept in fp32 and updated after every optimiser step."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class EMA:
    """ema <- decay * ema + (1 - decay) * param, for every parameter; buffers are copied.

    The copy is a full fp32 module in eval mode, so it can be sampled from directly (`ema.module`).
    There is no decay warm-up: U-ViT (and so DiM) use a fixed 0.9999 from step 0, starting at the init.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.module.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)  # one fused kernel per dtype/device group
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.module.load_state_dict(state["module"])
