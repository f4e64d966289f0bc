"""The TrainConfig presets under experiments/: each loads and dry-runs on CPU with no data; the ImageNet ones carry
the paper's settings (issue 13)."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dimstudy.cli import train as train_cli

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    app = typer.Typer()
    train_cli.register(app)
    app.command("unused")(lambda: None)  # two commands: typer then keeps `train` as a subcommand

    def run(*args):
        r = CliRunner().invoke(app, ["train", *args, "--dry-run"])
        assert r.exit_code == 0, r.output
        return json.loads(r.output)

    return run


@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENTS.glob("*.toml")))
def test_every_preset_dry_runs_without_data(dry, name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./experiments here: names resolve to the repository's, and no data exists
    out = dry("--preset", name)
    assert out["params_m"] > 0 and out["gflops"] > 0 and out["config"]["model"] == out["model_args"]["name"]


def test_imagenet256_is_the_papers_latent_setting(dry):
    out = dry("--preset", "imagenet256")
    c = out["config"]
    assert (c["model"], c["dataset"], c["resolution"], c["schedule"]) == ("dim_h_2", "latents", 256, "ddpm_scaled_linear")
    assert (c["betas"], c["eps"], c["grad_clip"], c["warmup_steps"]) == ([0.99, 0.99], 1e-15, 1.0, 5000)
    assert (c["precision"], c["class_cond"], c["p_uncond"]) == ("bf16", True, 0.1)
    assert out["input"] == "4x32x32" and out["model_args"]["kwargs"]["num_classes"] == 1000
    assert out["params_m"] == pytest.approx(862.4, abs=0.1)  # the public DiM-H/2's 862M
    assert out["sample"] == {"sampler": "dpm_solver", "steps": 50, "cfg_scale": 0.4, "num_samples": 50000}
    # DiM-L/2 from the same preset, and flags over the preset
    out = dry("--preset", "imagenet256", "--model", "dim_l_2", "--steps", "10")
    assert out["params_m"] == pytest.approx(386.0, abs=0.1) and out["config"]["steps"] == 10


def test_imagenet512_ft_is_the_papers_weak_to_strong_setting(dry):
    out = dry("--preset", "imagenet512-ft")
    c = out["config"]
    assert (c["lr"], c["weight_decay"], c["steps"], c["batch_size"]) == (1e-4, 0.0, 64000, 240)
    assert c["resolution"] == 512 and out["input"] == "4x64x64"
    assert c["model_kwargs"]["pad_layout"] == "cyclic" and c["init_from"].endswith("init.pt")
    assert (c["betas"], c["eps"], c["schedule"]) == ([0.99, 0.99], 1e-15, "ddpm_scaled_linear")


def test_unknown_preset_names_the_valid_ones(monkeypatch, tmp_path):
    app = typer.Typer()
    train_cli.register(app)
    app.command("unused")(lambda: None)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "--preset", "imagenet", "--dry-run"])
    assert r.exit_code == 2
    assert "unknown preset 'imagenet'; valid choices:" in r.output
    assert all(name in r.output for name in ("imagenet256", "imagenet512-ft", "smoke", "gpu-photos"))
    r = CliRunner().invoke(app, ["train", "--preset", "missing.toml", "--dry-run"])
    assert r.exit_code == 2 and "no preset file missing.toml" in r.output
