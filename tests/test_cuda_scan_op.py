"""mamba-ssm's scan as custom ops (dimstudy.ops.cuda_scan), on CPU.

The compiled extension is not here, so a stand-in takes its place: it follows the extension's contract (what
`selective_scan_cuda.fwd` / `.bwd` take, allocate and return, from its C++) and computes with
`selective_scan_ref`. These tests check the wrapper's side: arguments in the extension's order and layout, the
right result and gradient in the right place, fakes that agree with the real outputs, and no graph break under
torch.compile. tests/gpu/test_gpu_kernels.py runs the real extension through the same ops.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from dimstudy.ops import cuda_scan
from dimstudy.ops.selective_scan import selective_scan_ref

ss = importlib.import_module("dimstudy.ops.selective_scan")  # the module (the package exports a function by its name)


class StandInExtension:
    """selective_scan_cuda's contract, computed by the reference scan."""

    calls = 0

    def fwd(self, u, delta, A, B, C, D, z, delta_bias, softplus):
        assert B.dim() == 4 and C.dim() == 4, "the extension takes input-dependent B, C as (b, groups, n, l)"
        assert all(t.stride(-1) == 1 for t in (u, delta, B, C) + ((z,) if z is not None else ()))
        type(self).calls += 1
        b, d, length = u.shape
        y, last = selective_scan_ref(u, delta, A, B[:, 0], C[:, 0], D, None, delta_bias, softplus,
                                     return_last_state=True)
        out = torch.empty_like(delta).copy_(y)
        x = u.new_zeros(b, d, -(-length // 2048), 2 * A.shape[1], dtype=A.dtype)
        x[:, :, -1, 1::2] = last
        return [out, x] + ([torch.empty_like(z).copy_(out * F.silu(z))] if z is not None else [])

    def bwd(self, u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute_out_z):
        assert dz is None and recompute_out_z is False and (out is not None) == (z is not None)
        # the op runs below autograd, so the reference's gradients come from torch.func's own transform
        values = (u, delta, A, B, C, D, z, delta_bias)
        present = [i for i, t in enumerate(values) if t is not None]

        def scan(*xs):
            v = list(values)
            for i, t in zip(present, xs, strict=True):
                v[i] = t
            return selective_scan_ref(v[0], v[1], v[2], v[3][:, 0], v[4][:, 0], v[5], v[6], v[7], softplus)

        _, vjp = torch.func.vjp(scan, *(values[i] for i in present))
        g = [None] * len(values)
        for i, grad in zip(present, vjp(dout), strict=True):
            g[i] = grad
        du, ddelta, dA, dB, dC, dD, dz_, dbias = g
        # the extension sums dB, dC in float32, then returns them cast back to B's and C's dtype
        return [du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dbias] + ([dz_] if z is not None else [])


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(cuda_scan, "_extension", StandInExtension)
    StandInExtension.calls = 0
    return StandInExtension


def _inputs(b=2, d=5, n=4, length=9, dtype=torch.float64, with_D=True, with_z=True, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    # u, delta, z arrive as (b, l, d) projections seen through a transpose, as in the mixer
    u = r(b, length, d).transpose(1, 2)
    return dict(u=u, delta=r(b, length, d, scale=0.5).transpose(1, 2), A=-torch.rand(d, n, dtype=dtype).requires_grad_(),
                B=r(b, n, length), C=r(b, n, length), D=r(d) if with_D else None,
                z=r(b, length, d).transpose(1, 2) if with_z else None, delta_bias=r(d) if with_bias else None)


def _grads(y, inputs):
    present = {k: v for k, v in inputs.items() if v is not None}
    return dict(zip(present, torch.autograd.grad(y.square().sum(), list(present.values())), strict=True))


@pytest.mark.parametrize("with_D,with_z,with_bias", [(True, True, True), (False, False, False), (True, False, True)])
@pytest.mark.parametrize("softplus", [True, False])
def test_the_op_gives_the_reference_results_and_gradients(stand_in, with_D, with_z, with_bias, softplus):
    inputs = _inputs(with_D=with_D, with_z=with_z, with_bias=with_bias)
    y, last = cuda_scan.selective_scan_cuda_op(**inputs, delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)
    got, want = _grads(y, inputs), _grads(y_ref, inputs)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == inputs[k].dtype, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-10, msg=k)
    assert stand_in.calls == 1


def test_the_ops_fakes_agree_with_their_real_outputs(stand_in):
    x = _inputs(dtype=torch.bfloat16)  # bf16 inputs, as under autocast: every gradient comes back bf16
    args = [x["u"].detach().contiguous(), x["delta"].detach().contiguous(), x["A"].detach(),
            x["B"].detach().unsqueeze(1), x["C"].detach().unsqueeze(1), x["D"].detach(),
            x["z"].detach().contiguous(), x["delta_bias"].detach(), True]  # as selective_scan_cuda_op passes them
    torch.library.opcheck(torch.ops.dimstudy.mamba_ssm_scan_fwd.default, args)
    out, states, out_z = torch.ops.dimstudy.mamba_ssm_scan_fwd(*args)
    grad = torch.randn_like(out_z)
    # the backward by hand (opcheck's own modes do not mix with the stand-in's torch.func vjp)
    bwd_args = args[:8] + [grad, states, out, True]
    real = torch.ops.dimstudy.mamba_ssm_scan_bwd(*bwd_args)
    with FakeTensorMode() as mode:
        fake = torch.ops.dimstudy.mamba_ssm_scan_bwd(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                       for a in bwd_args))
    assert [(f.shape, f.dtype, f.stride()) for f in fake] == [(r.shape, r.dtype, r.stride()) for r in real]
    assert [r.dtype for r in real[3:5]] == [torch.bfloat16, torch.bfloat16]


def test_the_cuda_backend_compiles_without_a_graph_break(stand_in, monkeypatch):
    def eager_only(*args, **kwargs):
        raise AssertionError("mamba-ssm's autograd.Function ran inside the compiled graph")

    monkeypatch.setattr(ss, "selective_scan_fn", eager_only)
    inputs = _inputs()
    scan = ss._selective_scan_cuda  # what get_selective_scan("cuda") returns

    def step(u, delta, A, B, C, D, z, delta_bias):
        return scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True) * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    y = compiled(**inputs)
    y_ref = selective_scan_ref(**inputs, delta_softplus=True) * 2.0
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for k, (got, want) in {k: (a, b) for (k, a), b in zip(_grads(y, inputs).items(), _grads(y_ref, inputs).values(),
                                                             strict=True)}.items():
        tol = 1e-6 if k in "BC" else 1e-10
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=k)
    with pytest.raises(AssertionError, match="autograd.Function ran"):  # and eager calls still go to mamba-ssm's
        scan(**inputs)


def test_without_the_extension_the_op_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(cuda_scan, "_ssi", None)
    with pytest.raises(ss.BackendUnavailableError, match="selective_scan_cuda extension is not importable"):
        cuda_scan.selective_scan_cuda_op(**_inputs())
