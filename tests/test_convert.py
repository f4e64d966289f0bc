"""The public-DiM converter, on synthetic state dicts with the documented key names and shapes."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dimstudy.cli import app
from dimstudy.models.registry import create_model
from dimstudy.train import load_checkpoint
from dimstudy.train.convert import (
    ConversionError,
    dimstudy_to_public,
    infer_preset,
    public_checkpoint,
    public_to_dimstudy,
)

runner = CliRunner()


def public_state_dict(d: int, depth: int, chans: int, grid: int, k: int, patch: int = 2, seed: int = 0) -> dict:
    """A random state dict with the public model's keys and shapes (project notes, dim-checkpoint-format.md, 5)."""
    g = torch.Generator().manual_seed(seed)
    di, rank, n = 2 * d, math.ceil(d / 16), 16
    shapes = {"additional_embed": (1, 2 + grid * grid, d), "pos_embed.proj.weight": (d, chans, patch, patch),
              "pos_embed.proj.bias": (d,)}
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        shapes |= {b + "scale_shift_table": (3, d), b + "norm1.norm.weight": (d,), b + "attn1.A_log": (di, n),
                   b + "attn1.D": (di,), b + "attn1.in_proj.weight": (2 * di, d), b + "attn1.conv1d.weight": (di, 1, 3),
                   b + "attn1.conv1d.bias": (di,), b + "attn1.x_proj.weight": (rank + 2 * n, di),
                   b + "attn1.dt_proj.weight": (di, rank), b + "attn1.dt_proj.bias": (di,),
                   b + "attn1.out_proj.weight": (d, di)}
        if i >= (depth + 1) // 2:  # the decoder half fuses a long skip
            if d <= 512:
                shapes |= {b + "skip_linear.weight": (d, 2 * d), b + "skip_linear.bias": (d,)}
            else:  # two Linear(d, d), summed
                shapes |= {b + f"skip_linear.{j}.{w}": ((d, d) if w == "weight" else (d,)) for j in "01" for w in ("weight", "bias")}
    shapes |= {"norm_out.norm.weight": (d,),
               "adaln_single.emb.timestep_embedder.linear_1.weight": (d, 256),
               "adaln_single.emb.timestep_embedder.linear_1.bias": (d,),
               "adaln_single.emb.timestep_embedder.linear_2.weight": (d, d),
               "adaln_single.emb.timestep_embedder.linear_2.bias": (d,),
               "adaln_single.emb.class_embedder.embedding_table.weight": (k + 1, d),
               "adaln_single.linear.weight": (3 * d, d), "adaln_single.linear.bias": (3 * d,),
               "label_emb.weight": (k + 1, d), "a4m_adapter.pad_token_dec_split": (1, 3, d),
               "a4m_adapter.pad_token": (1, d, 3), "a4m_adapter.first_smoother.weight": (d, 1, 3, 3),
               "a4m_adapter.first_smoother.bias": (d,), "a4m_adapter.last_smoother.weight": (d, 1, 3, 3),
               "a4m_adapter.last_smoother.bias": (d,), "proj_out_2.weight": (patch * patch * chans, d),
               "proj_out_2.bias": (patch * patch * chans,), "proj_out_1.weight": (2 * d, d), "proj_out_1.bias": (2 * d,)}
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def test_the_synthetic_dict_has_the_documented_key_count_of_dim_s_2():
    with torch.device("meta"):
        assert len(public_state_dict(512, 25, 3, 16, 10)) == 321
    assert infer_preset(public_state_dict(64, 5, 3, 4, 10)) == "dim_tiny_2"


