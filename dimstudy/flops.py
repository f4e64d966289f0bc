"""Analytic FLOP counting by forward hooks.

Convention (the one DiT, U-ViT and the DiM paper's Tab. 1 use for "GFLOPs"): multiply-accumulates
(MACs) of one forward pass, batch 1. `flops` = 2 x MACs is what achieved-TFLOP/s figures divide by.

- Linear / Conv: exact MACs from the output shape.
- Attention: qkv and proj as Linear, plus 2 * L^2 * D for QK^T and AV.
- Mamba mixer: counted from its sizes, whatever kernel runs (the fused CUDA path never calls its Linear
  children): in_proj, causal conv, x_proj, dt_proj, out_proj, and the selective scan at
  9 * L * d_inner * d_state FLOPs (mamba-ssm's convention: discretise, update, read out), i.e. 4.5 MACs.
Element-wise work (norms, gates, adds) is not counted, as in the papers.

The count runs on the meta device when it can, so even 0.9B-parameter models cost no memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from dimstudy.models.registry import create_model, get_entry
from dimstudy.ops.attention import Attention
from dimstudy.ops.mixers import is_mixer


def mamba_macs(m: nn.Module, batch: int, length: int) -> dict[str, float]:
    bl, di, n, r = batch * length, m.d_inner, m.d_state, m.dt_rank
    return {
        "gemm": bl * (m.d_model * 2 * di + di * (r + 2 * n) + r * di + di * m.d_model),
        "conv": bl * di * m.d_conv,
        "scan": bl * di * n * 4.5,
    }


def attention_macs(m: Attention, batch: int, length: int, dim: int) -> dict[str, float]:
    return {"gemm": batch * length * (3 * dim * dim + dim * dim), "attention": 2 * batch * length * length * dim}


@dataclass
class FlopCount:
    by_kind: dict[str, float] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        return sum(self.by_kind.values())

    @property
    def flops(self) -> float:
        return 2 * self.macs

    @property
    def gflops(self) -> float:
        """GMACs: the number the DiM/U-ViT/DiT papers print as 'GFLOPs'."""
        return self.macs / 1e9


def count_flops(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> FlopCount:
    """MACs of model(x, t, y), by kind: gemm, conv, scan, attention."""
    count = FlopCount()

    def add(kinds: dict[str, float]):
        for k, v in kinds.items():
            count.by_kind[k] = count.by_kind.get(k, 0.0) + float(v)

    def leaf_hook(m, inp, out):
        if isinstance(m, nn.Linear):
            add({"gemm": out.numel() * m.in_features})
        else:  # Conv1d / Conv2d
            k = 1
            for s in m.kernel_size:
                k *= s
            add({"conv": out.numel() * (m.in_channels // m.groups) * k})

    def composite_hook(m, inp, out):
        b, length, d = inp[0].shape
        add(attention_macs(m, b, length, d) if isinstance(m, Attention) else mamba_macs(m, b, length))

    hooks, inside = [], set()
    for m in model.modules():
        if is_mixer(m):
            hooks.append((m, composite_hook))
            inside.update(id(c) for c in m.modules() if c is not m)
    for m in model.modules():
        if id(m) not in inside and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            hooks.append((m, leaf_hook))
    forward_with_hooks(model, hooks, x, t, y)
    return count


def forward_with_hooks(model: nn.Module, hooks, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
    """One no-grad forward of model(x, t, y) with `(module, forward_hook)` pairs attached, then detached."""
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        with torch.no_grad():
            model(x, t, y)
    finally:
        for h in handles:
            h.remove()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **overrides) -> nn.Module:
    """A registered model with no storage: for counting parameters and FLOPs of any size instantly."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def summarize(name: str, resolution: int | None = None, **overrides) -> dict:
    """One row of `dimstudy models`: shape, params, GMACs at batch 1 (paper Tab. 1 convention), tokens."""
    def gmacs(model):
        x = torch.randn(1, model.in_chans, res, res, device="meta")
        y = torch.zeros(1, dtype=torch.long, device="meta") if model.num_classes else None
        return count_flops(model, x, torch.rand(1, device="meta"), y).gflops

    model = build_on_meta(name, **overrides)
    res = resolution or model.img_size
    if res % model.patch_size:
        raise ValueError(f"resolution {res} is not divisible by {name}'s patch size {model.patch_size}")
    entry = get_entry(name)
    # The paper's Tab. 1 GFLOPs agree with a count that leaves out DiM's pad and separator tokens.
    no_pads = getattr(model, "num_pad", 0) and gmacs(build_on_meta(name, **{**overrides, "padding_tokens": False}))
    return {
        "name": name,
        "family": entry.family,
        "blocks": model.depth,
        "width": model.dim,
        "patch": model.patch_size,
        "input": f"{model.in_chans}x{res}x{res}",
        "classes": model.num_classes,
        "params_m": round(count_params(model) / 1e6, 2),
        "gflops": round(gmacs(model), 2),
        "gflops_no_pads": round(no_pads, 2) if no_pads else None,
        "tokens": model.sequence_length(res),
        "public_params_m": entry.paper.get("public_params_m"),
        "paper_params_m": entry.paper.get("params_m"),
        "paper_gflops": entry.paper.get("gflops"),
        "paper_source": entry.paper.get("source", ""),
        "note": entry.note,
    }
