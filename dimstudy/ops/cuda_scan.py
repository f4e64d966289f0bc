"""mamba-ssm's selective-scan kernel as torch.library custom ops, so that torch.compile traces through it.

mamba-ssm's `selective_scan_fn` is an autograd.Function around two calls into its compiled extension,
`selective_scan_cuda.fwd` and `.bwd`. Dynamo cannot look inside those calls, so every mixer on the "cuda"
backend was a graph break. Here the same two calls are custom ops, `dimstudy::mamba_ssm_scan_fwd` and
`dimstudy::mamba_ssm_scan_bwd`, with fake implementations that give the shapes, dtypes and strides the
extension's C++ allocates, and the backward registered as the forward op's autograd formula:

    fwd(u, delta, A, B, C, D, z, delta_bias, softplus) -> out (like delta), x (b, d, ceil(l / 2048), 2 n) A's
        dtype (the states at the end of each 2048-step chunk, real parts at odd indices), out_z (like z)
    bwd(..., dout, x, out, softplus) -> du, ddelta, dA, dB, dC, dD, ddelta_bias, dz, each like its input (the
        extension sums dB and dC in float32 and casts them back to B's and C's dtype before returning)

Same kernels, arguments and results as `selective_scan_fn`, including its one limit: the last state it returns
carries no gradient. The Mamba mixer takes this path for the "cuda" backend while torch.compile traces it
(`torch.compiler.is_compiling()`); eager calls keep mamba-ssm's own functions. causal-conv1d's kernels need no
wrapper: since 1.7 they are custom ops already.

The ops are defined whether or not mamba-ssm is installed; only running them needs its extension, which
`_extension()` finds (tests substitute a stand-in that follows the same contract).
"""

from __future__ import annotations

import torch

from dimstudy.ops.selective_scan import BackendUnavailableError, _ssi

CHUNK = 2048  # the extension's states are saved every 2048 steps: n_chunks = ceil(l / 2048)


def _extension():
    """mamba-ssm's compiled `selective_scan_cuda` module."""
    ext = getattr(_ssi, "selective_scan_cuda", None)
    if ext is None:
        raise BackendUnavailableError("mamba-ssm's selective_scan_cuda extension is not importable here")
    return ext


def _none_as_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Custom ops return tensors only: an absent result travels as an empty tensor."""
    return like.new_empty(0) if t is None else t


@torch.library.custom_op("dimstudy::mamba_ssm_scan_fwd", mutates_args=())
def mamba_ssm_scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                       delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, x, *rest = _extension().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out, x, rest[0] if z is not None else _none_as_empty(None, out)


@mamba_ssm_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    b, d, length = u.shape
    x = u.new_empty(b, d, -(-length // CHUNK), 2 * A.shape[1], dtype=A.dtype)
    return torch.empty_like(delta), x, torch.empty_like(z) if z is not None else delta.new_empty(0)


@torch.library.custom_op("dimstudy::mamba_ssm_scan_bwd", mutates_args=())
def mamba_ssm_scan_bwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                       dout: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None,
                       delta_softplus: bool) -> list[torch.Tensor]:
    # None: let the extension allocate dz; False: do not recompute out_z
    du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = _extension().bwd(
        u, delta, A, B, C, D, z, delta_bias, dout, x, out, None, delta_softplus, False)
    dz = rest[0] if z is not None else None
    return [_none_as_empty(g, du) for g in (du, ddelta, dA, dB, dC, dD, ddelta_bias, dz)]


@mamba_ssm_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, dout, x, out, delta_softplus):
    grads = [torch.empty_like(t) for t in (u, delta, A, B, C)]
    grads += [u.new_empty(0) if v is None else torch.empty_like(v) for v in (D, delta_bias, z)]
    return grads


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    out, x, _ = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out if z is not None else None)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, grad_out, _grad_x, grad_out_z):
    u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
    dout = grad_out_z if z is not None else grad_out  # the result the caller used
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    du, ddelta, dA, dB, dC, dD, ddelta_bias, dz = mamba_ssm_scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, dout, x, out, ctx.delta_softplus)
    return (du, ddelta, dA, dB, dC, None if D is None else dD, None if z is None else dz,
            None if delta_bias is None else ddelta_bias, None)


mamba_ssm_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def _last_dim_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def selective_scan_cuda_op(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    """mamba-ssm's `selective_scan_fn` through the custom ops: same arguments, same kernels, same results."""
    u, delta, B, C, z = (_last_dim_contiguous(t) for t in (u, delta, B, C, z))
    B = B.unsqueeze(1) if B.dim() == 3 else B  # the extension takes input-dependent B, C as (b, groups, n, l)
    C = C.unsqueeze(1) if C.dim() == 3 else C
    D = D.contiguous() if D is not None else None
    out, x, out_z = mamba_ssm_scan_fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    y = out_z if z is not None else out
    return (y, x[:, :, -1, 1::2]) if return_last_state else y  # last state (b, d, n): the real parts