def test_cli_round_trip_of_a_cifar_style_checkpoint(tmp_path):
    pub = public_state_dict(64, 5, 3, 16, 10)  # the public CIFAR layout: 11-row tables, fused skips
    torch.save(pub, tmp_path / "nnet_ema.pth")
    r = runner.invoke(app, ["convert", str(tmp_path / "nnet_ema.pth"), "--from", "dim-public", "--model", "dim_tiny_2",
                            "--out", str(tmp_path / "ours.pt")])
    assert r.exit_code == 0, r.output
    model, cfg = load_checkpoint(tmp_path / "ours.pt")
    assert (model.img_size, model.num_classes, model.pad_layout, cfg.schedule) == (32, 0, "lateral", "vpsde")
    sd = model.state_dict()
    assert torch.equal(sd["pad_tokens"][1], pub["a4m_adapter.pad_token"][0, :, 1])  # row j is p_j
    assert torch.equal(sd["label_emb.weight"], pub["label_emb.weight"][10:])  # only the null row is used
    assert torch.equal(sd["pos_embed"], pub["additional_embed"])
    assert torch.equal(sd["patch_embed.proj.weight"], pub["pos_embed.proj.weight"])
    r = runner.invoke(app, ["convert", str(tmp_path / "ours.pt"), "--from", "dimstudy", "--out", str(tmp_path / "back.pth")])
    assert r.exit_code == 0, r.output
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert list(back) == list(pub) or set(back) == set(pub)
    for k, v in pub.items():
        if k in ("label_emb.weight", "adaln_single.emb.class_embedder.embedding_table.weight"):
            assert same_bytes(back[k][10:], v[10:]) and not back[k][:10].any()  # the 10 unused rows come back zero
        else:
            assert same_bytes(back[k], v), k


@pytest.mark.parametrize("d,depth,chans,grid,k", [(64, 5, 4, 4, 7), (576, 3, 4, 4, 5)], ids=["d64", "d576-split-skip"])
def test_convert_load_export_gives_back_the_same_bytes(d, depth, chans, grid, k):
    pub = public_state_dict(d, depth, chans, grid, k)
    model = create_model("dim_tiny_2", dim=d, depth=depth, in_chans=chans, img_size=2 * grid, num_classes=k)
    ours = public_to_dimstudy(pub, model)
    model.load_state_dict(ours)  # strict
    back = dimstudy_to_public(model.state_dict(), model)
    assert set(back) == set(pub)
    split = {key for key in pub if ".skip_linear.0.bias" in key or ".skip_linear.1.bias" in key}
    assert bool(split) == (d > 512)
    for key, v in pub.items():
        if key not in split:
            assert same_bytes(back[key], v), key
    for key in {s.replace(".1.bias", ".0.bias") for s in split}:  # the two biases come back as (b0 + b1, 0)
        assert same_bytes(back[key], pub[key] + pub[key.replace(".0.bias", ".1.bias")])
        assert not back[key.replace(".0.bias", ".1.bias")].any()
    again = public_to_dimstudy(back, model)  # ... and our state dict comes back byte for byte
    assert all(same_bytes(again[key], v) for key, v in ours.items())


def test_the_fused_skip_is_the_sum_of_the_two_public_linears():
    pub = public_state_dict(576, 3, 4, 4, 5)
    model = create_model("dim_tiny_2", dim=576, depth=3, in_chans=4, img_size=8, num_classes=5)
    model.load_state_dict(public_to_dimstudy(pub, model))
    x, s = torch.randn(2, 7, 576), torch.randn(2, 7, 576)
    lin = lambda j, v: v @ pub[f"transformer_blocks.2.skip_linear.{j}.weight"].T + pub[f"transformer_blocks.2.skip_linear.{j}.bias"]  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[2].skip_linear(torch.cat([x, s], -1)), lin(0, x) + lin(1, s))


