"""DiM as the public code builds it (issue 13): head condition, adaLN class table, init, pad layouts, sizes."""

import math

import pytest
import torch

from dimstudy.flops import build_on_meta, count_params
from dimstudy.models.dim import DiM
from dimstudy.models.layers import timestep_embedding
from dimstudy.models.registry import create_model


def _capture_input(module: torch.nn.Module) -> dict:
    seen = {}
    module.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0].detach().clone()))
    return seen


def _conditional_tiny(**kw) -> DiM:
    torch.manual_seed(0)
    return DiM(img_size=8, dim=32, depth=5, num_classes=10, scan_backend="ref", **kw)


def test_head_is_conditioned_on_the_raw_sinusoid_plus_the_class_token():
    m = _conditional_tiny()
    head_in, ada_in = _capture_input(m.head.ada), _capture_input(m.ada_proj)
    t, y = torch.tensor([3.0, 700.0]), torch.tensor([2, 10])
    with torch.no_grad():
        m(torch.randn(2, 3, 8, 8), t, y)
        torch.testing.assert_close(head_in["x"], timestep_embedding(t, 32) + m.label_emb(y))
        # adaLN-single: the timestep MLP plus its own class table, not the token's
        torch.testing.assert_close(ada_in["x"], m.t_embed(t) + m.ada_label_emb(y))
        assert not torch.allclose(ada_in["x"], m.t_embed(t) + m.label_emb(y))


def test_the_pre_issue_13_conditioning_is_kept_as_options():
    m = _conditional_tiny(head_cond="adaln", ada_class_table=False)
    assert m.ada_label_emb is None
    head_in = _capture_input(m.head.ada)
    t, y = torch.tensor([3.0, 700.0]), torch.tensor([2, 10])
    with torch.no_grad():
        m(torch.randn(2, 3, 8, 8), t, y)
        torch.testing.assert_close(head_in["x"], m.t_embed(t) + m.label_emb(y))


def test_the_adaln_class_table_is_separate_and_trained():
    m = _conditional_tiny()
    assert m.ada_label_emb.weight.shape == m.label_emb.weight.shape == (11, 32)
    assert m.ada_label_emb.weight.data_ptr() != m.label_emb.weight.data_ptr()
    m(torch.randn(2, 3, 8, 8), torch.tensor([5.0, 9.0]), torch.tensor([1, 4])).square().mean().backward()
    rows = m.ada_label_emb.weight.grad.abs().sum(1)
    assert rows[1] > 0 and rows[4] > 0 and rows[0] == 0  # only the labels used get a gradient


@pytest.mark.parametrize("name,public,why", [
    ("dim_s_2", 50_568_716, 2 * 10 * 512),  # the public CIFAR tables have 11 rows each, ours 1 (unconditional)
    ("dim_l_2", 386_063_376, 24 * 1024),  # d > 512: the public skip is two Linear(d, d), one bias more each
    ("dim_h_2", 862_407_184, 24 * 1536),
])
def test_parameter_counts_equal_the_public_code_up_to_documented_redundancies(name, public, why):
    ours = count_params(build_on_meta(name))
    assert public - ours == why < 1e5  # the same count to 0.1M; the rest is exactly these redundancies


def test_public_512_finetune_count():
    assert count_params(build_on_meta("dim_h_2", img_size=64)) == 863_586_832 - 24 * 1536


