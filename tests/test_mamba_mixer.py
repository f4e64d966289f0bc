"""The Mamba mixer: mamba-ssm's parameter layout, backends agreeing, causality, backend selection."""

import math

import pytest
import torch
import torch.nn as nn

from dimstudy.ops.mamba import Mamba, set_scan_backend, use_scan_backend
from dimstudy.ops.selective_scan import BackendUnavailableError, selective_scan_fn

# mamba_ssm.modules.mamba_simple.Mamba(d_model=64, d_conv=3) state dict: d_inner 128, dt_rank 4, d_state 16.
EXPECTED_PARAMS_64 = {
    "A_log": (128, 16),
    "D": (128,),
    "in_proj.weight": (256, 64),
    "conv1d.weight": (128, 1, 3),
    "conv1d.bias": (128,),
    "x_proj.weight": (36, 128),
    "dt_proj.weight": (128, 4),
    "dt_proj.bias": (128,),
    "out_proj.weight": (64, 128),
}


def test_parameter_names_and_shapes_match_mamba_ssm():
    m = Mamba(64)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == EXPECTED_PARAMS_64
    assert (m.d_model, m.d_inner, m.d_state, m.d_conv, m.dt_rank) == (64, 128, 16, 3, 4)
    assert isinstance(m.conv1d, nn.Conv1d) and m.conv1d.padding == (2,) and m.conv1d.groups == 128
    with_bias = Mamba(64, d_conv=4, bias=True, conv_bias=False, dt_rank=8)
    shapes = {k: tuple(v.shape) for k, v in with_bias.state_dict().items()}
    assert shapes["in_proj.bias"] == (256,) and shapes["out_proj.bias"] == (64,) and "conv1d.bias" not in shapes
    assert shapes["conv1d.weight"] == (128, 1, 4) and shapes["x_proj.weight"] == (8 + 32, 128)


def test_init_follows_mamba1():
    m = Mamba(64, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 17.0)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay and m.dt_proj.bias._no_reinit
    dt = nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    const = Mamba(64, dt_init="constant", dt_scale=2.0)
    assert torch.all(const.dt_proj.weight == 2.0 * 4**-0.5)
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(64, dt_init="xavier")


def test_torch_and_ref_backends_agree_float64():
    torch.manual_seed(0)
    m = Mamba(32, d_state=8).double()
    x = torch.randn(2, 23, 32, dtype=torch.float64)
    outs, grads = {}, {}
    for name in ("torch", "ref"):
        m.scan_backend = name
        m.zero_grad()
        y = m(x)
        assert m.last_backend == {"torch": "torch-chunked", "ref": "ref"}[name]
        (y * torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)).sum().backward()
        outs[name] = y.detach()
        grads[name] = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert outs["torch"].shape == x.shape
    torch.testing.assert_close(outs["torch"], outs["ref"], rtol=1e-10, atol=1e-12)
    for k in grads["ref"]:
        torch.testing.assert_close(grads["torch"][k], grads["ref"][k], rtol=1e-9, atol=1e-12, msg=k)


def test_causal():
    torch.manual_seed(1)
    m = Mamba(16, d_state=4, scan_backend="torch").double()
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    j = 11
    x2 = x.clone()
    x2[:, j] += torch.randn(2, 16, dtype=torch.float64)
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :j], y2[:, :j], rtol=0, atol=1e-14)
    assert (y[:, j:] - y2[:, j:]).abs().amax(dim=(0, 2)).min() > 0  # j and everything after it moved


def test_auto_backend_on_cpu_is_torch():
    m = Mamba(16, d_state=4)
    m(torch.randn(1, 5, 16))
    assert m.scan_backend == "auto" and m.last_backend == "torch-chunked"


def test_unknown_backend_raises_value_error_with_choices():
    with pytest.raises(ValueError, match="auto, triton, cuda, torch, ref"):
        Mamba(16, scan_backend="fast")
    m = Mamba(16)
    with pytest.raises(ValueError, match="torch"):
        m.scan_backend = "mamba3"
    with pytest.raises(ValueError, match="ref"):
        set_scan_backend(nn.Sequential(m), "kernel")


