"""Trainer: exact resume, atomic checkpoints, EMA, warm-up, accumulation, flips, data order, DDP."""

import json
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from dimstudy.diffusion import build_schedule
from dimstudy.diffusion.sampling import draw_samples
from dimstudy.train import (
    EMA,
    TrainConfig,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    train,
)
from dimstudy.train.checkpoint import CHECKPOINT_KEYS, build_model
from dimstudy.train.distributed import DistInfo, StepBatchSampler
from dimstudy.train.files import CheckpointError, load_file
from dimstudy.train.trainer import accumulate_grads, params_digest, random_hflip, warmup_factor

# Narrower and shallower than the tiny presets: the pure-PyTorch selective scan costs b*l*d_inner*d_state per
# block, about 2 s a step for dim_tiny_2 at batch 32 on a 2-core CPU; this is ~50 ms at 16 px, batch 8.
SMALLER = {"dim_tiny_2": {"dim": 32, "depth": 3, "d_state": 4}, "uvit_tiny_2": {"dim": 32, "depth": 3, "num_heads": 2}}


def tiny_config(out, model="dim_tiny_2", **kw) -> TrainConfig:
    """A few-second CPU run on 16x16 digits, batch 8, checkpoint every 2 steps."""
    base = dict(model=model, model_kwargs=SMALLER[model], dataset="digits", resolution=16, batch_size=8, steps=6,
                warmup_steps=4, lr=1e-3, ckpt_every=2, log_every=1, num_workers=0, device="cpu", out_dir=str(out))
    return TrainConfig(**{**base, **kw})


def read_log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

class Killed(Exception):
    pass


def kill_at(step: int):
    def on_step(row):
        if row["step"] == step:
            raise Killed  # as if the process died right after logging this step
    return on_step


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return out, train(tiny_config(out, steps=4), progress=False)


