"""The Mamba mixer's causal depthwise conv1d + SiLU in Triton, on the (b, l, d) layout the projections give.

    out[b, t, c] = silu(bias[c] + sum_k weight[c, k] * x[b, t - K + 1 + k, c])      (x = 0 before t = 0)

This is causal-conv1d's `causal_conv1d_fn(x, w, b, activation="silu")` read channels-last, so the mixer's
Triton path needs no transpose, no copy and no compiled extension. A program owns a (BL, BD) tile of
(time, channels); d is the contiguous axis, so every load is a coalesced row. The backward recomputes the
pre-activation at the K positions each input feeds instead of storing it, and writes dweight / dbias as
partial sums per tile (summed afterwards: deterministic). Twin in plain PyTorch: `causal_conv1d_silu_torch`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BL, BD = 32, 64  # time steps x channels per program


@triton.jit
def _tile(pid_l, pid_d, DIM, BL: tl.constexpr, BD: tl.constexpr):
    """A program's (time, channel) tile: offsets and the channel mask."""
    offs_d = pid_d * BD + tl.arange(0, BD)
    return pid_l * BL + tl.arange(0, BL), offs_d, offs_d < DIM


@triton.jit
def _x_at(xb, s_xl, src, offs_d, mask_d, L):
    """x at time steps `src` (BL,) as float32 (BL, BD); zero outside [0, L): the causal padding."""
    m = (src >= 0)[:, None] & (src < L)[:, None] & mask_d[None, :]
    return tl.load(xb + src[:, None] * s_xl + offs_d[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(xb, s_xl, w_ptr, bias, out_t, offs_d, mask_d, L, K: tl.constexpr):
    """bias + sum_k w[:, k] x[out_t - K + 1 + k]: the conv's output at time steps `out_t`, before the SiLU."""
    pre = tl.zeros([out_t.shape[0], offs_d.shape[0]], dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_d * K + k, mask=mask_d, other=0.0).to(tl.float32)
        pre += _x_at(xb, s_xl, out_t - (K - 1) + k, offs_d, mask_d, L) * w[None, :]
    return pre


@triton.jit
def _load_bias(b_ptr, offs_d, mask_d, BD: tl.constexpr, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        return tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        return tl.zeros([BD], dtype=tl.float32)


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, L, DIM, s_xb, s_xl, s_ob, s_ol,
                     K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SILU: tl.constexpr):
    pid_b = tl.program_id(2).to(tl.int64)
    offs_t, offs_d, mask_d = _tile(tl.program_id(0), tl.program_id(1), DIM, BL, BD)
    bias = _load_bias(b_ptr, offs_d, mask_d, BD, HAS_BIAS)
    acc = _pre_activation(x_ptr + pid_b * s_xb, s_xl, w_ptr, bias, offs_t, offs_d, mask_d, L, K)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    m_out = (offs_t < L)[:, None] & mask_d[None, :]
    tl.store(out_ptr + pid_b * s_ob + offs_t[:, None] * s_ol + offs_d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_out)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr, L, DIM, NL,
                     s_xb, s_xl, s_gb, s_gl, s_dxb, s_dxl,
                     K: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SILU: tl.constexpr):
    pid_l, pid_b = tl.program_id(0), tl.program_id(2).to(tl.int64)
    offs_t, offs_d, mask_d = _tile(pid_l, tl.program_id(1), DIM, BL, BD)
    xb, gb = x_ptr + pid_b * s_xb, g_ptr + pid_b * s_gb
    bias = _load_bias(b_ptr, offs_d, mask_d, BD, HAS_BIAS)
    dx = tl.zeros([BL, BD], dtype=tl.float32)
    part = (pid_b * NL + pid_l) * DIM  # this tile's row of the (b * n_tiles, d[, K]) partial sums
    # Input t feeds outputs t + j, j = 0..K-1, through weight K - 1 - j: recompute each one's gradient
    # at its pre-activation (j = 0 is this tile's own outputs, which also give dweight and dbias).
    for j in tl.static_range(K):
        tj = offs_t + j
        pre = _pre_activation(xb, s_xl, w_ptr, bias, tj, offs_d, mask_d, L, K)
        m_out = (tj < L)[:, None] & mask_d[None, :]
        g = tl.load(gb + tj[:, None] * s_gl + offs_d[None, :], mask=m_out, other=0.0).to(tl.float32)
        if SILU:
            s = tl.sigmoid(pre)
            g = g * s * (1.0 + pre * (1.0 - s))
        dx += g * tl.load(w_ptr + offs_d * K + (K - 1 - j), mask=mask_d, other=0.0).to(tl.float32)[None, :]
        if j == 0:
            if HAS_BIAS:
                tl.store(db_ptr + part + offs_d, tl.sum(g, axis=0), mask=mask_d)
            for k in tl.static_range(K):
                xv = _x_at(xb, s_xl, offs_t - (K - 1) + k, offs_d, mask_d, L)
                tl.store(dw_ptr + (part + offs_d) * K + k, tl.sum(g * xv, axis=0), mask=mask_d)
    m_in = (offs_t < L)[:, None] & mask_d[None, :]
    tl.store(dx_ptr + pid_b * s_dxb + offs_t[:, None] * s_dxl + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=m_in)


def _check(x, weight):
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"x must be (b, l, d) and weight (d, K); got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.stride(2) != 1:
        raise ValueError("x must be contiguous along d (the (b, l, d) layout); got strides " + str(x.stride()))


@torch.library.custom_op("dimstudy::causal_conv1d_fwd", mutates_args=())
def _conv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool) -> torch.Tensor:
    _check(x, weight)
    b, length, d = x.shape
    out = torch.empty(b, length, d, device=x.device, dtype=x.dtype)
    w = weight.contiguous()
    _conv_fwd_kernel[(triton.cdiv(length, BL), triton.cdiv(d, BD), b)](
        x, w, w if bias is None else bias, out, length, d, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        K=w.shape[1], BL=BL, BD=BD, HAS_BIAS=bias is not None, SILU=silu, num_warps=4)
    return out


