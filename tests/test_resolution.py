"""Higher resolutions from a low-resolution checkpoint (paper Sec. 3.3): weak-to-strong loading and fine-tune,
sampling at another size, upsample guidance through the models, samplers and CLI, the study and its report.

Eq. (4) itself is tested in tests/test_upsample_guidance.py and not repeated here:
- analytic denoiser consistency -> the guidance term vanishes: test_guidance_vanishes_for_a_consistent_denoiser
  (continuous VP-SDE; m = 2, 3; square and non-square) and test_guidance_nearly_vanishes_on_a_discrete_grid;
- tau satisfies SNR(tau) = m^2 SNR(t): test_tau_has_m_squared_snr_and_is_not_later and
  test_discrete_tau_is_the_closest_grid_snr_not_later_than_t;
- weight theta for the noisiest eta, then 0 (and no low-resolution call): test_guidance_weight_is_theta_for_the_
  noisiest_eta_then_zero, test_no_guidance_after_eta_and_no_low_res_call, test_samplers_accept_upsample_guidance;
- CFG on both predictions: test_cfg_is_applied_to_both_predictions.
Added here: the same through real networks (DiM and U-ViT, m = 2, 3, non-square), both schedule kinds x
DDIM / DPM-Solver through `draw_samples`, and the CLI.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from typer.testing import CliRunner

from dimstudy.cli import resolution as resolution_cli
from dimstudy.cli import sample as sample_cli
from dimstudy.diffusion import UpsampleGuidance, build_schedule
from dimstudy.models.registry import create_model
from dimstudy.resolution import (
    INIT_WEIGHTS,
    finetune,
    finetune_config,
    load_at_resolution,
    resolution_study,
    side_by_side,
    target_side,
    upsample_factor,
)
from dimstudy.results import append_row, read_table
from dimstudy.train import TrainConfig, load_checkpoint, read_checkpoint, save_checkpoint, train
from dimstudy.train.checkpoint import CheckpointMismatchError, adapt_state_dict

SMALL = {"dim": 32, "depth": 3, "d_state": 4}  # dim_tiny_2, narrower: ~50 ms a step at 16 px on 2 CPU cores
SMALL_UVIT = {"dim": 32, "depth": 3, "num_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def low_ckpt(tmp_path_factory):
    """A 2-step dim run on 8 px digits whose EMA and raw weights then get random values everywhere (the
    zero-initialised positional embedding included), so every copied or resized tensor is non-trivial."""
    out = tmp_path_factory.mktemp("low") / "run"
    cfg = TrainConfig(model="dim_tiny_2", model_kwargs=SMALL, dataset="digits", resolution=8, batch_size=4, steps=2,
                      warmup_steps=1, lr=1e-3, ckpt_every=2, num_workers=0, device="cpu", out_dir=str(out))
    train(cfg, progress=False)
    ckpt = read_checkpoint(out)
    g = torch.Generator().manual_seed(0)
    for weights in (ckpt["ema"]["module"], ckpt["model"]):
        for v in weights.values():
            if v.is_floating_point():
                v.copy_(0.1 * torch.randn(v.shape, generator=g))
    save_checkpoint(ckpt, out / "latest.pt")
    return out


def bilinear_reference(pos, extra, old, new):
    """The grid part resized by F.interpolate on its own, (1, extra + gh*gw, D) -> (1, extra + nh*nw, D)."""
    d = pos.shape[-1]
    grid = pos[0, extra:].T.reshape(1, d, *old)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False).reshape(d, -1).T
    return torch.cat([pos[0, :extra], grid])[None]


# ---------------------------------------------------------------- weak-to-strong loading


@pytest.mark.parametrize(
    "name, kw, extra",
    [("dim_tiny_2", SMALL, 2), ("uvit_tiny_2", SMALL_UVIT, 1), ("uvit_tiny_2", {**SMALL_UVIT, "num_classes": 10}, 2)],
)
def test_pos_embed_keeps_the_extra_rows_and_is_bilinear_on_the_grid(name, kw, extra):
    low, high = create_model(name, img_size=8, **kw), create_model(name, img_size=16, **kw)
    state = {k: torch.randn(v.shape) for k, v in low.state_dict().items()}
    adapted = adapt_state_dict(state, high)
    pos = adapted["pos_embed"]
    assert pos.shape == high.pos_embed.shape == (1, extra + 64, 32)
    assert torch.equal(pos[:, :extra], state["pos_embed"][:, :extra])  # t (and c) rows untouched
    torch.testing.assert_close(pos, bilinear_reference(state["pos_embed"], extra, (4, 4), (8, 8)))
    assert all(torch.equal(adapted[k], state[k]) for k in state if k != "pos_embed")  # nothing else changes


def test_pad_tokens_separators_and_every_other_weight_are_unchanged_after_loading(low_ckpt):
    ema = read_checkpoint(low_ckpt)["ema"]["module"]
    net, cfg, info = load_at_resolution(low_ckpt, scale=2)
    assert (net.img_size, net.grid, cfg.resolution, info["resolution"]) == (16, (8, 8), 8, 16)
    loaded = net.state_dict()
    assert torch.equal(loaded["pad_tokens"], ema["pad_tokens"]) and loaded["pad_tokens"].shape == (3, 32)
    assert torch.equal(loaded["separators"], ema["separators"])
    assert all(torch.equal(loaded[k], ema[k]) for k in ema if k != "pos_embed")
    torch.testing.assert_close(loaded["pos_embed"], bilinear_reference(ema["pos_embed"], 2, (4, 4), (8, 8)))
    raw = load_at_resolution(low_ckpt, resolution=16, ema=False)[0].state_dict()
    assert torch.equal(raw["pad_tokens"], read_checkpoint(low_ckpt)["model"]["pad_tokens"])


def test_a_model_run_above_its_size_equals_the_one_built_there_with_adapted_weights(low_ckpt):
    low, _ = load_checkpoint(low_ckpt)
    high, _, _ = load_at_resolution(low_ckpt, scale=2)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10.0, 700.0])
    with torch.no_grad():
        out = low(x, t)  # built at 8 px: interpolates its positional embedding on the fly
        assert out.shape == x.shape and torch.isfinite(out).all()
        torch.testing.assert_close(out, high(x, t))


@pytest.mark.parametrize(
    "override, keys",
    [
        ({"dim": 48}, ["pos_embed (1, 18, 32) vs (1, 66, 48)", "pad_tokens (3, 32) vs (3, 48)", "(+"]),
        ({"patch_size": 4}, ["patch_embed.proj.weight (32, 3, 2, 2) vs (32, 3, 4, 4)", "head.linear.weight (12, 32) vs (48, 32)"]),
        ({"depth": 5}, ["missing: blocks.3.ada_table", "(+22 more)", "unexpected: blocks.2.skip_linear.weight"]),
        ({"padding_tokens": False}, ["unexpected: separators, pad_tokens"]),
    ],
)
def test_a_mismatched_checkpoint_is_refused_naming_the_keys(low_ckpt, override, keys):
    with pytest.raises(CheckpointMismatchError) as e:
        load_at_resolution(low_ckpt, scale=2, model_kwargs=override)
    msg = str(e.value)
    assert msg.startswith(f"{low_ckpt / 'latest.pt'} does not fit dim_tiny_2 at img_size 16: ") and "\n" not in msg
    for k in keys:
        assert k in msg


def test_targets_and_scales_are_checked():
    assert target_side(16, scale=2) == target_side(16, resolution=32) == target_side(16, 32, 2) == 32
    with pytest.raises(ValueError, match="disagree"):
        target_side(16, 48, 2)
    with pytest.raises(ValueError, match="give a target"):
        target_side(16)
    assert (upsample_factor(16, 32), upsample_factor(16, 48)) == (2, 3)
    for side in (24, 16, 8):
        with pytest.raises(ValueError, match="whole scale >= 2"):
            upsample_factor(16, side)


# ---------------------------------------------------------------- fine-tune


def test_finetune_starts_from_the_adapted_weights_with_ema_reset_to_them(low_ckpt, tmp_path, monkeypatch):
    import dimstudy.train.trainer as trainer

    class FrozenEMA(trainer.EMA):  # an EMA that never moves (decay 1, which options refuse) stays where it started:
        def update(self, model, t=0):  # it must equal the loaded weights, not a fresh init
            pass

    monkeypatch.setattr(trainer, "EMA", FrozenEMA)
    out = tmp_path / "ft"
    summary = finetune(low_ckpt, scale=2, out_dir=out, steps=2, batch_size=4, warmup_steps=0, ema_decay=0.5,
                       num_workers=0, device="cpu", progress=False)
    assert summary["steps"] == 2 and summary["finetuned_from"] == str(low_ckpt / "latest.pt")
    adapted = load_at_resolution(low_ckpt, scale=2)[0].state_dict()
    init = torch.load(out / INIT_WEIGHTS, weights_only=True)
    ckpt = read_checkpoint(out)
    assert all(torch.equal(init[k], adapted[k]) for k in adapted)
    assert all(torch.equal(ckpt["ema"]["module"][k], adapted[k]) for k in adapted)
    assert not torch.equal(ckpt["model"]["pad_tokens"], adapted["pad_tokens"])  # trained on from there
    cfg = ckpt["config"]
    assert (cfg["resolution"], cfg["lr"], cfg["weight_decay"], cfg["steps"], cfg["batch_size"]) == (16, 1e-4, 0.0, 2, 4)
    assert ckpt["model_args"]["kwargs"]["img_size"] == 16
    assert json.loads((out / "finetune.json").read_text())["source_resolution"] == 8


def test_finetune_config_is_the_source_run_with_the_paper_fine_tune_settings():
    src = TrainConfig(model="dim_tiny_2", model_kwargs={"dim": 32}, dataset="digits", resolution=16, lr=1e-3,
                      weight_decay=0.03, ema_decay=0.99, results_dir="results")
    cfg = finetune_config(src, 32, "runs/x", model_kwargs={"depth": 3}, batch_size=8)
    assert (cfg.resolution, cfg.lr, cfg.weight_decay, cfg.steps) == (32, 1e-4, 0.0, 64_000)
    assert (cfg.ema_decay, cfg.dataset, cfg.model_kwargs, cfg.batch_size) == (0.99, "digits", {"dim": 32, "depth": 3}, 8)
    assert (cfg.init_from, cfg.results_dir) == (str(Path("runs/x") / INIT_WEIGHTS), None)


# ---------------------------------------------------------------- sampling above the trained size


@pytest.mark.parametrize("name, kw", [("dim_tiny_2", SMALL), ("uvit_tiny_2", SMALL_UVIT)])
@pytest.mark.parametrize("m, hw", [(2, (16, 24)), (3, (24, 24)), (3, (24, 12))])
def test_upsample_guidance_through_a_network_keeps_shapes(name, kw, m, hw):
    net = create_model(name, img_size=8, **kw).eval()
    seen = []
    net.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    guide = UpsampleGuidance(net, build_schedule("vpsde"), m=m)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = guide(x, torch.full((2,), 0.9))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert seen == [hw, (hw[0] // m, hw[1] // m)]


@pytest.mark.parametrize("schedule", ["vpsde", "ddpm_linear"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_draw_samples_at_twice_the_size_with_and_without_guidance(schedule, sampler):
    net = create_model("dim_tiny_2", img_size=8, **SMALL).eval()
    sizes = []
    net.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[-1]))
    from dimstudy.diffusion.sampling import draw_samples

    s = build_schedule(schedule)
    kw = dict(sampler=sampler, steps=10, seed=3, img_size=16)
    guided = draw_samples(net, s, 3, upsample=dict(m=2, theta=1.0, eta=0.3), **kw)
    assert guided.shape == (3, 3, 16, 16) and guided.abs().max() <= 1
    assert sizes.count(16) == 10 and 1 <= sizes.count(8) <= 4  # the noisiest ~30% of the steps are guided
    sizes.clear()
    plain = draw_samples(net, s, 3, **kw)
    assert plain.shape == (3, 3, 16, 16) and set(sizes) == {16}
    assert not torch.equal(guided, plain)


def test_draw_samples_hands_cfg_to_the_guidance_for_both_predictions():
    net = create_model("dim_tiny_2", img_size=8, num_classes=10, **SMALL).eval()
    calls = []
    net.register_forward_pre_hook(lambda mod, args: calls.append((args[0].shape[0], args[0].shape[-1])))
    from dimstudy.diffusion.sampling import draw_samples

    x = draw_samples(net, build_schedule("vpsde"), 2, steps=4, cfg_scale=0.5, labels=torch.tensor([1, 2]),
                     img_size=16, upsample=dict(m=2, theta=1.0, eta=0.3))
    assert x.shape == (2, 3, 16, 16)
    assert (4, 16) in calls and (4, 8) in calls  # cond + uncond batched, at both sizes


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    sample_cli.register(app)
    resolution_cli.register(app)
    return CliRunner(), app


@pytest.mark.parametrize("model", [[], ["--model", "dim_tiny_2"]], ids=["default", "its-own-model"])
def test_cli_finetune_runs_a_few_steps_from_a_tiny_checkpoint(cli, low_ckpt, tmp_path, model):
    runner, app = cli
    out = tmp_path / "ft"
    result = runner.invoke(app, ["finetune", "--from", str(low_ckpt), "--resolution", "16", "--steps", "2",
                                 "--batch-size", "4", "--warmup-steps", "0", "--num-workers", "0", "--device", "cpu",
                                 "--out", str(out), "--no-progress", "--set", "grad_clip=1.0", *model])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 2
    cfg = read_checkpoint(out)["config"]
    assert (cfg["resolution"], cfg["lr"], cfg["weight_decay"], cfg["grad_clip"]) == (16, 1e-4, 0.0, 1.0)
    model, _ = load_checkpoint(out)
    assert model.img_size == 16


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model_kwargs.dim=48"], "does not fit dim_tiny_2 at img_size 16: shape (checkpoint vs model): pos_embed"),
        (["--set", "model_kwargs.patch_size=4"], "patch_embed.proj.weight (32, 3, 2, 2) vs (32, 3, 4, 4)"),
    ],
)
def test_cli_finetune_mismatch_is_one_line(cli, low_ckpt, tmp_path, args, message):
    runner, app = cli
    result = runner.invoke(app, ["finetune", "--from", str(low_ckpt), "--scale", "2", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("guided", [True, False])
def test_cli_sample_scale_2_writes_images_of_twice_the_size(cli, low_ckpt, tmp_path, guided):
    runner, app = cli
    ug = ["--upsample-guidance", "--ug-theta", "0.5", "--ug-eta", "0.4"] if guided else []
    result = runner.invoke(app, ["sample", "--ckpt", str(low_ckpt), "--n", "2", "--steps", "3", "--scale", "2",
                                 "--sampler", "ddim", *ug, "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "images" / "000001.png").size == (16, 16)
    meta = json.loads((tmp_path / "sample.json").read_text())
    assert (meta["trained_size"], meta["size"]) == (8, 16)
    assert meta["upsample_guidance"] == ({"m": 2, "theta": 0.5, "eta": 0.4} if guided else None)


def test_cli_sample_refuses_a_fractional_guidance_scale(cli, low_ckpt, tmp_path):
    runner, app = cli
    result = runner.invoke(app, ["sample", "--ckpt", str(low_ckpt), "--resolution", "12", "--upsample-guidance",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == "error: upsample guidance needs a whole scale >= 2: 12 is 1.5 x the model's 8\n"


# ---------------------------------------------------------------- the study and its report


def fake_metrics(samples, reference, **kw):
    """compute_metrics without Inception (a few images/s on CPU): a number that depends on the images."""
    assert (reference, kw["resolution"]) == ("digits", 16)
    return {"fid": float(samples.float().std() * 100), "kid_mean": 0.01, "kid_std": 0.001, "num_samples": len(samples),
            "num_reference": kw["num_reference"], "reference": "digits-all-16px", "feature_extractor": "fake",
            "preprocess": kw.get("preprocess", "pytorch-fid")}


def test_resolution_study_writes_three_rows_a_side_by_side_grid_and_a_report(low_ckpt, tmp_path, monkeypatch):
    import dimstudy.metrics

    monkeypatch.setattr(dimstudy.metrics, "compute_metrics", fake_metrics)
    root, out = tmp_path / "results", tmp_path / "study"
    rows = resolution_study(low_ckpt, 2, n=4, steps=3, finetune_steps=2, finetune_overrides={"batch_size": 4},
                            num_reference=8, out_dir=out, results_dir=root, device="cpu")
    assert [r["method"] for r in rows] == ["direct", "upsample_guidance", "finetune"]
    df = read_table("resolution", root)
    assert len(df) == 3 and df["study"].nunique() == 1
    assert (df["train_resolution"] == 8).all() and (df["resolution"] == 16).all() and (df["n_samples"] == 4).all()
    ug = df[df["method"] == "upsample_guidance"].iloc[0]
    assert (ug["theta"], ug["eta"], ug["m"]) == (1.0, 0.3, 2)
    assert df[df["method"] == "finetune"].iloc[0]["finetune_steps"] == 2
    for col in ("sampler", "steps", "seed", "fid", "kid_mean", "git_sha", "torch", "device", "checkpoint", "finetune_lr"):
        assert col in df
    assert (df["preprocess"] == "pytorch-fid").all()  # the FID resize every row records
    assert df["scan_backend"].tolist() == ["torch-chunked"] * 3 and df["attn_backend"].isna().all()  # the CPU scan ran
    grid = Image.open(root / rows[0]["grid"])
    assert grid.size == Image.open(out / "side_by_side.png").size and grid.size[0] > 3 * 256
    for method in ("direct", "upsample_guidance", "finetune"):
        assert (out / f"{method}.png").exists()

    from dimstudy.report.resolution import write_section

    report = tmp_path / "report"
    md = write_section(root, report)
    assert md.startswith("## Resolution") and "8 → 16" in md and "upsample guidance, Eq. (4)" in md
    assert md.count("| dim_tiny_2 |") == 3
    png = f"resolution_{rows[0]['study']}.png"
    assert f"]({png})" in md and (report / png).exists()
    assert (report / "resolution.md").read_text() == md
    assert len((report / "resolution.csv").read_text().splitlines()) == 4


def test_write_section_is_none_without_rows_and_notes_a_missing_grid(tmp_path):
    from dimstudy.report.resolution import write_section

    assert write_section(tmp_path, tmp_path / "out") is None
    row = {"study": "s1", "method": "direct", "model": "dim_tiny_2", "checkpoint": "c", "train_resolution": 16,
           "resolution": 32, "sampler": "dpm_solver", "steps": 20, "theta": None, "eta": None, "finetune_steps": 0,
           "n_samples": 64, "num_reference": 256, "fid": 123.4, "kid_mean": 0.05, "grid": "resolution/s1.png",
           "device": "cuda", "gpu": "NVIDIA H100", "timestamp": "2024-01-01T00:00:00+00:00"}
    append_row("resolution", row, tmp_path)
    md = write_section(tmp_path, tmp_path / "out")
    assert "| s1 | dim_tiny_2 |  | 16 → 32 | direct (no guidance) | dpm_solver × 20 |  |  | 0 | 64 | 256 | 123.40 | 50.00 | NVIDIA H100 |" in md
    assert "_s1: no side-by-side grid found (resolution/s1.png)._" in md


def test_side_by_side_has_one_labelled_panel_per_method(tmp_path):
    panels = {"a": torch.zeros(16, 3, 8, 8), "b": torch.ones(4, 1, 8, 8), "c": -torch.ones(20, 3, 8, 8)}
    img = Image.open(side_by_side(panels, tmp_path / "x.png"))
    # 4x4 grids of 8 px + 2 px padding = 42 px, upscaled x7 to >= 256; 2x2 -> 22 px x12 = 264; gaps of 8
    assert img.size == (294 + 264 + 294 + 16, 18 + 294)
