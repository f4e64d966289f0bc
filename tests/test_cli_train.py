"""`dimstudy train` and `dimstudy sample` through typer's CliRunner."""

import json

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from dimstudy.cli import fid as fid_cli
from dimstudy.cli import sample as sample_cli
from dimstudy.cli import train as train_cli
from dimstudy.presets import TRAIN_PRESETS
from dimstudy.train import load_config, read_checkpoint
from dimstudy.train.config import parse_set

SMOKE = str(TRAIN_PRESETS / "smoke.toml")
FAST = ["--resolution", "8", "--batch-size", "8", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

@pytest.fixture(scope="module")
def runner_app():
    app = typer.Typer()
    train_cli.register(app)
    sample_cli.register(app)
    fid_cli.register(app)
    return CliRunner(), app


@pytest.fixture(scope="module")
def smoke_run(runner_app, tmp_path_factory):
    runner, app = runner_app
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = runner.invoke(app, ["train", "--preset", SMOKE, "--steps", "3", "--out", str(out), *FAST,
                                 "--drop", "long_skip", "--set", "weight_decay=0"])
    assert result.exit_code == 0, result.output
    return out, result


def test_train_from_the_smoke_preset_writes_latest(smoke_run):
    out, result = smoke_run
    summary = json.loads(result.stdout)
    assert summary["steps"] == 3 and (out / "latest.pt").exists()
    cfg, preset = read_checkpoint(out)["config"], load_config(SMOKE)
    assert (cfg["steps"], cfg["resolution"], cfg["batch_size"]) == (3, 8, 8)  # flags beat the preset
    assert cfg["warmup_steps"] == preset.warmup_steps and cfg["lr"] == preset.lr  # no flag: the preset's value
    assert cfg["weight_decay"] == 0.0  # --set
    assert cfg["ema_warmup"] is True and preset.ema_warmup  # the preset's: 150 steps would leave 22% init in the EMA
    assert cfg["model_kwargs"] == {"scan_backend": "auto", "multi_scan": True, "long_skip": False,
                                   "padding_tokens": True, "local_conv": True}


def test_train_without_a_dataset_trains_on_the_offline_digits(runner_app, tmp_path, monkeypatch):
    """No preset and no --dataset: the bundled digits, so a first run needs no download (CIFAR-10 would fail here)."""
    runner, app = runner_app
    monkeypatch.setenv("DIMSTUDY_OFFLINE", "1")
    monkeypatch.setenv("DIMSTUDY_CACHE", str(tmp_path / "cache"))  # nowhere a CIFAR-10 copy could be found
    result = runner.invoke(app, ["train", "--model", "dim_tiny_2", "--steps", "1", "--out", str(tmp_path / "r"), *FAST,
                                 "--ckpt-every", "1", "--sample-every", "0", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(tmp_path / "r")["config"]["dataset"] == "digits"


def test_ema_warmup_flag_beats_the_preset(runner_app, tmp_path):
    runner, app = runner_app
    result = runner.invoke(app, ["train", "--preset", SMOKE, "--steps", "1", "--out", str(tmp_path / "r"), *FAST,
                                 "--no-ema-warmup", "--ema-decay", "0.5"])
    assert result.exit_code == 0, result.output
    cfg = read_checkpoint(tmp_path / "r")["config"]
    assert cfg["ema_warmup"] is False and cfg["ema_decay"] == 0.5


def test_train_preset_takes_a_study_preset_name_as_ablate_does(runner_app, tmp_path):
    runner, app = runner_app
    result = runner.invoke(app, ["train", "--preset", "smoke", "--steps", "1", "--out", str(tmp_path / "r"), *FAST])
    assert result.exit_code == 0, result.output
    cfg = read_checkpoint(tmp_path / "r")["config"]
    assert cfg["model_kwargs"]["d_state"] == 4 and cfg["lr"] == 2e-3  # the smoke study's [train] table
    assert train_cli.preset_table("smoke")["out_dir"] == "runs/smoke"


def test_sample_writes_pngs_and_a_grid(runner_app, smoke_run, tmp_path):
    runner, app = runner_app
    out, _ = smoke_run
    result = runner.invoke(app, ["sample", "--ckpt", str(out), "--n", "4", "--steps", "3", "--out", str(tmp_path),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"00000{i}.png" for i in range(4)]
    assert Image.open(tmp_path / "images" / "000000.png").size == (8, 8)
    assert (tmp_path / "grid.png").exists()
    assert json.loads((tmp_path / "sample.json").read_text())["sampler"] == "dpm_solver"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "dim_nope"], "unknown model 'dim_nope'; valid choices: "),
        (["train", "--drop", "long_skp"], "unknown component 'long_skp'; valid choices: multi_scan, long_skip"),
        (["train", "--set", "lrr=1"], "unknown config key 'lrr'; valid keys: model, "),
        (["train", "--set", "precision=fp8"], "unknown precision 'fp8'; valid choices: auto, bf16, fp16, fp32"),
        (["sample", "--ckpt", "no/such/ckpt.pt"], "no checkpoint at no/such/ckpt.pt"),
    ],
)
def test_bad_input_is_one_line_naming_valid_choices(runner_app, tmp_path, args, message):
    runner, app = runner_app
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "x")] if args[0] == "train" else args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1
    if "--model" in args:
        assert "dim_tiny_2" in result.stderr


def test_parse_set_reads_toml_values_and_dotted_keys():
    got = parse_set(["lr=1e-4", "hflip=false", "dataset=digits", "model_kwargs.scan_patterns=\"12\""])
    assert got == {"lr": 1e-4, "hflip": False, "dataset": "digits", "model_kwargs": {"scan_patterns": "12"}}
    with pytest.raises(ValueError, match="--set expects KEY=VALUE"):
        parse_set(["lr"])


def test_fid_samples_a_checkpoint_and_scores_it(runner_app, smoke_run):
    """`fid --ckpt` draws the samples from the run itself (EMA weights) and scores them like a folder."""
    runner, app = runner_app
    out, _ = smoke_run
    result = runner.invoke(app, ["fid", "--ckpt", str(out), "--dataset", "digits", "--resolution", "8", "-n", "6",
                                 "--num-reference", "20", "--steps", "2", "--no-sfid", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "6 samples" in result.output
    result = runner.invoke(app, ["fid", str(out), "--ckpt", str(out), "--dataset", "digits"])
    assert result.exit_code == 2 and "give either SAMPLES (a folder or an .npz) or --ckpt" in result.output


def test_train_skips_unreadable_folder_images_only_when_asked(runner_app, tmp_path):
    """A folder with one broken file: without --skip-unreadable one error names it; with it, training runs on the
    readable images and the warning names what was left out."""
    import numpy as np

    runner, app = runner_app
    data = tmp_path / "images"
    data.mkdir()
    for i in range(9):  # one batch of 8 at least
        Image.fromarray(np.full((8, 8, 3), 25 * i, dtype=np.uint8)).save(data / f"{i}.png")
    (data / "broken.png").write_text("not a png")
    args = ["train", "--preset", SMOKE, "--steps", "2", "--dataset", "folder", "--data-dir", str(data), *FAST]
    stopped = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert stopped.exit_code == 2 and "broken.png (UnidentifiedImageError)" in stopped.output
    with pytest.warns(UserWarning, match=r"1 of 10 images under .* cannot be read: broken.png .*skipped"):
        done = runner.invoke(app, [*args, "--skip-unreadable", "--out", str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    assert read_checkpoint(tmp_path / "b" / "latest.pt")["config"]["skip_unreadable"] is True
