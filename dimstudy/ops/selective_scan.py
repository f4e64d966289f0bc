"""Mamba-1's selective scan, three ways with one signature (mamba-ssm's `selective_scan_fn`).

    u, delta, z: (b, d, l)    A: (d, n) real    B, C: (b, n, l) (or (b, 1, n, l))    D, delta_bias: (d,)

    dt  = softplus(delta + delta_bias) if delta_softplus else delta + delta_bias
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t          h_{-1} = 0, h_t: (b, d, n)
    y_t = <C_t, h_t> + D * u_t,   then y *= silu(z) when z is given

Backends, same function:
- "triton" dimstudy's own kernels (`dimstudy.ops.triton_scan`): forward and backward in Triton, which ships
          with torch on Linux; CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests)
- "cuda"  mamba-ssm's fused kernel `selective_scan_fn` (optional `cuda` extra, CUDA tensors)
- "torch" `selective_scan_torch`: a chunked scan in plain PyTorch, any device, differentiable
- "ref"   `selective_scan_ref`: one token at a time, the reference the other two are tested against

The torch and ref versions compute in float32 (float64 for float64 inputs) and return u's dtype; the
last state, like mamba-ssm's, stays in that compute dtype.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:  # optional kernels; without its compiled extension mamba_ssm raises more than ImportError
    from mamba_ssm.ops import selective_scan_interface as _ssi
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
except Exception as e:  # noqa: BLE001
    _ssi = mamba_inner_fn = selective_scan_fn = None
    _MAMBA_SSM_ERROR = f"{type(e).__name__}: {e}"
else:
    _MAMBA_SSM_ERROR = ""

try:  # its conv kernel: mamba_inner_fn needs it, the unfused path uses it when present
    from causal_conv1d import causal_conv1d_fn
except Exception:  # noqa: BLE001
    causal_conv1d_fn = None

SCAN_BACKENDS = ("triton", "cuda", "torch", "ref")
_INSTALL_HINT = "Install it with: pip install --no-build-isolation mamba-ssm causal-conv1d"


class BackendUnavailableError(RuntimeError):
    """A kernel backend was asked for by name but cannot run here; the message says what to install."""


# -- shared pieces of the two PyTorch versions ------------------------------------------------------------
def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _variable_bc(X: torch.Tensor, name: str) -> torch.Tensor:
    """Input-dependent B or C as (b, n, l); mamba-ssm's one-group (b, 1, n, l) form is accepted too."""
    if X.dim() == 4:
        if X.shape[1] != 1:
            raise ValueError(f"{name} has {X.shape[1]} groups; only one group, (b, 1, n, l), is supported")
        X = X.squeeze(1)
    if X.dim() != 3:
        raise ValueError(f"{name} must be input-dependent, (b, n, l); got shape {tuple(X.shape)}")
    return X


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Cast to the compute dtype and discretise the step: returns u, dt (b, d, l), A (d, n), B, C (b, n, l)."""
    ct = _compute_dtype(u)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B, C = _variable_bc(B, "B"), _variable_bc(C, "C")
    return u.to(ct), dt, A.to(ct), B.to(ct), C.to(ct)


def _skip_and_gate(y, u, D, z, out_dtype):
    """y + D * u, gated by silu(z); y, u, z: (b, d, l)."""
    if D is not None:
        y = torch.addcmul(y, u, D.to(y.dtype)[:, None])
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


# -- reference -----------------------------------------------------------------------------------------------
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The recurrence as written, one token at a time (a Python loop over l). Slow; for tests."""
    out_dtype = u.dtype
    u, dt, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, d, n)
    ys = []
    # unbind: one autograd node per tensor, not one per token (indexing would zero-fill a full grad each step)
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1), strict=True):
        h = torch.exp(dt_t[:, :, None] * A) * h + (dt_t * u_t)[:, :, None] * B_t[:, None, :]
        ys.append((h * C_t[:, None, :]).sum(-1))  # (b, d)
    y = _skip_and_gate(torch.stack(ys, dim=-1), u, D, z, out_dtype)
    return (y, h) if return_last_state else y


