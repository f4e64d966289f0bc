"""What a new user gets wrong, through the whole `dimstudy` CLI: each case exits 2 with one `error:` line, no
traceback, and leaves the files it was given as they were (issue 16)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from dimstudy.cli import app
from dimstudy.runtime import is_oom, one_line
from dimstudy.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
TINY = ["--model", "dim_tiny_2", "--set", "model_kwargs.dim=32", "--set", "model_kwargs.depth=3",
        "--set", "model_kwargs.d_state=4", "--dataset", "digits", "--resolution", "16", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny trained run, and next to it every kind of file that is not a usable checkpoint."""
    root = tmp_path_factory.mktemp("cli-errors")
    run = root / "run"
    train(TrainConfig(model="dim_tiny_2", model_kwargs={"dim": 32, "depth": 3, "d_state": 4}, dataset="digits",
                      resolution=16, batch_size=8, steps=2, ckpt_every=2, num_workers=0, device="cpu",
                      out_dir=str(run), ema_decay=0.5), progress=False)
    good = (run / "latest.pt").read_bytes()
    (root / "empty.pt").write_bytes(b"")
    (root / "head.pt").write_bytes(good[:100])
    (root / "notes.txt").write_text("not a checkpoint\n")
    torch.save(nn.Linear(2, 2).state_dict(), root / "state_dict.pt")
    (root / "a_file").write_text("in the way\n")
    (root / "images").mkdir()
    (root / "images" / "broken.png").write_text("not a png\n")
    (root / "one").mkdir()  # a samples folder with a single image: no covariance, no FID
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "one" / "a.png")
    damaged = root / "damaged-run"  # latest.pt cut off, no numbered checkpoint to fall back to
    damaged.mkdir()
    (damaged / "latest.pt").write_bytes(good[: len(good) // 2])
    return root


def _cases():
    no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    c = [
        # checkpoints given to sample, finetune and a resumed train
        (["sample", "--ckpt", "{r}/empty.pt"], "{r}/empty.pt is empty (0 bytes), not a checkpoint"),
        (["sample", "--ckpt", "{r}/head.pt"], "{r}/head.pt is not a readable checkpoint: a torch archive cut off at 100 bytes"),
        (["sample", "--ckpt", "{r}/notes.txt"], "{r}/notes.txt is not a readable checkpoint: a text file of 17 bytes"),
        (["sample", "--ckpt", "{r}/state_dict.pt"], "{r}/state_dict.pt is a plain state dict (2 tensors) without the "
                                                    "run's config: a public DiM file converts with `dimstudy convert"),
        (["finetune", "--from", "{r}/head.pt", "--scale", "2"], "{r}/head.pt is not a readable checkpoint"),
        (["finetune", "--from", "{r}/empty.pt", "--scale", "2", "--out", "{r}/ft"], "{r}/empty.pt is empty"),
        (["resolution-study", "--from", "{r}/state_dict.pt"], "{r}/state_dict.pt is a plain state dict"),
        (["train", *TINY, "--out", "{r}/damaged-run"], "{r}/damaged-run/latest.pt is not a readable checkpoint: a torch "
                                                      "archive cut off at"),
        # values that used to be accepted
        (["sample", "--ckpt", "{r}/run", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["sample", "--ckpt", "{r}/run", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["sample", "--ckpt", "{r}/run", "--n", "0"], "--n must be >= 1, got 0"),
        (["sample", "--ckpt", "{r}/run", "--ug-eta", "1.5"], "--ug-eta must be in [0, 1], got 1.5"),
        (["sample", "--ckpt", "{r}/run", "--out", "{r}/a_file"], "--out {r}/a_file must be a directory, but {r}/a_file is a file"),
        (["sample", "--ckpt", "{r}/run", "--device", "tpu7"], "unknown device 'tpu7'; valid choices: auto, cpu, cuda"),
        (["train", *TINY, "--ema-decay", "1.5", "--out", "{r}/new"], "--ema-decay must be in [0, 1), got 1.5"),
        (["train", *TINY, "--steps", "0", "--out", "{r}/new"], "--steps must be >= 1, got 0"),
        (["train", *TINY, "--batch-size", "0", "--out", "{r}/new"], "--batch-size must be >= 1, got 0"),
        (["train", *TINY, "--lr", "-1", "--out", "{r}/new"], "--lr must be >= 0, got -1.0"),
        (["train", *TINY, "--out", "{r}/a_file/run"], "--out {r}/a_file/run must be a directory, but {r}/a_file is a file"),
        (["train", "--preset", "nope", "--out", "{r}/new"], "unknown preset 'nope'; valid choices: "),
        (["train", *TINY, "--set", "init_from={r}/notes.txt", "--out", "{r}/new"],
         "init_from: {r}/notes.txt is not a readable checkpoint: a text file of 17 bytes; it takes a state dict (what "
         "`dimstudy finetune` writes as init.pt), a dimstudy checkpoint or run directory, or a public DiM checkpoint\n"),
        (["train", *TINY, "--set", "init_from={r}/state_dict.pt", "--out", "{r}/new"],
         "init_from {r}/state_dict.pt does not fit dim_tiny_2 at img_size 16: missing: pos_embed, "),
        (["train", *TINY, "--dataset", "folder", "--data-dir", "{r}/images", "--out", "{r}/new"],
         "1 of 1 images under {r}/images cannot be read: broken.png (UnidentifiedImageError)"),
        (["train", *TINY, "--skip-unreadable", "--out", "{r}/new"], "--skip-unreadable applies to the folder dataset, "
                                                                     "not 'digits'"),
        (["fid", "{r}/images", "--dataset", "digits"], "1 of 1 images under {r}/images cannot be read: broken.png "
                                                       "(UnidentifiedImageError); remove or replace them, or skip them "
                                                       "with --skip-unreadable"),
        (["fid", "{r}/images", "--dataset", "digits", "--skip-unreadable"], "1 of 1 images under {r}/images cannot be "
                                                                            "read: broken.png (UnidentifiedImageError); remove or replace them"),
        (["finetune", "--from", "{r}/run", "--scale", "2", "--ema-decay", "1.0"], "--ema-decay must be in [0, 1), got 1.0"),
        (["fid", "{r}", "--dataset", "digits", "--num-samples", "1"], "--num-samples must be >= 2, got 1"),
        (["fid", "{r}/one", "--dataset", "digits", "--resolution", "16", "--no-progress"],
         "samples: FID needs at least 2 images, got 1"),
        (["resolution-study", "--from", "{r}/run", "--n", "1"], "--num-samples must be >= 2, got 1"),
        # issue 14's list, where no other test has it: a negative resolution, a missing checkpoint or samples
        # folder, a checkpoint of another model
        (["sample", "--ckpt", "{r}/run", "--resolution", "-8"], "--resolution must be >= 1, got -8"),
        (["train", "--model", "dim_tiny_2", "--resolution", "-16", "--out", "{r}/new"], "--resolution must be >= 1, got -16"),
        (["sample", "--ckpt", "{r}/no-such.pt"], "no checkpoint at {r}/no-such.pt"),
        (["fid", "{r}/no-such-folder", "--dataset", "digits"], "samples: {r}/no-such-folder is neither a folder of "
                                                              "images nor an .npz file"),
        (["finetune", "--from", "{r}/run", "--scale", "2", "--model", "mamba_tiny_2", "--out", "{r}/ft"],
         "--model mamba_tiny_2 does not match the checkpoint's model dim_tiny_2 ({r}/run/latest.pt); leave --model "
         "out to fine-tune dim_tiny_2\n"),
        pytest.param(["sample", "--ckpt", "{r}/run", "--device", "cuda"], "--device cuda asked for, but ",
                     marks=no_cuda, id="sample-cuda"),
        pytest.param(["train", *TINY, "--device", "cuda", "--out", "{r}/new"], "--device cuda asked for, but ",
                     marks=no_cuda, id="train-cuda"),
    ]
    return c


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args, message", _cases())
def test_bad_input_exits_2_with_one_line_and_touches_nothing(files, args, message):
    before = _snapshot(files)
    result = CliRunner().invoke(app, [a.format(r=files) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: " + message.format(r=files)), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert _snapshot(files) == before  # no file written, none changed


def _untouchable(monkeypatch):
    """Reading data, a checkpoint or an image for FID fails the test: a bad input must stop the command first."""
    import dimstudy.metrics.fid
    import dimstudy.train
    import dimstudy.train.trainer

    def touched(*args, **kwargs):
        raise AssertionError("data or weights touched before the input was checked")

    for module in (dimstudy.train.trainer, dimstudy.metrics.fid):  # each has build_dataset as its own name
        monkeypatch.setattr(module, "build_dataset", touched)
    monkeypatch.setattr(dimstudy.train, "load_checkpoint", touched)
    monkeypatch.setattr(dimstudy.metrics.fid, "_image_set", touched)


@pytest.mark.parametrize("args, message", [
    (["train", *TINY, "--scan-patterns", "19", "--out", "{r}/new"], "unknown scan pattern '9'; valid patterns: 1=row,"),
    (["train", *TINY, "--set", "model_kwargs.depht=3", "--out", "{r}/new"],
     "unknown setting for dim_tiny_2: DiM.__init__() got an unexpected keyword argument 'depht'"),
    (["train", *TINY, "--scan-backend", "nope", "--out", "{r}/new"], "unknown scan backend 'nope'; valid choices: "),
    (["train", *TINY, "--steps", "abc", "--out", "{r}/new"], "Invalid value for '--steps': "),
    (["train", *TINY, "--no-such-flag"], "No such option: --no-such-flag"),
    (["sample", "--ckpt", "{r}/run", "--sampler", "nope"], "unknown sampler 'nope'; valid choices: euler_maruyama, "),
    (["fid", "--ckpt", "{r}/run", "--sampler", "nope", "--dataset", "digits"], "unknown sampler 'nope'; valid choices: "),
    (["fid", "{r}/one", "--dataset", "nope"], "unknown dataset 'nope'; valid choices: cifar10, digits, folder, latents, "
                                              "photos (or a folder of images, or an .npz file)"),
    # the run's kwargs carry its width and depth: dim_s_2 used to be rebuilt as this tiny network and trained
    (["finetune", "--from", "{r}/run", "--scale", "2", "--model", "dim_s_2", "--steps", "1", "--out", "{r}/new"],
     "--model dim_s_2 does not match the checkpoint's model dim_tiny_2 ({r}/run/latest.pt); leave --model out to "
     "fine-tune dim_tiny_2\n"),
])
def test_bad_input_is_reported_before_data_or_weights_are_touched(files, monkeypatch, args, message):
    _untouchable(monkeypatch)
    before = _snapshot(files)
    result = CliRunner().invoke(app, [a.format(r=files) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: " + message.format(r=files)), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert _snapshot(files) == before and not (files / "new").exists()


@pytest.mark.parametrize("command, setting, message", [
    ("ablate", "eval.sampler=nope", "unknown sampler 'nope'; valid choices: "),
    ("ablate", "train.dataset=nope", "unknown dataset 'nope'; valid choices: "),
    ("ablate", "eval.reference=nope", "unknown dataset 'nope'; valid choices: "),
    ("scan-study", "train.schedule=nope", "unknown schedule 'nope'; valid choices: "),
    ("scan-study", "eval.extractor=nope", "unknown extractor 'nope'; valid choices: "),
    ("sweep", "train.model_kwargs.scan_patterns=\"19\"", "unknown scan pattern '9'"),
])
def test_a_study_with_a_bad_name_stops_before_anything_is_enqueued_or_written(tmp_path, monkeypatch, command, setting,
                                                                              message):
    """Before this, each trial trained and then failed on the name (the sampler only at its FID)."""
    _untouchable(monkeypatch)
    result = CliRunner().invoke(app, [command, "--preset", "smoke", "--study", "bad", "--set", setting, "--results",
                                      str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--workers", "0"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: " + message) and result.stderr.count("\n") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []  # no optuna.db, no study.toml, no run directory


def test_out_of_memory_is_one_line_naming_the_size_asked_for(files, monkeypatch):
    import dimstudy.diffusion.sampling

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (GPU 0; 80 GiB total)")

    monkeypatch.setattr(dimstudy.diffusion.sampling, "draw_samples", oom)
    result = CliRunner().invoke(app, ["sample", "--ckpt", str(files / "run"), "--resolution", "64", "--batch-size", "8",
                                      "--out", str(files / "never")])
    assert result.exit_code == 2
    assert result.stderr == ("error: out of memory at --resolution 64, --batch-size 8, --n 64 (CUDA out of memory. "
                             "Tried to allocate 64.00 GiB (GPU 0; 80 GiB total)); try a smaller size or batch\n")
    assert not (files / "never").exists()


def test_help_does_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom dimstudy.cli import app\n"
            "for c in [None, *(c.name for c in app.registered_commands)]:\n"
            "    r = CliRunner().invoke(app, [c, '--help'] if c else ['--help'])\n"
            "    assert r.exit_code == 0, (c, r.output)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_choices_are_listed_and_refused_from_their_one_table_without_torch():
    """--precision, --split and --preprocess are choices built from dimstudy.checks' tables (--drop's help from
    COMPONENTS): --help lists them, and a value outside them is one error line before the command runs."""
    from dimstudy.checks import PRECISIONS, PREPROCESS, SPLITS
    from dimstudy.models.components import COMPONENTS

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom dimstudy.cli import app\n"
            "for args in (['train', '--precision', 'fp9'], ['fid', 'x', '--split', 'val'],\n"
            "             ['fid-stats', 'x', '--out', 'x.npz', '--preprocess', 'tf'], ['ablate', '--precision', 'fp9']):\n"
            "    r = CliRunner().invoke(app, args)\n"
            "    print(r.exit_code, r.stderr.count(chr(10)), r.stderr.strip())\n"
            "print(' '.join(CliRunner().invoke(app, ['train', '--help']).output.split()))\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "400"}).stdout.splitlines()
    assert out[-1] == "False"
    for line, option, choices in zip(out, ("--precision", "--split", "--preprocess", "--precision"),
                                     (PRECISIONS, SPLITS, PREPROCESS, PRECISIONS)):
        assert line.startswith(f"2 1 error: Invalid value for '{option}'") and all(repr(c) in line for c in choices), line
    assert f"<{'|'.join(PRECISIONS)}>" in out[-2] and ", ".join(COMPONENTS) in out[-2]


def test_one_line_is_the_first_non_blank_line_named_by_its_class_or_not():
    e = ValueError("\n  unknown model 'x'; valid choices: a, b  \n  details")
    assert one_line(e) == "ValueError: unknown model 'x'; valid choices: a, b"
    assert one_line(e, named=False) == "unknown model 'x'; valid choices: a, b"
    assert one_line(e, 16) == "ValueError: unkn"
    assert one_line(KeyboardInterrupt()) == "KeyboardInterrupt:" and one_line(KeyboardInterrupt(), named=False) == "KeyboardInterrupt"
    assert one_line("worker exit -9: \nKilled") == "worker exit -9:"


def test_is_oom_knows_cuda_and_cpu_allocator_failures_and_nothing_else():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom(RuntimeError("CUDA error: cudaErrorMemoryAllocation"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(ValueError("out of memory"))  # a user's value, not an allocator
    assert not is_oom(RuntimeError("shape mismatch"))