def test_unknown_missing_and_misshapen_keys_stop_with_one_line(tmp_path):
    pub = public_state_dict(64, 5, 3, 16, 10)
    del pub["transformer_blocks.3.attn1.D"], pub["transformer_blocks.4.attn1.D"]
    pub["ema_decay_buffer"] = torch.zeros(1)
    pub["proj_out_2.bias"] = torch.zeros(5)
    torch.save(pub, tmp_path / "nnet.pth")
    r = runner.invoke(app, ["convert", str(tmp_path / "nnet.pth"), "--from", "dim-public", "--model", "dim_tiny_2",
                            "--out", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "unknown keys: ema_decay_buffer; missing keys: blocks.{3..4}.mixer.D;" in r.output
    assert "head.linear.bias (5,) vs (12,)" in r.output and not (tmp_path / "x.pt").exists()
    with pytest.raises(ConversionError, match="does not map onto dim_l_2"):
        public_checkpoint(tmp_path / "nnet.pth", "dim_l_2")
    r = runner.invoke(app, ["convert", str(tmp_path / "nnet.pth"), "--from", "dit", "--out", "x.pt"])
    assert r.exit_code == 2 and "unknown format 'dit'; valid choices: dim-public, dimstudy" in r.output


def test_the_512_finetune_layout_is_cyclic_and_the_old_conditioning_does_not_export(tmp_path):
    with torch.device("meta"):
        pub = public_state_dict(1536, 49, 4, 32, 1000)
    pub_small = public_state_dict(64, 5, 4, 32, 3)  # a 64x64 latent, as the public 512 px fine-tune
    torch.save(pub_small, tmp_path / "nnet_ema.pth")
    ckpt = public_checkpoint(tmp_path / "nnet_ema.pth", "dim_tiny_2", num_classes=3)
    assert ckpt["model_args"]["kwargs"]["pad_layout"] == "cyclic" and ckpt["config"]["schedule"] == "ddpm_scaled_linear"
    assert pub["additional_embed"].shape == (1, 1026, 1536)  # the documented H-512 table: 2 + 32 x 32 rows
    old = create_model("dim_tiny_2", head_cond="adaln", ada_class_table=False)
    with pytest.raises(ConversionError, match="head_cond='adaln', ada_class_table=False"):
        dimstudy_to_public(old.state_dict(), old)


def test_sample_takes_a_public_checkpoint_directly(tmp_path):
    step = tmp_path / "500000.ckpt"
    step.mkdir()
    torch.save(public_state_dict(64, 5, 3, 16, 10), step / "nnet_ema.pth")
    r = runner.invoke(app, ["sample", "--ckpt", str(step), "--n", "2", "--steps", "2", "--batch-size", "2",
                            "--no-progress", "--device", "cpu", "--npz", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "s" / "images").glob("*.png"))
    assert len(pngs) == 2
    arr = np.load(tmp_path / "s" / "samples_2x32x32x3.npz")["arr_0"]  # the ADM batch: uint8, NHWC
    assert arr.dtype == np.uint8 and arr.shape == (2, 32, 32, 3)
    assert np.array_equal(arr[1], np.asarray(Image.open(pngs[1]).convert("RGB")))


class _FakeVAE(torch.nn.Module):
    """Stands in for the SD VAE: 'decodes' a latent by upsampling its first 3 channels 8x."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def decode(self, z):
        return SimpleNamespace(sample=torch.nn.functional.interpolate(z[:, :3] * 0.18215, scale_factor=8))


def test_sample_decodes_latents_unclipped(tmp_path, monkeypatch):
    import dimstudy.data.latents as latents

    torch.save(public_state_dict(64, 5, 4, 4, 7), tmp_path / "nnet_ema.pth")
    monkeypatch.setattr(latents, "load_vae", lambda vae, device: _FakeVAE())
    seen = []
    monkeypatch.setattr(latents, "decode_latents", lambda z, vae: seen.append(z) or vae.decode(z).sample.clamp(-1, 1))
    r = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "nnet_ema.pth"), "--n", "2", "--steps", "2",
                            "--no-progress", "--device", "cpu", "--npz", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert seen[0].shape == (2, 4, 8, 8) and seen[0].abs().max() > 1  # latents reach the VAE unclipped
    assert np.load(tmp_path / "s" / "samples_2x64x64x3.npz")["arr_0"].shape == (2, 64, 64, 3)
