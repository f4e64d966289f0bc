"""The chunked PyTorch scan against the token-by-token reference, in float64, values and gradients."""

import pytest
import torch

from dimstudy.ops.selective_scan import (
    BackendUnavailableError,
    available_scan_backends,
    check_scan_backend,
    describe_scan_backend,
    get_selective_scan,
    resolve_scan_backend,
    selective_scan,
    selective_scan_fn,
    selective_scan_ref,
    selective_scan_torch,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(b, d, n, seqlen, dtype=torch.float64, seed=0, groups_form=False):
    """Random scan inputs shaped as Mamba makes them: dt around softplus range, A < 0."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    B, C = r(b, n, seqlen), r(b, n, seqlen)
    if groups_form:
        B, C = B[:, None], C[:, None]
    return dict(
        u=r(b, d, seqlen), delta=0.5 * r(b, d, seqlen), A=-torch.exp(r(d, n)), B=B, C=C,
        D=r(d), z=r(b, d, seqlen), delta_bias=0.5 * r(d),
    )


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_scan(fn, inputs, use, softplus, last_state, **kw):
    """Output, last state and the gradients of a generic loss wrt every input in `use`."""
    leaves = {k: v.clone().requires_grad_(k in use) for k, v in inputs.items()}
    args = {k: (leaves[k] if k in use else None) for k in ("D", "z", "delta_bias")}
    out = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], **args,
             delta_softplus=softplus, return_last_state=last_state, **kw)
    y, last = out if last_state else (out, None)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    loss = (y * w).sum() + (last.square().sum() if last is not None else 0)
    wrt = [leaves[k] for k in NAMES if k in use]
    return y, last, dict(zip([k for k in NAMES if k in use], torch.autograd.grad(loss, wrt), strict=True))


CASES = [  # (b, d, n, seqlen, chunk_size, optional inputs used, softplus, return_last_state)
    (2, 6, 4, 37, 5, {"D", "z", "delta_bias"}, True, True),  # seqlen not a multiple of the chunk
    (2, 6, 4, 37, None, {"D", "z", "delta_bias"}, True, False),  # default chunk
    (1, 3, 2, 64, 8, set(), False, True),  # nothing optional, no softplus (dt = delta, either sign)
    (3, 4, 5, 50, 7, {"D"}, True, True),
    (2, 5, 3, 29, 1, {"z"}, False, False),  # chunk 1: every step its own chunk
    (2, 5, 3, 29, 64, {"delta_bias"}, True, True),  # one chunk longer than seqlen
    (1, 2, 3, 1, None, {"D", "z", "delta_bias"}, True, True),  # a single token
]


@pytest.mark.parametrize("b,d,n,seqlen,chunk,optional,softplus,last_state", CASES)
def test_torch_scan_matches_reference_float64(b, d, n, seqlen, chunk, optional, softplus, last_state):
    inputs = make_inputs(b, d, n, seqlen, seed=seqlen + d)
    use = {"u", "delta", "A", "B", "C"} | optional
    y_ref, last_ref, g_ref = run_scan(selective_scan_ref, inputs, use, softplus, last_state)
    y, last, g = run_scan(selective_scan_torch, inputs, use, softplus, last_state, chunk_size=chunk)
    assert y.shape == (b, d, seqlen) and y.dtype == torch.float64
    assert rel_err(y, y_ref) < 1e-10
    if last_state:
        assert last.shape == (b, d, n)
        assert rel_err(last, last_ref) < 1e-10
    assert set(g) == use
    for k in use:
        assert rel_err(g[k], g_ref[k]) < 1e-10, k


def test_reference_is_the_recurrence():
    """The reference itself against the recurrence written out by hand for a tiny case."""
    x = make_inputs(1, 2, 3, 4, seed=3)
    dt = torch.nn.functional.softplus(x["delta"] + x["delta_bias"][:, None])
    h = torch.zeros(1, 2, 3, dtype=torch.float64)
    ys = []
    for t in range(4):
        h = torch.exp(dt[..., t, None] * x["A"]) * h + dt[..., t, None] * x["B"][:, None, :, t] * x["u"][..., t, None]
        ys.append((h * x["C"][:, None, :, t]).sum(-1) + x["D"] * x["u"][..., t])
    y = torch.stack(ys, -1) * torch.nn.functional.silu(x["z"])
    out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    assert rel_err(out, y) < 1e-14 and rel_err(last, h) < 1e-14


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan_torch])
def test_groups_form_and_dtypes(fn):
    """(b, 1, n, l) B/C equal (b, n, l); output in u's dtype, computed in float32."""
    x = make_inputs(2, 4, 3, 10, dtype=torch.float32)
    ref = fn(**x, delta_softplus=True)
    grouped = make_inputs(2, 4, 3, 10, dtype=torch.float32, groups_form=True)
    torch.testing.assert_close(fn(**grouped, delta_softplus=True), ref)
    half = {k: v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v for k, v in x.items()}
    y = fn(**half, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="groups"):
        fn(**{**x, "B": x["B"][:, None].expand(-1, 2, -1, -1)})


def test_float32_torch_scan_close_to_reference_long_sequence():
    x = make_inputs(2, 8, 16, 366, dtype=torch.float32, seed=7)
    torch.testing.assert_close(selective_scan_torch(**x, delta_softplus=True),
                               selective_scan_ref(**x, delta_softplus=True), atol=1e-4, rtol=1e-4)


# -- backend registry ----------------------------------------------------------------------------------------
def test_registry_on_this_machine():
    avail = available_scan_backends()
    assert set(avail) == {"triton", "cuda", "torch", "ref"} and avail["torch"] is True and avail["ref"] is True
    assert resolve_scan_backend("auto", "cpu") == "torch"
    assert resolve_scan_backend("auto") == "torch"
    assert resolve_scan_backend("ref", "cpu") == "ref"
    assert get_selective_scan("torch") is selective_scan_torch
    assert describe_scan_backend("torch") == "torch-chunked" and describe_scan_backend("ref") == "ref"
    assert describe_scan_backend("cuda") in ("cuda-fused", "cuda-unfused")
    x = make_inputs(1, 2, 2, 5)
    torch.testing.assert_close(selective_scan(**x, backend="ref"), selective_scan_ref(**x))


def test_unknown_backend_names_the_choices():
    for call in (lambda: resolve_scan_backend("mamba2"), lambda: check_scan_backend("Torch"),
                 lambda: describe_scan_backend("auto")):
        with pytest.raises(ValueError, match="cuda") as e:
            call()
        assert all(name in str(e.value) for name in ("triton", "torch", "ref"))


def test_cuda_backend_unavailable_says_why():
    with pytest.raises(BackendUnavailableError) as e:
        resolve_scan_backend("cuda", "cpu")  # CPU tensors: never runnable, kernels or not
    assert "'cuda'" in str(e.value)
    if selective_scan_fn is None:
        with pytest.raises(BackendUnavailableError, match="mamba-ssm") as e:
            resolve_scan_backend("cuda")
        assert "pip install" in str(e.value) and "\n" not in str(e.value)
        assert "mamba-ssm" in available_scan_backends()["cuda"]


def test_torch_scan_plain_sum_loss():
    """A loss like y.sum() hands the backward expanded (stride-0) gradients."""
    x = make_inputs(2, 3, 4, 11, seed=5)
    grads = []
    for fn in (selective_scan_ref, selective_scan_torch):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        y, last = fn(**leaves, delta_softplus=True, return_last_state=True)
        grads.append(torch.autograd.grad(y.sum() + last.sum(), list(leaves.values())))
    for g_ref, g in zip(*grads, strict=True):
        assert rel_err(g, g_ref) < 1e-10
