"""The TrainConfig presets in dimstudy/presets/: each loads and dry-runs on CPU with no data; the ImageNet ones carry
the paper's settings (issue 13)."""

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dimstudy.cli import train as train_cli
from dimstudy.presets import STUDY_PRESETS, TRAIN_PRESETS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PACKAGE = TRAIN_PRESETS.parent



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


@pytest.mark.parametrize("name", sorted(p.stem for p in TRAIN_PRESETS.glob("*.toml")))
def test_every_preset_dry_runs_without_data(dry, name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./experiments here: names resolve to the package's, and no data exists
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


def test_the_dataset_is_the_flag_then_the_presets_then_the_offline_digits(dry, tmp_path):
    assert dry()["config"]["dataset"] == "digits"
    assert dry("--preset", "imagenet256")["config"]["dataset"] == "latents"
    assert dry("--preset", "paper")["config"]["dataset"] == "cifar10"  # a study preset's [train] table
    assert dry("--preset", "imagenet256", "--dataset", "photos")["config"]["dataset"] == "photos"
    assert dry("--set", "dataset=cifar10")["config"]["dataset"] == "cifar10"
    (tmp_path / "nodata.toml").write_text('model = "dim_tiny_2"\n')
    assert dry("--preset", str(tmp_path / "nodata.toml"))["config"]["dataset"] == "digits"


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


def test_presets_load_by_name_from_a_package_without_its_repository(tmp_path):
    """A copy of the package alone (what a wheel installs) finds its study and train presets by name."""
    shutil.copytree(PACKAGE, tmp_path / "site" / "dimstudy", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("from dimstudy.cli.train import preset_table\n"
            "from dimstudy.study.config import load_study_config, resolve_preset\n"
            "print(resolve_preset('gpu-photos').parent.parent.parent)\n"
            "print(load_study_config('smoke').train.model, preset_table('imagenet256')['model'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""}).stdout.splitlines()
    assert Path(out[0]) == tmp_path / "site" / "dimstudy"
    assert out[1] == "dim_tiny_2 dim_h_2"


def test_every_shipped_preset_is_package_data():
    """pyproject.toml's package data names every preset file, so a wheel carries them all."""
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["dimstudy"]
    files = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.joinpath("presets").rglob("*.toml"))
    assert {"presets/smoke.toml", "presets/imagenet256.toml", "presets/studies/smoke.toml",
            "presets/studies/gpu-photos.toml"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)] == []
    assert STUDY_PRESETS == PACKAGE / "presets" / "studies"
