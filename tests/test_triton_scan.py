"""The Triton scan and conv kernels (run through Triton's interpreter on CPU) against the references.

The scan runs in float32 and is compared with `selective_scan_ref` in float64: output, last state and the
gradient of every input, norm-wise relative error. Small shapes (the interpreter is slow), with the chunk
length shrunk so that a few dozen steps still cross several saved-state chunks and sequence parts.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from test_selective_scan import NAMES, make_inputs, rel_err  # noqa: E402

import dimstudy.ops.triton_scan as ts  # noqa: E402
from dimstudy.ops.mamba import Mamba  # noqa: E402
from dimstudy.ops.selective_scan import (  # noqa: E402
    available_scan_backends,
    get_selective_scan,
    resolve_scan_backend,
    selective_scan_ref,
)
from dimstudy.ops.triton_conv import causal_conv1d_silu_torch, causal_conv1d_silu_triton  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and available_scan_backends()["triton"] is not True,
    reason=f"triton backend unavailable: {available_scan_backends()['triton']}",
)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(ts, "CHUNK", 8)  # 8 steps between saved states: short sequences cross several chunks
    monkeypatch.setattr(ts, "WALK_CHUNK", 8)  # and without a backward, parts of a few chunks each


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def compare(b, d, n, seqlen, use=NAMES, softplus=True, last_state=True, groups_form=False, layout="bdl",
            seed=0, tol=2e-6):
    """Triton (float32) against the reference (float64): y, last state, and d(loss)/d(input) for `use`."""
    x = make_inputs(b, d, n, seqlen, seed=seed, groups_form=groups_form)
    x = {k: v for k, v in x.items() if k in use}
    if not softplus:  # dt = delta + bias as given: keep it positive, as a step size is
        x.update({k: x[k].abs() for k in ("delta", "delta_bias") if k in x})
    g = torch.Generator().manual_seed(seed + 1)
    gy, gl = torch.randn(b, d, seqlen, generator=g, dtype=torch.float64), torch.randn(b, d, n, generator=g, dtype=torch.float64)

    def loss(fn, inputs):
        y, last = fn(**inputs, delta_softplus=softplus, return_last_state=True)
        out = (y.double() * gy.to(y.device)).sum()
        if last_state:
            out = out + (last.double() * gl.to(y.device)).sum()
        return y, last, torch.autograd.grad(out, list(inputs.values()))

    ref = {k: v.clone().requires_grad_() for k, v in x.items()}

    def to_kernel(k, v):
        v = v.float().to(device())
        if layout == "bld" and k in ("u", "delta", "z"):  # the mixer's layout: (b, l, d) memory, viewed (b, d, l)
            v = v.transpose(1, 2).contiguous().transpose(1, 2)
        return v.requires_grad_()

    ker = {k: to_kernel(k, v) for k, v in x.items()}
    y_r, last_r, g_r = loss(selective_scan_ref, ref)
    y_t, last_t, g_t = loss(ts.selective_scan_triton, ker)
    assert y_t.dtype == torch.float32 and y_t.stride() == ker["u"].stride()  # u's dtype and layout
    errs = {"y": rel_err(y_t.double().cpu(), y_r), "last": rel_err(last_t.double().cpu(), last_r)}
    errs.update({f"d{k}": rel_err(gt.double().cpu(), gr) for k, gt, gr in zip(x, g_t, g_r, strict=True)})
    assert all(v < tol for v in errs.values()), errs
    return errs


@pytest.mark.parametrize("b,d,n,seqlen", [
    (2, 5, 16, 21),   # L not a multiple of the chunk, d not a multiple of the channel block
    (1, 4, 16, 5),    # L shorter than one chunk, batch 1
    (1, 3, 1, 17),    # d_state 1
    (2, 3, 64, 9),    # d_state 64
    (1, 2, 3, 12),    # d_state not a power of two
])
def test_matches_reference(b, d, n, seqlen):
    compare(b, d, n, seqlen)


@pytest.mark.parametrize("use", [("u", "delta", "A", "B", "C"), ("u", "delta", "A", "B", "C", "D"),
                                 ("u", "delta", "A", "B", "C", "z", "delta_bias")])
@pytest.mark.parametrize("softplus", [True, False])
def test_optional_inputs(use, softplus):
    """D, z and delta_bias absent or present, softplus on and off."""
    compare(2, 3, 4, 11, use=use, softplus=softplus, seed=3)


def test_mixer_layout_groups_form_and_no_last_state_grad():
    compare(2, 6, 8, 19, layout="bld", groups_form=True, last_state=False, seed=5)


@pytest.mark.parametrize("parts", [2, 3])
def test_sequence_parts_give_the_same_result(monkeypatch, parts):
    """The forward split into parts walked in parallel (states carried across) equals the reference."""
    monkeypatch.setattr(ts, "PARTS_OVERRIDE", parts)
    compare(1, 4, 16, 29, seed=7)


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("parts", [1, 3])
def test_forward_prefetch_depth_gives_the_same_result(monkeypatch, depth, parts):
    """Two or three steps' inputs in flight (FWD_DEPTH) equal the reference, with the sequence in one part and
    in three (a part's look-ahead then reads into the next part), L = 29 not a multiple of anything."""
    monkeypatch.setattr(ts, "FWD_DEPTH", depth)
    monkeypatch.setattr(ts, "PARTS_OVERRIDE", parts)
    compare(1, 4, 16, 29, seed=7)


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("b,d,n,seqlen", [(2, 5, 16, 21), (1, 3, 4, 5)])
def test_backward_reading_stored_decays_gives_the_same_gradients(monkeypatch, prefetch, b, d, n, seqlen):
    """STORE_DECAY: the adjoint reads each step's exp(dt A) from the scratch instead of computing it again,
    with and without the backward's prefetch, L across chunks (21 = 8 + 8 + 5) and shorter than one."""
    monkeypatch.setattr(ts, "STORE_DECAY", True)
    monkeypatch.setattr(ts, "BWD_PREFETCH", prefetch)
    compare(b, d, n, seqlen, seed=17)


@pytest.mark.parametrize("scatter", [True, False])
@pytest.mark.parametrize("d,n", [(20, 16), (20, 4), (17, 3)])
def test_dB_dC_reduce_scatter_and_plain_sums_agree(monkeypatch, scatter, d, n):
    """dB and dC summed over a block's channels by reduce-scatter (n halved per level, then the remaining
    channel bits) or by one sum per n: both equal the reference, with n = the block (16 channels on CPU),
    n < the block (two more levels), n not a power of two, and a partly filled last block."""
    monkeypatch.setattr(ts, "SCATTER_SUMS", scatter)
    compare(1, d, n, 9, seed=13)


def test_block_override_changes_nothing(monkeypatch):
    x = make_inputs(2, 9, 4, 13, dtype=torch.float32, seed=11)
    x = {k: v.to(device()) for k, v in x.items()}
    y0 = ts.selective_scan_triton(**x, delta_softplus=True)
    monkeypatch.setattr(ts, "BLOCK_OVERRIDE", (4, 1))
    torch.testing.assert_close(ts.selective_scan_triton(**x, delta_softplus=True), y0, atol=1e-6, rtol=1e-6)


def test_bad_shapes_name_what_is_wrong():
    x = make_inputs(1, 3, 4, 6, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"B must be input-dependent, \(b, n, l\)"):
        ts.selective_scan_triton(**{**x, "B": x["B"][0]})
    with pytest.raises(ValueError, match="D must be"):
        ts.selective_scan_triton(**{**x, "D": x["D"][:2]})


def test_backend_registry_knows_triton():
    assert resolve_scan_backend("triton", device()) == "triton"
    assert get_selective_scan("triton", device()) is ts.selective_scan_triton
    # 'auto' prefers Triton for CUDA tensors only; CPU tensors get the PyTorch scan
    assert resolve_scan_backend("auto", "cpu") == "torch"


# -- the conv ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,bias,silu", [(3, True, True), (4, False, True), (2, True, False)])
def test_conv_matches_torch(k, bias, silu):
    g = torch.Generator().manual_seed(k)
    b, length, d = 2, 37, 70  # crosses the (32, 64) tile in both directions
    xz = torch.randn(b, length, 2 * d, generator=g, dtype=torch.float64)
    w, bv = torch.randn(d, k, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    go = torch.randn(b, length, d, generator=g, dtype=torch.float64)
    ref_in = [xz.clone().requires_grad_(), w.clone().requires_grad_(), bv.clone().requires_grad_() if bias else None]
    ker_in = [xz.float().to(device()).requires_grad_(), w.float().to(device()).requires_grad_(),
              bv.float().to(device()).requires_grad_() if bias else None]
    outs = []
    for fn, (x_, w_, b_) in ((causal_conv1d_silu_torch, ref_in), (causal_conv1d_silu_triton, ker_in)):
        y = fn(x_[..., :d], w_, b_, silu=silu)  # a strided (b, l, d) view, as the mixer passes x
        leaves = [t for t in (x_, w_, b_) if t is not None]
        outs.append((y, torch.autograd.grad((y.double() * go.to(y.device)).sum(), leaves)))
    (y_r, g_r), (y_t, g_t) = outs
    assert rel_err(y_t.double().cpu(), y_r) < 2e-6
    for a, r in zip(g_t, g_r, strict=True):
        assert rel_err(a.double().cpu(), r) < 2e-6


# -- the mixer and torch.compile --------------------------------------------------------------------------------
def test_mixer_on_triton_matches_torch_backend():
    torch.manual_seed(0)
    m = Mamba(24, d_state=8, d_conv=3).to(device())
    x = torch.randn(2, 11, 24, device=device())
    results = {}
    for name in ("torch", "triton"):
        m.scan_backend = name
        xx = x.clone().requires_grad_()
        y = m(xx)
        results[name] = (y, torch.autograd.grad(y.square().sum(), [xx, *m.parameters()]), m.last_backend)
    assert results["triton"][2] == "triton" and results["torch"][2] == "torch-chunked"
    assert rel_err(results["triton"][0].double(), results["torch"][0].double()) < 1e-5
    for a, r in zip(results["triton"][1], results["torch"][1], strict=True):
        assert rel_err(a.double(), r.double()) < 1e-5


def test_custom_ops_trace_without_graph_breaks():
    """fullgraph=True fails on any graph break: the scan and conv trace as torch.library ops with fakes."""
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, d_conv=3, scan_backend="triton").to(device())
    x = torch.randn(1, 9, 16, device=device(), requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y_c = compiled(x)
    y_e = m(x)
    torch.testing.assert_close(y_c, y_e)
    g_c = torch.autograd.grad(y_c.sum(), [x, m.A_log])
    g_e = torch.autograd.grad(y_e.sum(), [x, m.A_log])
    for a, b in zip(g_c, g_e, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk", [4, 0])  # states saved every 4 steps; none (no backward to come)
def test_custom_op_fakes_agree_with_the_kernels(chunk):
    x = make_inputs(2, 3, 4, 10, dtype=torch.float32)
    x = {k: v.to(device()) for k, v in x.items()}
    torch.library.opcheck(torch.ops.dimstudy.selective_scan_fwd.default,
                          (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, chunk),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("parts", [None, 3])
def test_without_gradients_nothing_is_saved_and_y_is_the_same(monkeypatch, parts):
    """Inference (no input needs a gradient) saves no states; its y and last state equal the training forward's
    and the reference, also walked in parts."""
    monkeypatch.setattr(ts, "PARTS_OVERRIDE", parts)
    x = make_inputs(1, 5, 16, 29, dtype=torch.float32, seed=17)
    x = {k: v.to(device()) for k, v in x.items()}
    args = [x[k] if k in x else None for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y0, last0, saved0 = torch.ops.dimstudy.selective_scan_fwd(*args, True, 0)
    y1, last1, saved1 = torch.ops.dimstudy.selective_scan_fwd(*args, True, ts.CHUNK)
    assert saved0.shape == (1, 0, 16, 5) and saved1.shape == (1, 4, 16, 5)  # 29 steps: 4 chunks of 8
    torch.testing.assert_close(y0, y1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last0, last1, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        y, last = ts.selective_scan_triton(**x, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**{k: v.cpu().double() for k, v in x.items()}, delta_softplus=True,
                                         return_last_state=True)
    assert rel_err(y.double().cpu(), y_ref) < 1e-5 and rel_err(last.double().cpu(), last_ref) < 1e-5
