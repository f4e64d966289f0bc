"""Whole networks on CUDA: the kernel backends give the same model as the pure-PyTorch ones."""

import pytest
import torch

from dimstudy.models.registry import create_model
from dimstudy.ops import available_scan_backends, set_scan_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
needs_kernels = pytest.mark.skipif(
    available_scan_backends().get("cuda") is not True, reason="mamba-ssm kernels unavailable"
)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _inputs(model, b=4):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, model.in_chans, model.img_size, model.img_size, device="cuda", generator=g)
    t = torch.rand(b, device="cuda", generator=g) * 999
    y = torch.randint(0, model.num_classes, (b,), device="cuda", generator=g) if model.num_classes else None
    return x, t, y


def _run(model, backend, x, t, y, autocast):
    set_scan_backend(model, backend)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, t, y)
    out.float().square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    ran = {m.last_backend for m in model.modules() if hasattr(m, "last_backend") and m.last_backend}
    return out.detach(), grads, ran


@needs_kernels
@pytest.mark.parametrize("autocast,tol_out,tol_grad", [(False, 1e-3, 5e-3), (True, 3e-2, 8e-2)])
def test_dim_s_2_forward_and_backward_agree_across_backends(autocast, tol_out, tol_grad):
    torch.manual_seed(0)
    model = create_model("dim_s_2").cuda()
    x, t, y = _inputs(model)
    out_k, g_k, ran_k = _run(model, "cuda", x, t, y, autocast)
    out_t, g_t, ran_t = _run(model, "torch", x, t, y, autocast)
    assert ran_k == {"cuda-fused"} or ran_k == {"cuda-unfused"}
    assert ran_t == {"torch-chunked"}
    assert rel_err(out_k, out_t) < tol_out
    worst = max(rel_err(g_k[n], g_t[n]) for n in g_t if g_t[n].norm() > 0)
    assert worst < tol_grad


@needs_kernels
def test_dim_h_2_forward_agrees_across_backends_in_bf16():
    torch.manual_seed(0)
    model = create_model("dim_h_2").cuda().eval()
    x, t, y = _inputs(model, b=2)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        set_scan_backend(model, "cuda")
        out_k = model(x, t, y)
        set_scan_backend(model, "torch")
        out_t = model(x, t, y)
    assert rel_err(out_k, out_t) < 3e-2


@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_uvit_attention_backends_agree_with_the_math_reference(backend):
    if backend == "flash":
        pytest.importorskip("flash_attn")
    torch.manual_seed(0)
    ref = create_model("uvit_s_2", attn_backend="math").cuda()
    fast = create_model("uvit_s_2", attn_backend=backend).cuda()
    fast.load_state_dict(ref.state_dict())
    x, t, y = _inputs(ref)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out_ref, out = ref(x, t, y), fast(x, t, y)
    assert rel_err(out, out_ref) < 2e-2
    assert {m.last_backend for m in fast.modules() if hasattr(m, "attn_backend")} == {backend}