# -- chunked scan in plain PyTorch ---------------------------------------------------------------------------
# Time is split into nc chunks of T steps. Each pass below is a loop over the T positions of a chunk that
# updates all nc chunks at once, on "slabs" of shape (b, nc, n, d) (d innermost: contiguous rows for the
# broadcast products), plus a loop over the nc chunks on (b, n, d) states. Everything is a product of
# decays in (0, 1] - nothing is exponentiated beyond one chunk's dt * A - so there is no overflow, and
# nothing of size b * l * d * n outlives a pass: the forward keeps only each chunk's entering state,
# the backward recomputes the states (as mamba-ssm's kernel does).
def _sum_into(dst: torch.Tensor, x: torch.Tensor, dim: int) -> None:
    """x summed over `dim`, written into the view `dst`: through out= in eager code (no temporary), by a copy
    while torch.compile traces, since Dynamo refuses out= into a non-contiguous view (a graph break)."""
    if torch.compiler.is_compiling():
        dst.copy_(x.sum(dim))
    else:
        torch.sum(x, dim=dim, out=dst)


def _chunk_steps(dt, dtu, B, At, chunk, nc):
    """Decay a_t = exp(dt_t A) and input x_t = dt_t u_t B_t at in-chunk position t: two (b, nc, n, d) slabs each."""
    b = dt.shape[0]
    dt_c, dtu_c, B_c = (v.view(b, nc, chunk, v.shape[-1]) for v in (dt, dtu, B))
    for t in range(chunk):
        yield (dt_c[:, :, t, None, :] * At).exp_(), dtu_c[:, :, t, None, :] * B_c[:, :, t, :, None]


def _carry_across_chunks(local, dt, At, chunk, nc, reverse=False):
    """What enters each chunk, given what each chunk alone passes on (`local`, (b, nc, n, d)): a loop over chunks.

    A chunk scales what enters it by its total decay exp(A * sum of its dt) and adds its own part.
    """
    b, _, d = dt.shape
    decay = torch.exp(dt.view(b, nc, chunk, d).sum(2)[:, :, None, :] * At)  # (b, nc, n, d)
    entering = torch.empty_like(local)
    state = torch.zeros_like(local[:, 0])  # (b, n, d)
    for c in range(nc - 1, -1, -1) if reverse else range(nc):
        entering[:, c] = state
        state = torch.addcmul(local[:, c], decay[:, c], state)
    return entering, state


class _ChunkedScan(torch.autograd.Function):
    """y_t = <C_t, h_t>, h_t = exp(dt_t A) h_{t-1} + dtu_t B_t, h_{-1} = 0, over time-major inputs.

    dt, dtu: (b, L, d); B, C: (b, L, n); At = A^T: (n, d); L a multiple of `chunk`.
    Returns y (b, L, d) and the last state (b, n, d). The backward is written out below: the adjoint
    lambda_t = dLoss/dh_t obeys lambda_t = C_t gy_t + a_{t+1} lambda_{t+1}, the same chunked recurrence
    run backwards in time, and every parameter gradient is a per-step product of lambda_t with known slabs.
    """

    @staticmethod
    def forward(ctx, dt, dtu, B, C, At, chunk, nc):
        b, length, d = dt.shape
        steps = list(_chunk_steps(dt, dtu, B, At, chunk, nc))
        end = torch.zeros(b, nc, At.shape[0], d, dtype=dt.dtype, device=dt.device)
        for a, x in steps:  # each chunk's end state from a zero start
            end = torch.addcmul(x, a, end)
        init, last = _carry_across_chunks(end, dt, At, chunk, nc)  # (b, nc, n, d), (b, n, d)
        C_c = C.view(b, nc, chunk, -1)
        y = dt.new_empty(b, nc, chunk, d)
        h = init
        for t, (a, x) in enumerate(steps):  # again from the true entering states, reading y out
            h = x.addcmul_(a, h)
            _sum_into(y[:, :, t], h * C_c[:, :, t, :, None], 2)  # mul + sum, not matmul: no autocast
        ctx.save_for_backward(dt, dtu, B, C, At, init)
        ctx.chunk, ctx.nc = chunk, nc
        return y.view(b, length, d), last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        dt, dtu, B, C, At, init = ctx.saved_tensors
        chunk, nc = ctx.chunk, ctx.nc
        b, length, d = dt.shape
        decays, states = [], []  # per position: a_t and h_t slabs, recomputed
        h = init
        for a, x in _chunk_steps(dt, dtu, B, At, chunk, nc):
            h = x.addcmul_(a, h)
            decays.append(a)
            states.append(h)
        grad_y = grad_y.contiguous()
        dt_c, dtu_c, B_c, C_c, gy_c = (v.view(b, nc, chunk, v.shape[-1]) for v in (dt, dtu, B, C, grad_y))

        def grad_h(t):  # dLoss/dh_t through y_t (and the last state, at the very end): (b, nc, n, d)
            g = gy_c[:, :, t, None, :] * C_c[:, :, t, :, None]
            if t == chunk - 1:
                g[:, -1] += grad_last
            return g

        # With carry_t = a_t lambda_t (what position t passes to t - 1): lambda_t = grad_h(t) + carry_{t+1}.
        carry = torch.zeros_like(init)
        for t in range(chunk - 1, -1, -1):  # each chunk's outgoing carry from a zero one entering
            carry = decays[t] * grad_h(t).add_(carry)
        carry, _ = _carry_across_chunks(carry, dt, At, chunk, nc, reverse=True)

        grad_dt, grad_dtu, grad_C = torch.empty_like(dt_c), torch.empty_like(dtu_c), torch.empty_like(C_c)
        grad_B = torch.empty_like(B_c)
        q_dt = torch.zeros_like(init)  # sum over positions of q_t * dt_t, reduced to dLoss/dA^T at the end
        for t in range(chunk - 1, -1, -1):
            lam = grad_h(t).add_(carry)  # dLoss/dx_t
            carry = decays[t] * lam
            q = carry * (states[t - 1] if t > 0 else init)  # dLoss/d(dt_t A) = lambda_t a_t h_{t-1}
            _sum_into(grad_dt[:, :, t], q * At, 2)
            q_dt.addcmul_(q, dt_c[:, :, t, None, :])
            _sum_into(grad_dtu[:, :, t], lam * B_c[:, :, t, :, None], 2)
            _sum_into(grad_B[:, :, t], lam * dtu_c[:, :, t, None, :], 3)
            _sum_into(grad_C[:, :, t], states[t] * gy_c[:, :, t, None, :], 3)
        grads = (g.view(b, length, -1) for g in (grad_dt, grad_dtu, grad_B, grad_C))
        return (*grads, q_dt.sum((0, 1)), None, None)


