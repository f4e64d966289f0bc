"""The multi-GPU code paths on CPU (issue #15): a trial on several ranks through torchrun with gloo, workers
pinned one per GPU, and the scaling benchmark's two layouts. The GPUs themselves are simulated where a test
only checks what each process is given."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

from dimstudy.study import runner
from dimstudy.study.config import StudyConfig
from dimstudy.study.trial import train_torchrun
from dimstudy.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


class FakePopen:
    started: list[dict] = []

    def __init__(self, cmd, env=None, **kw):
        FakePopen.started.append({"cmd": cmd, "env": env or {}})

    def wait(self):
        return 0


@pytest.mark.parametrize("gpus,workers,nproc,expected", [
    (8, 8, 1, [str(i) for i in range(8)]),           # eight workers, one GPU each
    (8, 4, 2, ["0,1", "2,3", "4,5", "6,7"]),          # four two-GPU trials side by side
    (8, 12, 1, [None] * 12),                         # more workers than GPUs: they share them
    (1, 6, 1, [None] * 6),                           # the one-GPU study: all on the same card
])
def test_workers_are_pinned_one_per_gpu(monkeypatch, gpus, workers, nproc, expected):
    monkeypatch.setattr(runner, "_gpu_count", lambda: gpus)
    monkeypatch.setattr(runner.subprocess, "Popen", FakePopen)
    FakePopen.started = []
    cfg = StudyConfig(name="pin", nproc=nproc, workers=workers)
    runner.spawn_workers(cfg, workers)
    assert [p["env"].get("CUDA_VISIBLE_DEVICES") for p in FakePopen.started] == expected
    assert len({p["env"]["DIMSTUDY_WORKER"] for p in FakePopen.started}) == workers  # every worker its own name
    assert all(p["cmd"][1:5] == ["-m", "dimstudy", "worker", "--study"] for p in FakePopen.started)


def test_trial_on_two_ranks_through_torchrun_with_gloo(tmp_path):
    """What a study trial with nproc = 2 runs: torchrun, two gloo ranks, rank 0 writes the summary."""
    cfg = TrainConfig(model="dim_tiny_2", model_kwargs={"dim": 32, "depth": 3, "d_state": 4}, dataset="digits",
                      resolution=16, batch_size=8, steps=2, warmup_steps=1, lr=1e-3, ckpt_every=2, log_every=1,
                      num_workers=0, device="cpu", sample_every=0, out_dir=str(tmp_path / "run"))
    rows = []
    summary = train_torchrun(cfg, 2, on_step=rows.append, poll_s=0.5)
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["scan_backend"] == "torch-chunked"
    assert (tmp_path / "run" / "latest.pt").is_file()


def _scaling_module():
    spec = importlib.util.spec_from_file_location("ddp_scaling", ROOT / "experiments" / "ddp_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scaling_benchmark_ddp_layout_on_cpu(tmp_path):
    rows = _scaling_module().main([
        "--gpus", "2", "--layouts", "ddp", "--device", "cpu", "--model", "dim_tiny_2", "--dataset", "digits",
        "--resolution", "16", "--batch-per-rank", "4", "--steps", "2", "--runs", str(tmp_path / "runs"),
        "--out", str(tmp_path / "out"), "--quiet"])
    (row,) = rows
    assert row["layout"] == "ddp" and row["processes"] == 2 and row["world_size"] == 2
    assert row["efficiency"] == 1.0 and row["images_per_s"] > 0  # the first row of a layout is its own base
    assert (tmp_path / "out" / "scaling.jsonl").read_text().count("\n") == 1


def test_scaling_benchmark_names_the_layouts():
    with pytest.raises(SystemExit, match="valid choices: ddp, independent"):
        _scaling_module().main(["--layouts", "ring", "--gpus", "1"])


def test_eight_gpu_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "experiments" / "eight-gpus.sh")]).returncode == 0