@pytest.mark.parametrize(
    "model, extra",
    [("dim_tiny_2", {}), ("uvit_tiny_2", {"class_cond": True, "grad_accum": 2, "grad_clip": 1.0, "ema_warmup": True})],
    ids=["dim", "uvit-classcond-accum-clip-emawarmup"],
)
def test_killed_and_resumed_run_repeats_the_uninterrupted_one_bit_for_bit(tmp_path, model, extra):
    full = train(tiny_config(tmp_path / "full", model, **extra), progress=False)

    with pytest.raises(Killed):  # killed after step 5; the last checkpoint is step 4
        train(tiny_config(tmp_path / "split", model, **extra), progress=False, on_step=kill_at(5))
    assert read_checkpoint(tmp_path / "split")["step"] == 4
    resumed = train(tiny_config(tmp_path / "split", model, **extra), progress=False)  # resume is the default
    assert resumed["resumed_from"] == 4 and resumed["steps_this_run"] == 2

    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # the step logged after the checkpoint was redone once
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # ==, not allclose
    assert [r["lr"] for r in a] == [r["lr"] for r in b] == [1e-3 * min(1, (s + 1) / 4) for s in range(6)]
    assert full["params_digest"] == resumed["params_digest"]
    ema_a, ema_b = (read_checkpoint(tmp_path / d)["ema"]["module"] for d in ("full", "split"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_resume_refuses_changed_settings(tiny_run, tmp_path):
    out, _ = tiny_run
    with pytest.raises(ValueError, match=r"holds a run with other settings \(lr: 0.001 -> 0.002\)"):
        train(tiny_config(out, steps=5, lr=2e-3), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_config(tmp_path / "empty"), resume=True, progress=False)


def test_checkpoint_holds_everything_a_resume_needs(tiny_run):
    out, summary = tiny_run
    ckpt = read_checkpoint(out / "latest.pt")
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    assert ckpt["step"] == 4 and summary["steps"] == 4
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["scheduler"]["last_epoch"] == 4  # the LR schedule's position travels with the weights
    assert len(ckpt["optimizer"]["state"]) == len(ckpt["model"])  # AdamW moments for every parameter
    assert TrainConfig.from_dict(ckpt["config"]) == tiny_config(out, steps=4)
    assert ckpt["model_args"]["kwargs"]["img_size"] == 16
    assert summary["checkpoint"] == str(out / "latest.pt") and (out / "config.toml").exists()
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]


def test_load_checkpoint_gives_ema_weights_by_default(tiny_run):
    out, _ = tiny_run
    ckpt = read_checkpoint(out)
    ema_model, cfg = load_checkpoint(out)
    raw_model, _ = load_checkpoint(out / "latest.pt", ema=False)
    assert cfg.model == "dim_tiny_2" and not ema_model.training
    for k, v in ema_model.state_dict().items():
        assert torch.equal(v, ckpt["ema"]["module"][k]) and torch.equal(raw_model.state_dict()[k], ckpt["model"][k])
    assert params_digest(raw_model) != params_digest(ema_model)
    with torch.no_grad():
        eps = ema_model(torch.randn(2, 3, 16, 16), torch.rand(2) * 999)
    assert eps.shape == (2, 3, 16, 16) and torch.isfinite(eps).all()


@pytest.mark.parametrize("source", ["run directory", "checkpoint file", "state dict"])
def test_init_from_takes_a_state_dict_as_it_is_and_a_checkpoints_ema_weights(tiny_run, tmp_path, source):
    """A full checkpoint was refused as 'not a state dict of tensors'; it now starts the run from its EMA weights."""
    run, _ = tiny_run
    ckpt = read_checkpoint(run)
    ema, raw = ckpt["ema"]["module"], ckpt["model"]
    assert not all(torch.equal(ema[k], raw[k]) for k in raw)  # so the test can tell which ones were taken
    path = {"run directory": run, "checkpoint file": run / "latest.pt", "state dict": tmp_path / "init.pt"}[source]
    if source == "state dict":
        save_checkpoint(raw, path)
    out = tmp_path / "run"
    train(tiny_config(out, steps=1, lr=0.0, init_from=str(path)), progress=False)  # lr 0: the start stays as it was
    start = read_checkpoint(out)["model"]
    expected = raw if source == "state dict" else ema
    assert start.keys() == expected.keys() and all(torch.equal(start[k], v) for k, v in expected.items())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_class_conditional_mixed_precision_run_samples_with_guidance(tmp_path, precision):
    summary = train(tiny_config(tmp_path, "uvit_tiny_2", steps=2, class_cond=True, precision=precision), progress=False)
    assert summary["precision"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert read_checkpoint(tmp_path)["config"]["p_uncond"] == 0.1
    model, cfg = load_checkpoint(tmp_path)
    assert model.num_classes == 10
    x = draw_samples(model, build_schedule(cfg.schedule), 3, steps=2, cfg_scale=1.0, labels=torch.tensor([0, 5, 9]))
    assert x.shape == (3, 3, 16, 16) and x.abs().max() <= 1


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_file(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


def test_numbered_checkpoints_are_kept_alongside_latest(tmp_path):
    train(tiny_config(tmp_path, steps=4, keep_every=2), progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["latest.pt", "step_00000002.pt", "step_00000004.pt"]
    assert read_checkpoint(tmp_path / "step_00000002.pt")["step"] == 2


def test_a_damaged_latest_resumes_from_the_previous_numbered_checkpoint(tmp_path):
    train(tiny_config(tmp_path / "full", steps=8), progress=False)
    split = tmp_path / "split"
    train(tiny_config(split, steps=6, keep_every=2), progress=False)
    with open(split / "latest.pt", "r+b") as f:  # cut off in place: step_00000006.pt, its hard link, goes with it
        f.truncate(100)
    with pytest.warns(UserWarning, match=r"latest.pt is not a readable checkpoint: a torch archive cut off at 100 "
                                         r"bytes \(truncated\); resuming from step_00000004.pt \(step 4\) instead"):
        resumed = train(tiny_config(split, steps=8, keep_every=2), progress=False)
    assert resumed["resumed_from"] == 4 and resumed["steps_this_run"] == 4
    a, b = read_log(tmp_path / "full"), read_log(split)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # ==, not allclose
    (split / "latest.pt").write_bytes(b"")
    for p in split.glob("step_*.pt"):
        p.unlink()
    with pytest.raises(CheckpointError, match=r"latest.pt is empty \(0 bytes\), not a checkpoint, and no readable "
                                              r"numbered checkpoint"):
        train(tiny_config(split, steps=9), progress=False)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f".latest.pt.{dead.pid}.tmp", tmp_path / f".latest.pt.{os.getppid()}.tmp"
    stale.write_bytes(b"PK\x03\x04 half")
    live.write_bytes(b"PK\x03\x04 being written")
    with pytest.warns(UserWarning, match="killed mid-write"):
        train(tiny_config(tmp_path, steps=2), progress=False)
    assert not stale.exists() and live.exists()  # a live writer's file is left alone
    stale.write_bytes(b"again")  # and every checkpoint write clears them too
    save_checkpoint({"step": 0}, tmp_path / "other.pt")
    assert not stale.exists()


def _state_dict_file(path):
    torch.save(nn.Linear(2, 2).state_dict(), path)


@pytest.mark.parametrize(
    "make, said",
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes), not a checkpoint"),
        (lambda p: p.write_bytes(p.with_name("good.pt").read_bytes()[:100]), "a torch archive cut off at 100 bytes"),
        (lambda p: p.write_text("hello\n"), "a text file of 6 bytes"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "1024 bytes of unknown binary data"),
        (_state_dict_file, "is a plain state dict (2 tensors) without the run's config: a public DiM file converts "
                           "with `dimstudy convert --from dim-public"),
        (lambda p: torch.save({"step": 3}, p), "is not a dimstudy checkpoint: a dict with keys step, lacking model, ema"),
        (lambda p: torch.save([1, 2], p), "is not a dimstudy checkpoint: it holds a list"),
    ],
    ids=["empty", "truncated", "text", "binary", "state-dict", "foreign-dict", "list"],
)
def test_an_unusable_checkpoint_is_one_line_naming_the_file_and_what_it_is(tiny_run, tmp_path, make, said):
    out, _ = tiny_run
    (tmp_path / "good.pt").write_bytes((out / "latest.pt").read_bytes())
    bad = tmp_path / "bad.pt"
    make(bad)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert str(e.value).startswith(str(bad)) and said in str(e.value) and "\n" not in str(e.value)


def test_ema_update_is_the_exponential_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    for name, p in model.named_parameters():
        assert torch.allclose(ema.module.get_parameter(name), 0.9 * start[name] + 0.1 * p)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 5.0))  # buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    assert all(p.dtype == torch.float32 for p in EMA(model.to(torch.bfloat16)).module.parameters())