def default_chunk_size(length: int) -> int:
    """About sqrt(l / 4): balances the ~27 ops a position costs (forward + backward, all chunks at once)
    against the ~4 a chunk costs. Timings are flat within ~10% over chunk = sqrt(l / 8) .. sqrt(l)."""
    return max(1, round(math.sqrt(length) / 2))  # = sqrt(l / 4) exactly; Dynamo's symbolic sizes trip on l / 4


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, *, chunk_size: int | None = None):
    """The selective scan as a chunked linear recurrence in plain PyTorch: about 2 * chunk + l / chunk Python
    steps a pass instead of l, differentiable through a written-out backward (checked against the reference).

    Memory: saves only the inputs and each chunk's entering state, b * d * n * l / chunk; a pass allocates
    per-step slabs, and the backward holds the recomputed states, b * l * d * n, while it runs.
    `chunk_size` (default about sqrt(l / 4)) changes the speed only. y is (b, d, l) but stored time-major
    (stride 1 along d); call .contiguous() before handing it to a kernel that wants stride 1 along l.
    """
    out_dtype = u.dtype
    u, dt, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    length = u.shape[-1]
    chunk = chunk_size or default_chunk_size(length)
    pad = -length % chunk  # trailing steps with dt = 0 are identities: the last state carries through them

    def time_major(v):  # (b, k, l) -> (b, l + pad, k), contiguous: a time step is a contiguous row
        return F.pad(v.transpose(1, 2), (0, 0, 0, pad)).contiguous()

    y, last = _ChunkedScan.apply(time_major(dt), time_major(dt * u), time_major(B), time_major(C),
                                 A.t().contiguous(), chunk, (length + pad) // chunk)  # (b, L, d), (b, n, d)
    # (b, d, l), laid out time-major as computed: a caller that wants (b, l, d) next, as out_proj does, gets it free
    y = _skip_and_gate(y[:, :length].transpose(1, 2), u, D, z, out_dtype)
    return (y, last.transpose(1, 2)) if return_last_state else y


# -- backend registry ----------------------------------------------------------------------------------------
def _cuda_missing() -> str:
    """Why the 'cuda' backend cannot run here, or '' if it can."""
    if selective_scan_fn is None:
        return f"mamba-ssm's compiled extension could not be imported ({_MAMBA_SSM_ERROR}). {_INSTALL_HINT}"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Looked up once, at import and without importing it (Triton's import costs about a second); a plain string,
# so torch.compile reads it without tracing anything on every mixer call.
_TRITON_ERROR = "" if importlib.util.find_spec("triton") else "triton is not installed (it ships with torch's Linux wheels)"


def _triton_import_error() -> str:
    return _TRITON_ERROR


def _triton_missing(device: torch.device | None = None) -> str:
    """Why the 'triton' backend cannot run here (or on `device`), or '' if it can."""
    if _triton_import_error():
        return _triton_import_error()
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda and not _interpreting():
        where = f"device {device}" if device is not None else "this machine (no CUDA device is visible)"
        return (f"its kernels need CUDA tensors, and {where} has none; "
                "set TRITON_INTERPRET=1 before the import to run them (slowly) through Triton's interpreter")
    return ""


def fused_mamba_available() -> bool:
    """mamba-ssm's fused Mamba kernel (`mamba_inner_fn`) needs causal-conv1d as well as mamba-ssm."""
    return (mamba_inner_fn is not None and causal_conv1d_fn is not None
            and getattr(_ssi, "causal_conv1d_cuda", True) is not None)


def available_scan_backends() -> dict[str, bool | str]:
    """{name: True, or the reason it is unavailable}."""
    return {"triton": _triton_missing() or True, "cuda": _cuda_missing() or True, "torch": True, "ref": True}


def check_scan_backend(name: str) -> str:
    """`name` if it is 'auto' or a backend name (available or not), else ValueError naming the choices."""
    if name not in ("auto", *SCAN_BACKENDS):
        raise ValueError(f"unknown scan backend {name!r}; valid choices: auto, {', '.join(SCAN_BACKENDS)}")
    return name


def resolve_scan_backend(name: str = "auto", device: torch.device | str | None = None) -> str:
    """A concrete backend name. 'auto' is 'triton' for CUDA tensors when Triton imports, else 'cuda' when
    mamba-ssm's kernels do, else 'torch' (CPU tensors always get 'torch').

    Raises ValueError for an unknown name and BackendUnavailableError when 'triton' or 'cuda' cannot run
    (kernels missing, or `device` given and not a CUDA device).
    """
    check_scan_backend(name)
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "meta":  # shapes only (FLOP and size counts): the PyTorch scan stands in
        return "torch"
    on_cuda = dev is None or dev.type == "cuda"
    if name == "auto":
        if dev is None or dev.type != "cuda":
            return "torch"
        if not _triton_import_error():
            return "triton"
        return "cuda" if selective_scan_fn is not None else "torch"
    if name == "triton":
        reason = _triton_missing(dev)
        if reason:
            raise BackendUnavailableError(f"scan backend 'triton' is unavailable: {reason}")
    if name == "cuda":
        reason = _cuda_missing()
        if reason:
            raise BackendUnavailableError(f"scan backend 'cuda' is unavailable: {reason}")
        if not on_cuda:
            raise BackendUnavailableError(
                f"scan backend 'cuda' needs CUDA tensors, got device {dev}; "
                "move the model and inputs to a GPU or use scan backend 'torch'"
            )
    return name


def describe_scan_backend(name: str) -> str:
    """A label for result rows: 'triton', 'cuda-fused' / 'cuda-unfused' (what a Mamba mixer runs),
    'torch-chunked', 'ref'."""
    if name not in SCAN_BACKENDS:
        raise ValueError(f"describe a concrete backend ({', '.join(SCAN_BACKENDS)}), not {name!r}; "
                         "resolve_scan_backend(name, device) gives one")
    return {"triton": "triton", "cuda": "cuda-fused" if fused_mamba_available() else "cuda-unfused",
            "torch": "torch-chunked", "ref": "ref"}[name]


def get_selective_scan(name: str = "auto", device: torch.device | str | None = None):
    """The scan function `name` resolves to for `device` (see resolve_scan_backend)."""
    name = resolve_scan_backend(name, device)
    if name == "triton":  # imported on first use: Triton's import costs about a second
        from dimstudy.ops.triton_scan import selective_scan_triton

        return selective_scan_triton
    return {"cuda": _selective_scan_cuda, "torch": selective_scan_torch, "ref": selective_scan_ref}[name]


def _selective_scan_cuda(*args, **kwargs):
    """mamba-ssm's kernel: its own `selective_scan_fn` in eager code; the same kernel through dimstudy's custom
    ops (`dimstudy.ops.cuda_scan`) while torch.compile traces, where the autograd.Function would break the graph."""
    if torch.compiler.is_compiling():
        from dimstudy.ops.cuda_scan import selective_scan_cuda_op

        return selective_scan_cuda_op(*args, **kwargs)
    return selective_scan_fn(*args, **kwargs)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend: str = "auto"):
    """The selective scan on the backend that `backend` resolves to for u's device."""
    fn = get_selective_scan(backend, u.device)
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=return_last_state)
