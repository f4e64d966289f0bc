"""The Mamba-1 mixer (Gu & Dao 2023), parameter for parameter as mamba-ssm's `Mamba`, on any scan backend.

    x, z = in_proj(h)                                  (B, L, D) -> 2 x (B, d_inner, L)
    x = silu(causal depthwise conv1d(x))               kernel d_conv (DiM uses 3; mamba-ssm defaults to 4)
    dt, B, C = x_proj(x);  dt = dt_proj.weight @ dt    dt_proj.bias is added inside the scan, under softplus
    y = selective_scan(x, dt, A = -exp(A_log), B, C, D, z)   then out_proj: (B, L, D)

Parameter names and shapes equal mamba_ssm.modules.mamba_simple.Mamba's, so state dicts load either way.
Which path runs is decided per call from `scan_backend` and the input's device (a model built on CPU and
moved to CUDA picks the kernels) and recorded in `last_backend`:

    "cuda-fused"    mamba-ssm's `mamba_inner_fn` (conv, projections and scan in one autograd function)
    "cuda-unfused"  mamba-ssm's `selective_scan_fn`, causal-conv1d's conv when installed; also what
                    torch.compile traces on "cuda", through custom ops (dimstudy.ops.cuda_scan): no graph break
    "triton"        dimstudy's Triton conv and scan, on the (B, L, d) layout the projections give (no copies)
    "torch-chunked" / "ref"   the PyTorch scans of dimstudy.ops.selective_scan
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from dimstudy.ops.selective_scan import (
    causal_conv1d_fn,
    check_scan_backend,
    describe_scan_backend,
    fused_mamba_available,
    get_selective_scan,
    mamba_inner_fn,
    resolve_scan_backend,
)


def _channels_first(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """weight @ tokens per token, returned channels-first: (m, k), (B, L, k) -> (B, m, L) with L contiguous.

    One (m, k) @ (k, B*L) product whose (m, B*L) result is viewed as (B, m, L): the layout mamba-ssm's kernels
    read without a copy (stride 1 along L), which Linear's (B, L, m) output transposed would not give.
    """
    b, length, k = tokens.shape
    out = torch.mm(weight, tokens.reshape(b * length, k).t())  # (m, B*L)
    return out.view(-1, b, length).transpose(0, 1)


class Mamba(nn.Module):
    """Mamba-1 mixer: (B, L, d_model) -> (B, L, d_model), causal along L."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: int | None = None,
        scan_backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.scan_backend = scan_backend
        self.use_fused = True  # on "cuda", take mamba_inner_fn when causal-conv1d is installed too
        # The scan is causal, so zeros appended after the last token change no output before them. Padding
        # L to a multiple of 8 keeps the (d, B*L) and (B*L, d) GEMM operands 16-byte aligned: with DiM's
        # odd lengths (4494 tokens at 1024 px) cuBLAS otherwise falls back to slow 'align2' sm80 kernels,
        # which took 40% of DiM-H's GEMM time on an H200 (results/speed/profile).
        self.pad_multiple = 8
        self.last_backend: str | None = None

        # Registration order = mamba-ssm's, so state_dict keys come out in the same order.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self._init_dt_proj(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

        # S4D-real init, A = -(1..n) for every channel; kept in fp32 whatever `dtype` is, as mamba-ssm does.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # (d_inner, d_state)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))  # (d_inner,)
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _init_dt_proj(self, dt_init, dt_scale, dt_min, dt_max, dt_init_floor):
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"unknown dt_init {dt_init!r}; valid choices: random, constant")
        # dt log-uniform in [dt_min, dt_max] (floored); the bias is its inverse softplus, so that
        # softplus(bias) = dt at init. Model-wide re-inits must leave it alone: hence _no_reinit.
        w = self.dt_proj.bias
        dt = torch.exp(torch.rand(self.d_inner, device=w.device, dtype=torch.float32)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            w.copy_(dt + torch.log(-torch.expm1(-dt)))
        w._no_reinit = True

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, scan_backend={self.scan_backend!r}")

    @property
    def scan_backend(self) -> str:
        return self._scan_backend

    @scan_backend.setter
    def scan_backend(self, name: str) -> None:
        self._scan_backend = check_scan_backend(name)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, L, d_model) -> (B, L, d_model)."""
        length = hidden_states.shape[1]
        pad = -length % self.pad_multiple
        if pad:
            return self._forward(F.pad(hidden_states, (0, 0, 0, pad)))[:, :length]
        return self._forward(hidden_states)

    def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        length = hidden_states.shape[1]
        backend = resolve_scan_backend(self.scan_backend, hidden_states.device)
        if backend == "triton":
            self.last_backend = "triton"
            return self._forward_triton(hidden_states)
        xz = _channels_first(self.in_proj.weight, hidden_states)  # (B, 2 * d_inner, L)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)

        # mamba_inner_fn's autograd.Function would break a torch.compile graph: compiled, take the unfused path,
        # whose conv (causal-conv1d >= 1.7) and scan (dimstudy.ops.cuda_scan) are custom ops
        fused = self.use_fused and fused_mamba_available() and not torch.compiler.is_compiling()
        if backend == "cuda" and fused:
            out = mamba_inner_fn(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, A, B=None, C=None, D=self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )  # (B, L, d_model)
            self.last_backend = "cuda-fused"
            return out

        x, z = xz.chunk(2, dim=1)  # (B, d_inner, L) each
        if backend == "cuda" and causal_conv1d_fn is not None:
            x = causal_conv1d_fn(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        else:
            x = F.silu(self.conv1d(x)[..., :length])  # pad d_conv - 1 both sides, keep the causal first L
        x_dbl = F.linear(x.transpose(1, 2), self.x_proj.weight)  # (B, L, dt_rank + 2 * d_state)
        dt_in, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = _channels_first(self.dt_proj.weight, dt_in)  # (B, d_inner, L); bias goes in as delta_bias
        y = get_selective_scan(backend)(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), D=self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )  # (B, d_inner, L)
        out = F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)  # (B, L, d_model)
        self.last_backend = "cuda-unfused" if backend == "cuda" else describe_scan_backend(backend)
        return out

    def _forward_triton(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Channels-last throughout: every projection is a plain Linear on (B, L, .), and the conv and the scan
        read their (B, L, d_inner) inputs through strides, so nothing is transposed or copied."""
        from dimstudy.ops.triton_conv import causal_conv1d_silu_triton
        from dimstudy.ops.triton_scan import selective_scan_triton

        xz = F.linear(hidden_states, self.in_proj.weight, self.in_proj.bias)  # (B, L, 2 * d_inner)
        x, z = xz.chunk(2, dim=-1)  # (B, L, d_inner) views, row stride 2 * d_inner
        x = causal_conv1d_silu_triton(x, self.conv1d.weight[:, 0], self.conv1d.bias)  # (B, L, d_inner)
        dt_in, B, C = F.linear(x, self.x_proj.weight).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt_in, self.dt_proj.weight)  # (B, L, d_inner); its bias goes in as delta_bias
        y = selective_scan_triton(
            x.transpose(1, 2), dt.transpose(1, 2), -torch.exp(self.A_log.float()), B.transpose(1, 2),
            C.transpose(1, 2), D=self.D.float(), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )  # (B, d_inner, L), stored as (B, L, d_inner)
        return F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)  # (B, L, d_model)


def mamba_modules(model: nn.Module) -> list[Mamba]:
    """Every Mamba mixer in `model` (itself included)."""
    return [m for m in model.modules() if isinstance(m, Mamba)]


def set_scan_backend(model: nn.Module, name: str) -> int:
    """Force scan backend `name` on every Mamba in `model`; returns how many were set.

    Checked now, not at the first forward: an unknown name raises ValueError and 'cuda' without mamba-ssm's
    kernels or a GPU raises BackendUnavailableError. ('auto' still resolves per call, by device.)
    """
    if check_scan_backend(name) != "auto":
        resolve_scan_backend(name)
    mixers = mamba_modules(model)
    for m in mixers:
        m.scan_backend = name
    return len(mixers)


@contextmanager
def use_scan_backend(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """`with use_scan_backend(model, "torch"):` runs every Mamba in `model` on `name`, then restores each one's own."""
    before = {m: m.scan_backend for m in mamba_modules(model)}
    set_scan_backend(model, name)
    try:
        yield model
    finally:
        for m, name_before in before.items():
            m.scan_backend = name_before