def test_ema_warmup_uses_min_of_decay_and_the_step_ratio():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.95, warmup=True)
    assert [ema.decay_at(t) for t in (0, 1, 8, 170, 171, 10_000)] == [1 / 10, 2 / 11, 9 / 18, 171 / 180, 0.95, 0.95]
    assert EMA(model, decay=0.95).decay_at(0) == 0.95  # off: the fixed decay of U-ViT / DiM
    e, p = ema.module.weight.detach().clone(), model.weight.detach()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, t=1)
    assert torch.allclose(ema.module.weight, (2 / 11) * e + (9 / 11) * p)
    state = ema.state_dict()
    assert state["warmup"] is True
    legacy = EMA(model, decay=0.5, warmup=True)
    legacy.load_state_dict({"decay": 0.9, "module": state["module"]})  # saved before the option existed
    assert legacy.decay == 0.9 and legacy.warmup is False


def test_init_share_is_the_product_of_the_decays():
    from dimstudy.train.ema import init_share

    assert init_share(0.999, 1000) == pytest.approx(0.999 ** 1000)  # 37%: what spoiled the first GPU study
    assert init_share(0.9, 3, warmup=True) == pytest.approx(0.1 * (2 / 11) * (3 / 12))
    assert init_share(0.9999, 500_000) < 1e-21 and init_share(0.5, 0) == 1.0  # the paper's run: nothing left
    product = 1.0  # the closed form agrees with multiplying the decays one update at a time
    for t in range(3000):
        product *= min(0.999, (1 + t) / (10 + t))
    assert init_share(0.999, 3000, warmup=True) == pytest.approx(product, rel=1e-9)
    assert init_share(1.0, 4, warmup=True) == pytest.approx(1 / 10 * 2 / 11 * 3 / 12 * 4 / 13)