@pytest.mark.skipif(selective_scan_fn is not None and torch.cuda.is_available(), reason="the CUDA kernels are here")
def test_forcing_cuda_without_kernels_says_what_is_missing():
    model = nn.Sequential(Mamba(16, d_state=4), Mamba(16, d_state=4))
    with pytest.raises(BackendUnavailableError) as e:
        set_scan_backend(model, "cuda")
    msg = str(e.value)
    assert "'cuda'" in msg and "\n" not in msg
    if selective_scan_fn is None:
        assert "mamba-ssm" in msg and "pip install" in msg
    assert all(m.scan_backend == "auto" for m in model)  # nothing was changed
    model[0].scan_backend = "cuda"  # set directly: raises at the first forward instead
    with pytest.raises(BackendUnavailableError):
        model(torch.randn(1, 4, 16))


def test_set_and_use_scan_backend_reach_every_mixer():
    model = nn.Sequential(Mamba(16, d_state=4), nn.LayerNorm(16), Mamba(16, d_state=4, scan_backend="ref"))
    with use_scan_backend(model, "torch"):
        assert [model[0].scan_backend, model[2].scan_backend] == ["torch", "torch"]
        model(torch.randn(1, 6, 16))
        assert model[0].last_backend == model[2].last_backend == "torch-chunked"
    assert [model[0].scan_backend, model[2].scan_backend] == ["auto", "ref"]
    assert set_scan_backend(model, "ref") == 2
    model(torch.randn(1, 6, 16))
    assert model[2].last_backend == "ref"


def test_state_dict_round_trip():
    torch.manual_seed(2)
    a, b = Mamba(32, d_state=8, scan_backend="torch"), Mamba(32, d_state=8, scan_backend="torch")
    x = torch.randn(2, 9, 32)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_bias_options_and_meta_device():
    m = Mamba(16, d_state=4, bias=True, conv_bias=False, scan_backend="torch")
    assert m(torch.randn(2, 7, 16)).shape == (2, 7, 16)
    with torch.device("meta"):  # shapes only, as dimstudy.flops builds models
        meta = Mamba(64)
    y = meta(torch.empty(2, 50, 64, device="meta"))
    assert y.shape == (2, 50, 64) and y.device.type == "meta"
    assert meta.dt_rank == math.ceil(64 / 16)


def test_set_scan_backend_checks_the_name_even_without_mixers():
    with pytest.raises(ValueError, match="valid choices"):
        set_scan_backend(nn.Linear(2, 2), "fast")
    assert set_scan_backend(nn.Linear(2, 2), "torch") == 0
    assert "scan_backend='auto'" in repr(Mamba(16))


@pytest.mark.parametrize("length", [1, 7, 9, 366])
def test_padding_the_length_to_a_multiple_of_8_changes_no_output(length):
    torch.manual_seed(0)
    m = Mamba(32, scan_backend="ref").double()
    x = torch.randn(2, length, 32, dtype=torch.float64, requires_grad=True)
    padded = m(x)
    m.pad_multiple = 1
    plain = m(x)
    assert padded.shape == plain.shape == x.shape
    assert (padded - plain).abs().max() < 1e-12
    g1, = torch.autograd.grad(padded.sum(), x)
    g2, = torch.autograd.grad(plain.sum(), x)
    assert (g1 - g2).abs().max() < 1e-12


def test_kernels_that_ran_names_each_mixers_last_kernel_and_nothing_before_a_forward():
    from dimstudy.models.registry import create_model
    from dimstudy.ops.mixers import is_mixer, kernels_that_ran

    models = {name: create_model(name, img_size=8, dim=16, depth=3) for name in ("dim_tiny_2", "uvit_tiny_2")}
    for model in models.values():
        assert kernels_that_ran(model) == {"scan_backend": None, "attn_backend": None, "fused": None}
    x, t = torch.randn(1, 3, 8, 8), torch.ones(1)
    for model in models.values():
        with torch.no_grad():
            model(x, t)
    assert kernels_that_ran(models["dim_tiny_2"]) == {"scan_backend": "torch-chunked", "attn_backend": None, "fused": False}
    assert kernels_that_ran(models["uvit_tiny_2"]) == {"scan_backend": None, "attn_backend": "sdpa", "fused": None}
    assert sum(map(is_mixer, models["dim_tiny_2"].modules())) == sum(isinstance(m, Mamba) for m in models["dim_tiny_2"].modules()) > 0
