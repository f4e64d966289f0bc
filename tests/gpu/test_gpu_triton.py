"""GPU checks of dimstudy's Triton kernels: against mamba-ssm's at DiM's shapes, whole networks across
backends, and torch.compile through the custom ops. Run on a CUDA machine:

    pytest -m gpu tests/gpu

Errors are norm-wise relative, ||a - b|| / ||b||, per tensor; each is printed, so the log records them.
"""

import pytest
import torch

from dimstudy.models.registry import create_model
from dimstudy.ops import available_scan_backends, set_scan_backend
from dimstudy.ops.selective_scan import selective_scan_fn, selective_scan_ref

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
needs_mamba_ssm = pytest.mark.skipif(selective_scan_fn is None, reason="mamba-ssm's kernels are not installed")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dim_inputs(b, d, n, length, dtype, layout, seed=0):
    """Inputs as the mixer makes them: bf16 activations, fp32 A, D, delta_bias; dt ~ softplus(-4 .. -3)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731

    def act(x):  # (b, d, l) in `dtype`, l-contiguous or a view of (b, l, d) memory
        x = x.to(dtype)
        return x.transpose(1, 2).contiguous().transpose(1, 2) if layout == "bld" else x.contiguous()

    return dict(u=act(r(b, d, length)), delta=act(0.5 * r(b, d, length)), A=-torch.exp(0.5 * r(d, n)),
                B=act(r(b, n, length)), C=act(r(b, n, length)), D=r(d), z=act(r(b, d, length)),
                delta_bias=torch.rand(d, device="cuda", generator=g) - 4.0)


def with_grads(fn, x, seed=1):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    y, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    w = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
    (y.float() * w).sum().backward()
    return y.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("b,d,length", [(2, 256, 1030), (8, 1024, 368)])
def test_fp32_against_float64_reference(b, d, length):
    from dimstudy.ops.triton_scan import selective_scan_triton

    x = dim_inputs(b, d, 16, length, torch.float32, "bld")
    y, last, g = with_grads(selective_scan_triton, x)
    y_r, last_r, g_r = with_grads(selective_scan_ref, {k: v.double() for k, v in x.items()})
    errs = {"y": rel_err(y, y_r), "last": rel_err(last, last_r), **{k: rel_err(g[k], g_r[k]) for k in NAMES}}
    print(errs)
    assert all(v < 1e-4 for v in errs.values()), errs


@needs_mamba_ssm
@pytest.mark.parametrize("b,d,length", [(1, 3072, 4496), (16, 1024, 368)])
def test_bf16_against_mamba_ssm_at_dim_shapes(b, d, length):
    """DiM-H/2 at 1024 px (forward only at batch 1) and DiM-S/2 training (forward and backward)."""
    from dimstudy.ops.triton_scan import selective_scan_triton

    x_t = dim_inputs(b, d, 16, length, torch.bfloat16, "bld", seed=2)
    x_m = {k: v.contiguous() for k, v in x_t.items()}  # mamba-ssm wants stride 1 along l
    y_t, last_t, g_t = with_grads(selective_scan_triton, x_t)
    y_m, last_m, g_m = with_grads(selective_scan_fn, x_m)
    errs = {"y": rel_err(y_t, y_m), "last": rel_err(last_t, last_m), **{k: rel_err(g_t[k], g_m[k]) for k in NAMES}}
    print(errs)
    assert errs["y"] < 1e-2 and errs["last"] < 1e-3
    assert all(errs[k] < 2e-2 for k in NAMES), errs


@pytest.mark.parametrize("autocast,tol_out,tol_grad", [(False, 1e-4, 1e-3), (True, 3e-2, 8e-2)])
def test_dim_s_2_forward_and_backward_agree_with_torch_backend(autocast, tol_out, tol_grad, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = create_model("dim_s_2").cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(4, 3, 32, 32, device="cuda", generator=g)
    t = torch.rand(4, device="cuda", generator=g) * 999
    res = {}
    for backend in ("triton", "torch") + (("cuda",) if available_scan_backends()["cuda"] is True else ()):
        set_scan_backend(model, backend)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(x, t)
        out.float().square().mean().backward()
        ran = {m.last_backend for m in model.modules() if getattr(m, "last_backend", None)}
        res[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, ran)
    assert res["triton"][2] == {"triton"}
    for other in set(res) - {"triton"}:
        out_err = rel_err(res["triton"][0], res[other][0])
        grad_err = max(rel_err(res["triton"][1][n], res[other][1][n]) for n in res[other][1] if res[other][1][n].norm() > 0)
        print(other, autocast, out_err, grad_err)
        assert out_err < tol_out and grad_err < tol_grad, (other, out_err, grad_err)


@needs_mamba_ssm
@pytest.mark.parametrize("b,d,length", [(1, 3072, 4496), (16, 1024, 368)])
def test_mamba_ssm_kernel_through_custom_ops_equals_its_own_function(b, d, length):
    """dimstudy.ops.cuda_scan runs the same kernel as selective_scan_fn: equal outputs, last state and per-element
    gradients. The kernel sums dA, dB, dC, dD and ddelta_bias with float atomics, whose order varies from run to
    run (then dB and dC are rounded to bf16): those agree to 5e-4, where a wrong layout would be off by O(1)."""
    from dimstudy.ops.cuda_scan import selective_scan_cuda_op

    x = dim_inputs(b, d, 16, length, torch.bfloat16, "bld")
    y, last, g = with_grads(selective_scan_cuda_op, x)
    y_r, last_r, g_r = with_grads(selective_scan_fn, x)
    errs = {"y": rel_err(y, y_r), "last": rel_err(last, last_r), **{k: rel_err(g[k], g_r[k]) for k in NAMES}}
    print(errs)
    summed = ("A", "B", "C", "D", "delta_bias")
    assert all(v == 0.0 for k, v in errs.items() if k not in summed), errs
    assert all(errs[k] < 5e-4 for k in summed), errs


@needs_mamba_ssm
def test_mamba_ssm_custom_ops_fakes_describe_the_extensions_outputs():
    """The fakes that torch.compile plans with give each real output's shape, dtype and strides, in the layouts
    the mixer passes (delta and z as views of (d, b*l) GEMM results, u contiguous, B and C (b, 1, n, l)). A fake
    that said float32 for the bf16 dB and dC the extension returns once made compiled gradients wrong."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    b, d, n, length = 4, 256, 16, 300
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    gemm = r(2 * d, b * length).to(torch.bfloat16).view(2 * d, b, length).transpose(0, 1)  # (b, 2d, l), l-contiguous
    delta = (0.5 * r(d, b * length)).to(torch.bfloat16).view(d, b, length).transpose(0, 1)  # strides (l, b*l, 1)
    z = gemm[:, d:]  # the second half of in_proj's result, as xz.chunk(2, dim=1) gives it
    args = [r(b, d, length).to(torch.bfloat16), delta, -torch.exp(r(d, n)), r(b, 1, n, length).to(torch.bfloat16),
            r(b, 1, n, length).to(torch.bfloat16), r(d), z, r(d) - 4.0, True]
    torch.library.opcheck(torch.ops.dimstudy.mamba_ssm_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    out, states, out_z = torch.ops.dimstudy.mamba_ssm_scan_fwd(*args)
    bwd_args = args[:8] + [r(*out_z.shape).to(torch.bfloat16), states, out, True]
    real = torch.ops.dimstudy.mamba_ssm_scan_bwd(*bwd_args)
    with FakeTensorMode() as mode:
        fake = torch.ops.dimstudy.mamba_ssm_scan_bwd(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                       for a in bwd_args))
    assert [(f.shape, f.dtype, f.stride()) for f in fake] == [(t.shape, t.dtype, t.stride()) for t in real]


@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=needs_mamba_ssm)])
def test_compiled_dim_block_matches_eager(backend):
    """torch.compile(fullgraph=True) with inductor: the block's norms, adaLN and projections compile around
    the scan and conv custom ops (dimstudy's Triton ones, or mamba-ssm's scan and causal-conv1d's conv), with
    no graph break, and the result equals eager (which on "cuda" runs mamba_inner_fn)."""
    torch.manual_seed(0)
    model = create_model("dim_s_2", scan_backend=backend).cuda()
    block = model.blocks[-1]  # a decoder block: long-skip fusion, norm, adaLN, mixer, gate
    assert block.skip_linear is not None
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 368, block.norm.weight.shape[0], device="cuda", generator=g, requires_grad=True)
    mod = torch.randn(8, 3, x.shape[-1], device="cuda", generator=g) * 0.1
    skip = torch.randn_like(x)
    compiled = torch.compile(block, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_c = compiled(x, mod, skip)
        y_e = block(x, mod, skip)
    assert rel_err(y_c, y_e) < 1e-2
    g_c = torch.autograd.grad(y_c.float().sum(), x)[0]
    g_e = torch.autograd.grad(y_e.float().sum(), x)[0]
    assert rel_err(g_c, g_e) < 2e-2