def test_short_run_warns_when_its_ema_would_still_be_mostly_the_init(tmp_path):
    with pytest.warns(UserWarning, match=r"ema_decay 0.999 over 6 steps, the final EMA weights are still 99% "
                                         r"the initial ones.*set ema_warmup = true or lower ema_decay"):
        summary = train(tiny_config(tmp_path / "a", ema_decay=0.999), progress=False)
    assert summary["ema_init_share"] == pytest.approx(0.999 ** 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(tiny_config(tmp_path / "b", ema_decay=0.3), progress=False)
    assert not [w for w in caught if str(w.message).startswith("EMA:")]
    assert summary["ema_init_share"] == pytest.approx(0.3 ** 6)


def test_resume_accepts_a_checkpoint_saved_before_a_config_field_existed(tmp_path):
    out = tmp_path / "old"
    train(tiny_config(out, steps=2), progress=False)
    ckpt = torch.load(out / "latest.pt", map_location="cpu", weights_only=False)
    del ckpt["config"]["ema_warmup"]  # as written by an older dimstudy
    torch.save(ckpt, out / "latest.pt")
    assert train(tiny_config(out, steps=4), progress=False)["resumed_from"] == 2
    ckpt = torch.load(out / "latest.pt", map_location="cpu", weights_only=False)
    del ckpt["config"]["ema_warmup"]
    torch.save(ckpt, out / "latest.pt")
    with pytest.raises(ValueError, match=r"other settings \(ema_warmup: False -> True\)"):
        train(tiny_config(out, steps=6, ema_warmup=True), progress=False)


def test_warmup_is_linear_then_constant():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_factor(4))
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4])
    assert warmup_factor(0)(0) == 1.0


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    x, target = torch.randn(8, 5), torch.randn(8, 2)
    model = nn.Linear(5, 2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def per_sample_loss(xb, tb):
        return (model(xb) - tb).pow(2).mean(1)  # (b,)

    big = accumulate_grads(model, per_sample_loss, [(x, target)], scaler)
    grads_big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    small = accumulate_grads(model, per_sample_loss, list(zip(x.chunk(4), target.chunk(4), strict=True)), scaler)
    assert torch.allclose(big, small)
    for g_big, p in zip(grads_big, model.parameters(), strict=True):
        assert torch.allclose(g_big, p.grad, atol=1e-6)


def test_hflip_mirrors_about_half_the_images():
    x = torch.tensor([0.0, 1.0]).expand(4000, 1, 1, 2)  # each image is [0, 1]; its mirror is [1, 0]
    y = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = y[:, 0, 0, 0] == 1.0
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and torch.equal(y[~flipped], x[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 0.03


def test_batch_order_is_a_function_of_seed_and_step_and_ranks_split_it():
    def batches(start, end, info=DistInfo()):
        return list(StepBatchSampler(20, 4, seed=3, start_step=start, end_step=end, info=info))

    full = batches(0, 12)  # 5 steps per epoch: epochs 0, 1 and part of 2
    assert full[7:] == batches(7, 12)  # resuming mid-epoch continues the same order
    for e in range(2):
        assert sorted(i for b in full[5 * e : 5 * e + 5] for i in b) == list(range(20))  # an epoch sees each once
    assert full[:5] != full[5:10]  # a new permutation every epoch
    ranks = [batches(0, 12, DistInfo(rank=r, world_size=2)) for r in range(2)]
    assert all(r0 + r1 == g for r0, r1, g in zip(*ranks, full, strict=True))
    assert batches(0, 5) != list(StepBatchSampler(20, 4, seed=4, start_step=0, end_step=5))


def _ddp_worker(rank: int, world_size: int, port: int, out: str, result_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    summary = train(tiny_config(out, steps=3, ckpt_every=3), progress=False)
    with open(f"{result_dir}/rank{rank}.json", "w") as f:
        json.dump(summary, f)


def test_ddp_gloo_two_ranks_complete_and_agree(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, port, str(out), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert s0["world_size"] == s1["world_size"] == 2
    assert s0["params_digest"] == s1["params_digest"]  # identical weights on both ranks
    assert s0["final_loss"] == s1["final_loss"]  # the logged loss is the mean over ranks
    model, _ = load_checkpoint(out, ema=False)
    assert params_digest(model) == s0["params_digest"]  # rank 0 saved what both ranks hold
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]


def test_a_checkpoint_from_before_issue_13_loads_and_resumes_as_the_network_it_trained(tmp_path):
    """Before issue 13 DiM had no adaLN class table and a head on the adaLN condition; its options keep it."""
    from dimstudy.train.checkpoint import PRE_ISSUE_13

    out = tmp_path / "old"
    legacy = {**SMALLER["dim_tiny_2"], **PRE_ISSUE_13}
    train(tiny_config(out, steps=2, model_kwargs=legacy), progress=False)
    ckpt = torch.load(out / "latest.pt", map_location="cpu", weights_only=False)
    assert "ada_label_emb.weight" not in ckpt["model"]
    for kwargs in (ckpt["model_args"]["kwargs"], ckpt["config"]["model_kwargs"]):  # as an old dimstudy wrote them
        for k in PRE_ISSUE_13:
            del kwargs[k]
    torch.save(ckpt, out / "latest.pt")
    with pytest.warns(UserWarning, match="predates issue 13"):
        model, _ = load_checkpoint(out)
    assert model.head_cond == "adaln" and model.ada_label_emb is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["ema"]["module"][k])
    with pytest.warns(UserWarning, match="predates issue 13"):
        assert train(tiny_config(out, steps=3), progress=False)["resumed_from"] == 2
    # a current network does not take the old weights silently
    current = build_model({"name": "dim_tiny_2", "kwargs": {**SMALLER["dim_tiny_2"], "img_size": 16}})
    with pytest.raises(RuntimeError, match="ada_label_emb.weight"):
        current.load_state_dict(ckpt["ema"]["module"])
