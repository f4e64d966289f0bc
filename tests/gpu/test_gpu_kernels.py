"""GPU checks: mamba-ssm's kernels against the chunked PyTorch scan, and the Mamba mixer on every path.

Run on a CUDA machine (the kernel tests also need the `cuda` extra: mamba-ssm and causal-conv1d):

    pytest -m gpu tests/gpu

Without CUDA everything here skips; without mamba-ssm only the PyTorch-on-CUDA tests run.
Errors are norm-wise relative, ||a - b|| / ||b||, per tensor.
"""

import pytest
import torch

from dimstudy.ops.mamba import Mamba
from dimstudy.ops.selective_scan import (
    available_scan_backends,
    fused_mamba_available,
    resolve_scan_backend,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
needs_kernels = pytest.mark.skipif(
    selective_scan_fn is None or not torch.cuda.is_available(),
    reason=f"mamba-ssm kernels unavailable: {available_scan_backends()['cuda']}",
)
needs_fused = pytest.mark.skipif(not fused_mamba_available(), reason="mamba_inner_fn needs causal-conv1d too")

SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32 in fp32 convs/matmuls, so fp32 comparisons measure the scans, not the tensor cores."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def scan_inputs(b=2, d=96, n=16, seqlen=300, dtype=torch.float32, seed=0):
    """Fresh random inputs as Mamba feeds the kernel: u, delta, B, C, z in `dtype`; A, D, delta_bias fp32."""
    torch.manual_seed(seed)
    dev = "cuda"
    x = dict(
        u=torch.randn(b, d, seqlen, device=dev), delta=0.5 * torch.randn(b, d, seqlen, device=dev),
        A=-torch.exp(0.5 * torch.randn(d, n, device=dev)), B=torch.randn(b, n, seqlen, device=dev),
        C=torch.randn(b, n, seqlen, device=dev), D=torch.randn(d, device=dev),
        z=torch.randn(b, d, seqlen, device=dev), delta_bias=torch.rand(d, device=dev) - 4.0,  # softplus(.) ~ 0.02
    )
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}


