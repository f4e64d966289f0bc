"""The model factory: every preset runs, DiM's layout is the public code's, components toggle cleanly."""

import itertools
from functools import partial

import pytest
import torch
import torch.nn as nn

from dimstudy.flops import build_on_meta, count_params, summarize
from dimstudy.models.components import COMPONENTS, component_flags
from dimstudy.models.dim import DiM
from dimstudy.models.registry import create_model, get_entry, list_models
from dimstudy.ops.mamba import Mamba
from dimstudy.paper import variant_label

BIG = {"dim_l_2", "dim_h_2", "mamba_900m_2", "uvit_900m_2"}


def _inputs(model, size, b=2):
    x = torch.randn(b, model.in_chans, size, size)
    t = torch.rand(b) * 999
    y = torch.randint(0, model.num_classes, (b,)) if model.num_classes else None
    return x, t, y


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in list_models()])
def test_every_registered_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, scan_backend="torch") if get_entry(name).family != "uvit" else create_model(name)
    tiny = "tiny" in name
    # Full parameters, fewer tokens for the real sizes: keeps CPU time to seconds (a 0.9B model still runs).
    x, t, y = _inputs(model, model.img_size if tiny else 8, b=2 if tiny else 1)
    out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name,paper_m", [("dim_s_2", 50), ("dim_l_2", 380), ("dim_h_2", 860)])
def test_dim_sizes_are_within_3_percent_of_the_paper(name, paper_m):
    params = count_params(build_on_meta(name))
    assert abs(params / 1e6 - paper_m) / paper_m < 0.03, params


def test_uvit_s_2_matches_its_published_size():
    assert abs(count_params(build_on_meta("uvit_s_2")) / 1e6 - 44.3) < 0.5


@pytest.mark.parametrize("name", ["uvit_900m_2", "mamba_900m_2"])
def test_fig3_baselines_are_about_0_9b(name):
    assert abs(count_params(build_on_meta(name)) / 0.9e9 - 1) < 0.05


def test_token_counts_match_the_public_code():
    assert summarize("dim_s_2")["tokens"] == 366  # 19 x 19 padded grid + t, c, 3 separators
    assert summarize("uvit_s_2")["tokens"] == 257
    assert build_on_meta("dim_tiny_2").sequence_length(64) == 1230  # a 64x64 latent: 35 x 35 padded grid
    assert summarize("mamba_s_2")["tokens"] == 258


def test_sequence_layout_of_dim():
    m = build_on_meta("dim_s_2")
    assert m.num_extra == 5 and m.num_pad == 3
    assert m.schedule == ["1", "2", "3", "4"] * 3 + ["1", "4", "3", "2"] * 3 + ["1"]
    skips = [i for i, b in enumerate(m.blocks) if b.skip_linear is not None]
    assert skips == list(range(13, 25)) and m.push == set(range(1, 13))


def test_pad_layout_rows_and_columns_end_with_the_pad_tokens():
    m = create_model("dim_tiny_2", scan_backend="ref")
    gh, gw, d = 4, 6, m.dim
    with torch.no_grad():
        m.pad_tokens.copy_(torch.tensor([-1.0, -2.0, -3.0])[:, None].expand(3, d))
    ids = torch.arange(gh * gw, dtype=torch.float).reshape(1, gh, gw, 1).expand(1, gh, gw, d)
    padded = m.pad(ids)[0, :, :, 0]  # (gh+3, gw+3)
    assert padded.shape == (gh + 3, gw + 3)
    for r in range(gh):  # every row in row-major order ends with p0 p1 p2
        assert padded[r, -3:].tolist() == [-1, -2, -3]
    for c in range(gw + 3):  # every column in column-major order ends with p0 p1 p2
        assert padded[-3:, c].tolist() == [-1, -2, -3]
    assert torch.equal(padded[:gh, :gw], ids[0, :, :, 0])  # un-padding recovers the grid exactly


class _PassThrough(nn.Module):
    """A mixer that contributes nothing: the residual stream is then only the scan permutations."""

    def __init__(self, dim, layer_idx=None, **_):
        super().__init__()

    def forward(self, x):
        return torch.zeros_like(x)