def test_initial_weights_follow_the_documented_init():
    torch.manual_seed(0)
    d, depth = 128, 9
    m = DiM(img_size=8, dim=d, depth=depth, num_classes=10, scan_backend="ref")
    p = dict(m.named_parameters())

    def cat(suffix):
        return torch.cat([v.flatten() for k, v in p.items() if k.endswith(suffix)])

    def close(x, std, rel=0.06):  # 6% is > 4 standard errors for the smallest group here (~5000 values)
        assert abs(x.mean().item()) < 4 * std / math.sqrt(x.numel())
        assert abs(x.std().item() / std - 1) < rel, (x.std().item(), std)

    default = lambda fan_in: 1 / math.sqrt(3 * fan_in)  # noqa: E731  std of U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    close(cat("mixer.in_proj.weight"), default(d))
    close(cat("mixer.x_proj.weight"), default(2 * d))
    close(cat("skip_linear.weight"), default(2 * d))
    close(cat("ada_proj.1.weight"), default(d))
    close(cat("head.ada.1.weight"), default(d))
    close(cat("head.linear.weight"), default(d), rel=0.15)  # only 12 x 128 values
    close(cat("mixer.out_proj.weight"), default(2 * d) / math.sqrt(depth))
    close(cat("ada_table"), 1 / math.sqrt(d), rel=0.1)  # randn / sqrt(d), 9 x 3 x 128 values
    close(torch.cat([cat("label_emb.weight"), cat("ada_label_emb.weight")]), 0.02, rel=0.1)
    close(torch.cat([cat("t_embed.mlp.0.weight"), cat("t_embed.mlp.2.weight")]), 0.02)
    close(torch.cat([cat("separators"), cat("pad_tokens")]), 0.02, rel=0.15)
    # weights are uniform where the default init is: none beyond the bound 1/sqrt(fan_in)
    assert cat("mixer.in_proj.weight").abs().max() <= 1 / math.sqrt(d)
    for k in ("skip_linear.bias", "ada_proj.1.bias", "head.ada.1.bias", "head.linear.bias", "t_embed.mlp.0.bias"):
        assert not cat(k).any(), k
    assert not p["pos_embed"].any()
    # Mamba's own: dt bias = softplus^-1(dt), dt in [1e-3, 0.1]; A = -(1..16); D = 1
    dt = torch.nn.functional.softplus(cat("mixer.dt_proj.bias"))
    assert dt.min() >= 1e-3 - 1e-6 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(cat("mixer.A_log").exp().reshape(-1, 16)[0], torch.arange(1.0, 17.0))


def _pads(layout: str, gh: int, gw: int) -> torch.Tensor:
    m = DiM(img_size=2 * gh, dim=4, depth=3, scan_backend="ref", pad_layout=layout)
    with torch.no_grad():
        m.pad_tokens.copy_(torch.tensor([-1.0, -2.0, -3.0])[:, None].expand(3, 4))
    ids = torch.arange(gh * gw, dtype=torch.float).reshape(1, gh, gw, 1).expand(1, gh, gw, 4)
    return m.pad(ids)[0, :, :, 0]  # (gh+3, gw+3): grid ids >= 0, pad p_j as -(j+1)


def test_cyclic_pads_repeat_p0_p1_p2_over_the_pad_positions_in_row_major_order():
    gh, gw = 3, 5
    padded = _pads("cyclic", gh, gw)
    assert torch.equal(padded[:gh, :gw], torch.arange(gh * gw, dtype=torch.float).reshape(gh, gw))
    pads = padded.flatten()[padded.flatten() < 0]  # every pad position, read in row-major order
    assert pads.numel() == (gh + 3) * (gw + 3) - gh * gw
    assert pads.tolist() == [-(k % 3 + 1) for k in range(pads.numel())]
    # the documented form: image rows end p0 p1 p2; bottom cell (gh + r, c) holds p_{(r (gw+3) + c) mod 3}
    assert all(padded[r, gw:].tolist() == [-1, -2, -3] for r in range(gh))
    assert padded[gh + 1, :4].tolist() == [-3, -1, -2, -3]  # r = 1, w + 3 = 8: (8 + c) mod 3 = 2, 0, 1, 2


def test_lateral_is_the_default_and_differs_from_cyclic_only_in_the_bottom_rows():
    lateral, cyclic = _pads("lateral", 3, 5), _pads("cyclic", 3, 5)
    assert DiM(dim=4, depth=3).pad_layout == "lateral"
    assert torch.equal(lateral[:3], cyclic[:3]) and not torch.equal(lateral[3:], cyclic[3:])
    assert lateral[3:].tolist() == [[-1] * 8, [-2] * 8, [-3] * 8]


def test_pad_layout_changes_the_output_and_unknown_options_name_the_choices():
    torch.manual_seed(0)
    a = DiM(img_size=8, dim=16, depth=3, scan_backend="ref")
    b = DiM(img_size=8, dim=16, depth=3, scan_backend="ref", pad_layout="cyclic")
    b.load_state_dict(a.state_dict())  # same parameters: the layout is no weight
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10.0])
    with torch.no_grad():
        assert not torch.allclose(a(x, t), b(x, t))
    with pytest.raises(ValueError, match="unknown pad_layout 'rho'; valid choices: lateral, cyclic"):
        create_model("dim_tiny_2", pad_layout="rho")
    with pytest.raises(ValueError, match="unknown head_cond 'mlp'; valid choices: sinusoid, adaln"):
        create_model("dim_tiny_2", head_cond="mlp")