@_conv_fwd_op.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("dimstudy::causal_conv1d_bwd", mutates_args=())
def _conv_bwd_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
                 grad_out: torch.Tensor) -> list[torch.Tensor]:
    b, length, d = x.shape
    w = weight.contiguous()
    nl = triton.cdiv(length, BL)
    g = grad_out if grad_out.stride(2) == 1 else grad_out.contiguous()
    dx = torch.empty(b, length, d, device=x.device, dtype=x.dtype)
    dw = torch.empty(b * nl, d, w.shape[1], device=x.device, dtype=torch.float32)
    db = torch.empty(b * nl, d, device=x.device, dtype=torch.float32)
    _conv_bwd_kernel[(nl, triton.cdiv(d, BD), b)](
        x, w, w if bias is None else bias, g, dx, dw, db, length, d, nl,
        x.stride(0), x.stride(1), g.stride(0), g.stride(1), dx.stride(0), dx.stride(1),
        K=w.shape[1], BL=BL, BD=BD, HAS_BIAS=bias is not None, SILU=silu, num_warps=4)
    dbias = db.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return [dx, dw.sum(0).to(weight.dtype), dbias]


@_conv_bwd_op.register_fake
def _(x, weight, bias, silu, grad_out):
    return [x.new_empty(x.shape), torch.empty_like(weight), x.new_empty(0) if bias is None else torch.empty_like(bias)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = _conv_bwd_op(x, weight, bias, ctx.silu, grad_out)
    return dx, dw, (db if bias is not None else None), None


_conv_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                              silu: bool = True) -> torch.Tensor:
    """x: (b, l, d), stride 1 along d; weight: (d, K); bias: (d,). Returns (b, l, d), contiguous."""
    return _conv_fwd_op(x, weight, bias, silu)


def causal_conv1d_silu_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                             silu: bool = True) -> torch.Tensor:
    """The same function through F.conv1d: x (b, l, d) -> (b, l, d)."""
    k = weight.shape[1]
    out = F.conv1d(x.transpose(1, 2), weight[:, None, :], bias, padding=k - 1, groups=weight.shape[0])
    out = out[..., : x.shape[1]].transpose(1, 2)
    return F.silu(out) if silu else out