class _SkipChecker(nn.Module):
    """Replaces a skip Linear: asserts the skip has the same token order as the input it joins."""

    def forward(self, cat):
        x, skip = cat.chunk(2, dim=-1)
        assert torch.equal(x, skip), "long-skip tensor is in a different token order than its consumer"
        return x


@pytest.mark.parametrize("depth,patterns", [(25, "1234"), (7, "12"), (9, "5678"), (5, "31")])
def test_skip_tensors_meet_their_consumers_in_the_same_token_order(depth, patterns):
    """Track token ids through the network: ids go in as features, every block only re-orders them."""
    m = DiM(dim=8, depth=depth, scan_patterns=patterns, local_conv=False, adaln=False, mixer=_PassThrough)
    for b in m.blocks:
        if b.skip_linear is not None:
            b.skip_linear = _SkipChecker()
    gh = gw = 16
    seq = m.pad(torch.randn(1, gh, gw, 8))
    order, skips = "1", []
    hp, wp = gh + 3, gw + 3
    xs = torch.cat([torch.randn(1, m.num_extra, 8), seq.reshape(1, hp * wp, 8)], dim=1)
    start = xs.clone()
    for i, blk in enumerate(m.blocks):
        skip = skips.pop()[0] if blk.skip_linear is not None else None
        xs = blk(xs, None, skip, m.perm_index(order, m.schedule[i], hp, wp, xs.device))
        order = m.schedule[i]
        if i in m.push:
            skips.append((xs, order))
    assert m.schedule[-1] == patterns[0]
    assert torch.equal(m.reorder(xs, order, "1", hp, wp), start)  # back in row-major order, untouched


def test_dim_forward_is_the_identity_on_tokens_when_blocks_do_nothing():
    """With pass-through blocks and no convs, the network's grid comes out where it went in."""
    m = DiM(dim=8, depth=9, local_conv=False, adaln=False, long_skip=False, mixer=_PassThrough)
    class Stop(Exception):
        pass

    class Capture(nn.Module):
        def forward(self, x, cond):
            self.x = x
            raise Stop

    m.head = Capture()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), pytest.raises(Stop):
        m(x, torch.rand(1), None)
    with torch.no_grad():
        tokens = m.patch_embed(x).flatten(2).transpose(1, 2) + m.pos_embed[:, 2:]
    assert torch.allclose(m.head.x, tokens)


ALL_ON = component_flags()


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_turning_a_component_off_removes_exactly_its_parameters_and_changes_the_output(name):
    torch.manual_seed(0)
    d, depth = 32, 7
    full = DiM(dim=d, depth=depth, scan_backend="ref")
    off = DiM(dim=d, depth=depth, scan_backend="ref", **component_flags(drop=[name]))
    expected = {
        "padding_tokens": 3 * d + 3 * d,  # p0..p2 and the 3 separators
        "local_conv": 2 * (9 * d + d),  # two depthwise 3x3 convs with bias
        "long_skip": (depth - 1) // 2 * (2 * d * d + d),  # concat + Linear(2d, d) per decoder block
        "multi_scan": 0,  # only the order changes
    }[name]
    assert count_params(full) - count_params(off) == expected
    missing = off.load_state_dict(full.state_dict(), strict=False)
    assert not missing.missing_keys  # every remaining parameter is one of the full model's
    x, t, y = _inputs(full, 32)
    with torch.no_grad():
        assert not torch.allclose(full(x, t, y), off(x, t, y))


@pytest.mark.parametrize("drop", [c for r in range(1, 5) for c in itertools.combinations(COMPONENTS, r)])
def test_any_combination_of_components_builds_and_runs(drop):
    m = create_model("dim_tiny_2", scan_backend="torch", **component_flags(drop=drop))
    x, t, y = _inputs(m, 16, b=1)
    assert m(x, t, y).shape == x.shape
    assert variant_label(component_flags(drop=drop)).count("-") == len(drop)