def scan_with_grads(fn, inputs, seed=1):
    """(out, last_state, {name: grad}) for a fixed random cotangent on the output."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    torch.manual_seed(seed)
    w = torch.randn(out.shape, device=out.device, dtype=torch.float32)
    (out.float() * w).sum().backward()
    return out.detach(), last.detach(), {k: leaves[k].grad for k in SCAN_INPUTS}


# -- the PyTorch scan on CUDA (no kernels needed) ---------------------------------------------------------
def test_torch_scan_on_cuda_matches_float64_reference():
    x = scan_inputs(d=32, seqlen=97)
    y, last, g = scan_with_grads(selective_scan_torch, x)
    y_ref, last_ref, g_ref = scan_with_grads(selective_scan_ref, {k: v.double() for k, v in x.items()})
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5
    for k in SCAN_INPUTS:
        assert rel_err(g[k], g_ref[k]) < 1e-4, k


def test_mamba_torch_backend_on_cuda_with_autocast():
    torch.manual_seed(0)
    m = Mamba(64, scan_backend="torch").cuda()
    x = torch.randn(2, 300, 64, device="cuda")
    y32 = m(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y16 = m(x)
    y16.float().square().mean().backward()
    assert y16.dtype == torch.bfloat16 and m.last_backend == "torch-chunked"
    assert rel_err(y16, y32) < 3e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# -- mamba-ssm's selective_scan_fn against the PyTorch scan ---------------------------------------------------
@needs_kernels
def test_kernel_matches_torch_scan_fp32():
    x = scan_inputs()
    y_k, last_k, g_k = scan_with_grads(selective_scan_fn, x)
    y_t, last_t, g_t = scan_with_grads(selective_scan_torch, x)
    assert y_k.dtype == y_t.dtype == torch.float32
    assert rel_err(y_k, y_t) < 1e-3
    assert rel_err(last_k, last_t) < 1e-3
    for k in SCAN_INPUTS:
        assert rel_err(g_k[k], g_t[k]) < 5e-3, k


@needs_kernels
def test_kernel_matches_torch_scan_bf16_inputs():
    """bf16 u, delta, B, C, z (fp32 A, D, delta_bias, as Mamba passes them): both compute in fp32 inside."""
    x = scan_inputs(dtype=torch.bfloat16, seed=3)
    y_k, _, g_k = scan_with_grads(selective_scan_fn, x)
    y_t, _, g_t = scan_with_grads(selective_scan_torch, x)
    y_64 = selective_scan_ref(**{k: v.double() for k, v in x.items()}, delta_softplus=True)
    assert y_k.dtype == y_t.dtype == torch.bfloat16
    assert rel_err(y_k, y_64) < 1e-2 and rel_err(y_t, y_64) < 1e-2  # each within bf16 rounding of exact
    assert rel_err(y_k, y_t) < 2e-2
    for k in SCAN_INPUTS:
        assert rel_err(g_k[k], g_t[k]) < 3e-2, k


def test_auto_resolves_to_kernels_on_cuda():
    """'auto' takes dimstudy's Triton kernels on CUDA (faster than mamba-ssm's, results/scan-bench/)."""
    assert resolve_scan_backend("auto", "cuda") == "triton"
    assert resolve_scan_backend("auto", "cpu") == "torch"


# -- the Mamba mixer: kernel paths against the PyTorch path, same weights --------------------------------------
def mixer_run(m, x, backend, fused=True, autocast=False, seed=5):
    """Output and {param name: grad} of one forward/backward on `backend`."""
    m.scan_backend, m.use_fused = backend, fused
    m.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = m(x)
    torch.manual_seed(seed)
    (y.float() * torch.randn(y.shape, device=y.device)).sum().backward()
    return y.detach().float(), {k: p.grad.detach().clone() for k, p in m.named_parameters()}


def make_mixer(seed=0, d_model=64, length=300):
    torch.manual_seed(seed)
    m = Mamba(d_model, d_state=16, d_conv=3, expand=2).cuda()
    with torch.no_grad():  # a trained-looking D and dt bias instead of the init's constants
        m.D.normal_()
        m.dt_proj.bias.add_(0.5 * torch.randn_like(m.dt_proj.bias))
    return m, torch.randn(2, length, d_model, device="cuda")


@needs_kernels
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_mixer_cuda_matches_torch_fp32(fused):
    if fused and not fused_mamba_available():
        pytest.skip("mamba_inner_fn needs causal-conv1d too")
    m, x = make_mixer()
    y_k, g_k = mixer_run(m, x, "cuda", fused=fused)
    assert m.last_backend == ("cuda-fused" if fused else "cuda-unfused")
    y_t, g_t = mixer_run(m, x, "torch")
    assert m.last_backend == "torch-chunked"
    assert rel_err(y_k, y_t) < 2e-3
    for k in g_t:
        assert rel_err(g_k[k], g_t[k]) < 5e-3, k


@needs_kernels
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_mixer_cuda_matches_torch_bf16_autocast(fused):
    if fused and not fused_mamba_available():
        pytest.skip("mamba_inner_fn needs causal-conv1d too")
    m, x = make_mixer(seed=1)
    y_k, g_k = mixer_run(m, x, "cuda", fused=fused, autocast=True)
    y_t, g_t = mixer_run(m, x, "torch", autocast=True)
    y_32, _ = mixer_run(m, x, "torch")
    assert rel_err(y_k, y_32) < 3e-2 and rel_err(y_t, y_32) < 3e-2
    assert rel_err(y_k, y_t) < 3e-2
    for k in g_t:  # fp32 parameter grads accumulated from bf16 activations on both sides
        assert rel_err(g_k[k], g_t[k]) < 5e-2, k


@needs_kernels
@needs_fused
def test_fused_and_unfused_cuda_paths_agree():
    m, x = make_mixer(seed=2)
    y_f, g_f = mixer_run(m, x, "cuda", fused=True)
    assert m.last_backend == "cuda-fused"
    y_u, g_u = mixer_run(m, x, "cuda", fused=False)
    assert m.last_backend == "cuda-unfused"
    assert rel_err(y_f, y_u) < 1e-3
    for k in g_f:
        assert rel_err(g_f[k], g_u[k]) < 2e-3, k


@needs_kernels
def test_model_moved_to_cuda_picks_the_kernels():
    torch.manual_seed(3)
    m = Mamba(32)
    x = torch.randn(1, 40, 32)
    y_cpu = m(x)
    assert m.last_backend == "torch-chunked"
    y_gpu = m.cuda()(x.cuda())
    assert m.last_backend == "triton"  # 'auto' on CUDA: the Triton kernels first
    assert rel_err(y_gpu.cpu(), y_cpu) < 2e-3
    m.scan_backend = "cuda"
    y_cuda = m(x.cuda())
    assert m.last_backend in ("cuda-fused", "cuda-unfused")
    assert rel_err(y_cuda.cpu(), y_cpu) < 2e-3