def test_dim_calls_its_mixer_factory_once_per_block_with_the_block_index():
    calls = []

    def factory(dim, layer_idx):
        calls.append((dim, layer_idx))
        return _PassThrough(dim)

    m = DiM(dim=8, depth=5, mixer=factory)
    assert calls == [(8, i) for i in range(5)]
    assert all(type(b.mixer) is _PassThrough for b in m.blocks)


def test_dim_default_mixer_is_mamba_with_the_given_settings():
    m = create_model("dim_tiny_2", d_state=8, d_conv=4, expand=1, scan_backend="ref")
    for i, b in enumerate(m.blocks):
        assert type(b.mixer) is Mamba
        got = (b.mixer.d_model, b.mixer.d_state, b.mixer.d_conv, b.mixer.expand, b.mixer.scan_backend, b.mixer.layer_idx)
        assert got == (64, 8, 4, 1, "ref", i)


def test_default_mixer_and_an_explicit_mamba_factory_give_the_same_weights_for_a_seed():
    settings = dict(d_state=8, d_conv=4, expand=1, scan_backend="torch")
    torch.manual_seed(0)
    default = DiM(dim=16, depth=5, **settings).state_dict()
    torch.manual_seed(0)
    factory = DiM(dim=16, depth=5, d_conv=4, mixer=partial(Mamba, **settings)).state_dict()
    assert list(default) == list(factory)
    assert all(torch.equal(default[k], factory[k]) for k in default)


def test_mamba_baseline_is_dim_with_every_design_off():
    m = build_on_meta("mamba_s_2")
    assert m.config | {"scan_patterns": "1234"} == DiM(**component_flags(drop=list(COMPONENTS))).config | {"scan_patterns": "1234"}
    assert m.schedule == ["1"] * 25 and m.num_extra == 2 and not m.push


def test_class_conditional_model_uses_null_class_when_no_label():
    m = create_model("dim_tiny_2", num_classes=10, scan_backend="torch")
    x, t, _ = _inputs(m, 16, b=2)
    with torch.no_grad():
        assert torch.allclose(m(x, t, None), m(x, t, torch.full((2,), 10)))
        assert not torch.allclose(m(x, t, None), m(x, t, torch.zeros(2, dtype=torch.long)))


@pytest.mark.parametrize("name", ["dim_tiny_2", "uvit_tiny_2"])
def test_models_run_at_other_resolutions_by_resizing_the_pos_embed(name):
    m = create_model(name)
    x = torch.randn(1, 3, 48, 32)
    assert m(x, torch.rand(1), None).shape == x.shape


def test_resolution_not_divisible_by_patch_is_a_clear_error():
    m = create_model("dim_tiny_2")
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        m(torch.randn(1, 3, 31, 32), torch.rand(1))


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'dim_x_2'; valid choices: .*dim_s_2"):
        create_model("dim_x_2")


def test_create_model_drops_none_overrides():
    assert create_model("dim_tiny_2", depth=None).depth == 5


# -- RMSNorm under autocast ----------------------------------------------------------------------------------
def test_rmsnorm_is_nn_rmsnorm_in_float32_and_normalizes_half_inputs_in_float32():
    import warnings

    from dimstudy.models.layers import RMSNorm

    torch.manual_seed(0)
    ours, ref = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    ref.load_state_dict(ours.state_dict())  # strict: the same keys, so checkpoints interchange
    x = torch.randn(3, 5, 16)
    assert torch.equal(ours(x), ref(x))  # float32: exactly nn.RMSNorm (with the loaded, non-unit weight)
    xb = x.bfloat16()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch warns when it cannot use its fused kernel
        y = ours(xb)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, torch.nn.functional.rms_norm(xb.float(), (16,), ours.weight, 1e-5).bfloat16())
    y.float().sum().backward()
    assert ours.weight.grad is not None and ours.weight.grad.dtype == torch.float32


def test_dim_uses_the_float32_rmsnorm_in_its_blocks_and_head():
    from dimstudy.models.layers import RMSNorm

    model = create_model("dim_tiny_2", img_size=8)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert norms and all(type(m) is RMSNorm for m in norms)
    assert len(norms) == len(model.blocks) + 1
