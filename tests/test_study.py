"""Studies: the Tab. 4/6 grids, exactly-once trials across worker processes, resuming, rows, presets, CLI errors."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import typer
from optuna.trial import TrialState
from typer.testing import CliRunner

from dimstudy.cli import study as study_cli
from dimstudy.study import (
    ablation_variants,
    load_study_config,
    make_variant,
    optuna_adapter,
    read_runs,
    runner,
    scan_variants,
)
from dimstudy.study.config import StudyConfig, list_presets
from dimstudy.study.rows import ROW_SCHEMA, write_row
from dimstudy.study.run import run_grid, run_sweep, run_worker

REPO = Path(__file__).resolve().parents[1]
# A few-second real trial: narrower than dim_tiny_2, 4 steps at 16 px, FID of 8 samples against 16 digits.
TINY = {
    "train": {"model": "dim_tiny_2", "model_kwargs": {"dim": 32, "depth": 3, "d_state": 4}, "dataset": "digits",
              "resolution": 16, "batch_size": 8, "steps": 4, "warmup_steps": 2, "lr": 1e-3, "ckpt_every": 2,
              "log_every": 1, "num_workers": 0, "device": "cpu", "precision": "fp32"},
    "eval": {"num_samples": 8, "sampler": "dpm_solver", "steps": 2, "batch_size": 4, "num_reference": 16,
             "fid_batch_size": 16, "kid": False, "grid": 4},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_cfg(tmp_path, name="s", **kw) -> StudyConfig:
    over = {"name": name, "results_dir": str(tmp_path / "results"), "runs_dir": str(tmp_path / "runs"),
            "heartbeat_s": 1, "grace_s": 3, **kw}
    return load_study_config("smoke", over)


def keys_by_state(study) -> dict:
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.state, []).append(t.user_attrs.get("key"))
    return out


# -- the grids ---------------------------------------------------------------------------------------------------
def test_each_enqueues_exactly_the_tab4_grid_once(tmp_path):
    cfg = make_cfg(tmp_path, seeds=[0, 1])
    study = runner.open_study(cfg)
    counts = runner.enqueue_grid(study, ablation_variants(["each"]), cfg.seeds)
    assert counts == {"new": 10, "pending": 0, "done": 0}
    trials = study.get_trials()
    assert all(t.state == TrialState.WAITING for t in trials)
    rows = {(t.user_attrs["variant"], t.user_attrs["seed"]) for t in trials}
    assert rows == {(v, s) for v in ["full", "-LFE", "-PT", "-LSC", "-MS"] for s in (0, 1)}
    off = {t.user_attrs["variant"]: {k for k, on in t.user_attrs["model_kwargs"].items() if on is False} for t in trials}
    assert off == {"full": set(), "-LFE": {"local_conv"}, "-PT": {"padding_tokens"}, "-LSC": {"long_skip"},
                   "-MS": {"multi_scan"}}
    # Enqueueing again adds nothing; Tab. 6 adds only the network Tab. 4 lacks (1234 = full, 1 = -MS).
    assert runner.enqueue_grid(study, ablation_variants(["each"]), cfg.seeds)["new"] == 0
    assert runner.enqueue_grid(study, scan_variants(["1234", "12", "1"]), cfg.seeds) == {"new": 2, "pending": 4, "done": 0}
    assert sorted(t.user_attrs["scan_patterns"] for t in study.get_trials() if t.user_attrs["variant"] == "12") == ["12", "12"]


def test_drop_lists_and_zigzag_patterns():
    assert [v.label for v in ablation_variants(["padding_tokens"])] == ["full", "-PT"]
    assert [v.label for v in ablation_variants(["long_skip,padding_tokens", "long_skip"])] == ["full", "-LSC-PT", "-LSC"]
    assert [v.key for v in scan_variants(["5678", "57"])] == ["scan5678-lsc1-pt1-lfe1", "scan57-lsc1-pt1-lfe1"]
    with pytest.raises(ValueError, match="unknown scan pattern '9'"):
        scan_variants(["19"])


def test_reopening_a_study_with_other_settings_is_refused(tmp_path):
    runner.open_study(make_cfg(tmp_path))
    runner.open_study(make_cfg(tmp_path, workers=1, seeds=[3]))  # settings that change no result may differ
    with pytest.raises(ValueError, match=r"other settings \(train.steps: 500 -> 99\)"):
        runner.open_study(make_cfg(tmp_path, train={"steps": 99}))


# -- exactly once across processes ---------------------------------------------------------------------------------
FAKE = '''
import json, os, time
from pathlib import Path
from filelock import FileLock

LOG = Path(os.environ["FAKE_LOG"])

def fake(trial, cfg):
    """Log (key, pid); the first call waits until both workers are in, so the two really run side by side."""
    me = LOG.with_name(f"started-{os.getpid()}")
    me.touch()
    t0 = time.time()
    while len(list(LOG.parent.glob("started-*"))) < int(os.environ.get("FAKE_WORKERS", "1")) and time.time() - t0 < 60:
        time.sleep(0.05)
    with FileLock(str(LOG) + ".lock"):
        with open(LOG, "a") as f:
            f.write(json.dumps({"key": trial.user_attrs["key"], "pid": os.getpid()}) + "\\n")
    if os.environ.get("FAKE_HANG") == trial.user_attrs["key"] and not os.environ.get("FAKE_NO_HANG"):
        time.sleep(600)  # killed here
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0.2")))
    return float(trial.number)
'''


def fake_env(tmp_path, **extra) -> dict:
    (tmp_path / "fakemod").mkdir(exist_ok=True)
    (tmp_path / "fakemod" / "fake_trial.py").write_text(textwrap.dedent(FAKE))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fakemod'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FAKE_LOG": str(tmp_path / "log" / "calls.jsonl"), "OMP_NUM_THREADS": "1", **extra}
    (tmp_path / "log").mkdir(exist_ok=True)
    return env


def start_worker(tmp_path, cfg, env) -> subprocess.Popen:
    code = (f"from fake_trial import fake; from dimstudy.study.run import run_worker; "
            f"run_worker({cfg.name!r}, None, {cfg.results_dir!r}, trial_fn=fake, log=lambda s: None)")
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)


def calls(tmp_path) -> list[dict]:
    path = tmp_path / "log" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_worker_processes_run_every_trial_exactly_once(tmp_path):
    cfg = make_cfg(tmp_path, seeds=[0, 1])
    study = runner.open_study(cfg)
    assert optuna_adapter.storage_url(study).startswith("sqlite:///")  # so claims take the file lock
    runner.enqueue_grid(study, ablation_variants(["each"]), cfg.seeds)
    env = fake_env(tmp_path, FAKE_WORKERS="2")
    procs = [start_worker(tmp_path, cfg, env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    log = calls(tmp_path)
    keys = [c["key"] for c in log]
    assert sorted(keys) == sorted(runner.grid_key(v, s) for v in ablation_variants(["each"]) for s in (0, 1))
    assert len({c["pid"] for c in log}) == 2  # both workers took trials
    assert set(keys_by_state(study)) == {TrialState.COMPLETE}


def test_a_killed_worker_s_trial_is_requeued_and_finished_trials_are_not_redone(tmp_path):
    cfg = make_cfg(tmp_path)
    study = runner.open_study(cfg)
    runner.enqueue_grid(study, ablation_variants(["each"]), cfg.seeds)
    hang = runner.grid_key(ablation_variants(["each"])[2], 0)  # the third trial hangs until killed
    env = fake_env(tmp_path, FAKE_HANG=hang, FAKE_SLEEP="0")
    proc = start_worker(tmp_path, cfg, env)
    t0 = time.time()
    while hang not in [c["key"] for c in calls(tmp_path)] and time.time() - t0 < 60:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the trial stays RUNNING with a dead pid
    proc.wait()
    assert keys_by_state(study)[TrialState.RUNNING] == [hang]
    assert len(keys_by_state(study)[TrialState.COMPLETE]) == 2

    # The study is re-run: the orphan is failed and re-queued at once (its pid is gone), the rest finish.
    env["FAKE_NO_HANG"] = "1"
    assert start_worker(tmp_path, cfg, env).wait(timeout=120) == 0
    keys = [c["key"] for c in calls(tmp_path)]
    assert sorted(set(keys)) == sorted(keys_by_state(study)[TrialState.COMPLETE])  # every point done once ...
    assert keys.count(hang) == 2 and len(keys) == 6  # ... and only the killed one ran again
    assert keys_by_state(study)[TrialState.FAIL] == [hang]
    retry = [t for t in study.get_trials() if t.user_attrs["key"] == hang and t.state == TrialState.COMPLETE][0]
    assert retry.user_attrs["retries"] == 1 and retry.user_attrs["run_name"].startswith("scan1234-lsc1-pt0")


def test_the_optuna_adapter_reaches_this_optunas_storage_trial_ids_and_url(tmp_path):
    """Optuna's private attributes are used only in dimstudy.study.optuna_adapter: an Optuna release that renames
    them fails here."""
    cfg = make_cfg(tmp_path)
    study = runner.open_study(cfg)
    runner.enqueue_grid(study, ablation_variants(["each"]), [0])
    assert optuna_adapter.storage_url(study) == cfg.storage_url
    assert optuna_adapter.storage_url(optuna.create_study()) == ""  # in memory: no URL, so no claim file lock
    storage = optuna_adapter.storage(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    for t in study.get_trials():  # numbers count within the study, ids within the storage; each finds its trial
        assert storage.get_trial(optuna_adapter.trial_id_of(study, t.number)).number == t.number
    trial = runner.claim(study)  # claims through the adapter: RUNNING, owned, with a heartbeat
    assert optuna_adapter.trial_id(trial) == optuna_adapter.trial_id_of(study, trial.number)
    frozen = storage.get_trial(optuna_adapter.trial_id(trial))
    assert frozen.state == TrialState.RUNNING and frozen.system_attrs[runner.OWNER_ATTR]["pid"] == os.getpid()
    assert trial.number in {t.number for t in study.get_trials(states=(TrialState.RUNNING,))}


def test_a_stale_heartbeat_requeues_a_trial_of_another_machine(tmp_path):
    cfg = make_cfg(tmp_path)
    study = runner.open_study(cfg)
    runner.enqueue_grid(study, ablation_variants(["local_conv"]), [0])
    trial = runner.claim(study)
    storage, trial_id = optuna_adapter.storage(study), optuna_adapter.trial_id(trial)
    storage.set_trial_system_attr(trial_id, runner.OWNER_ATTR, {"host": "elsewhere", "pid": 1, "worker": "x"})
    storage.record_heartbeat(trial_id)
    assert runner.reap_orphans(study) == []  # alive: its heartbeat is fresh
    time.sleep(cfg.grace_s + 1.5)
    assert runner.reap_orphans(study) == [trial.number]
    assert [t.state for t in study.get_trials()].count(TrialState.WAITING) == 2  # the copy + the untouched one


def test_sweep_samples_the_budget_and_prunes_on_reports(tmp_path):
    from dimstudy.study.sweep import suggest

    cfg = make_cfg(tmp_path, name="sw", workers=1)
    cfg.sweep.n_trials, cfg.sweep.pruner = 6, "median"

    def objective(trial, cfg):
        p = suggest(trial, cfg.sweep.space)
        assert 5e-4 <= p["lr"] <= 5e-3 and p["model_kwargs.d_state"] in (2, 4, 8)
        for step in range(5):
            trial.report(p["lr"] * (5 - step), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return p["lr"]

    out = run_sweep(cfg, log=lambda s: None, trial_fn=objective)
    assert sum(out["counts"].values()) == 6 and out["counts"].get("complete", 0) >= 3


# -- real trials: training resumes, rows are well-formed ------------------------------------------------------
@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    os.environ["DIMSTUDY_CACHE"] = str(tmp / "cache")  # reference statistics of this test only
    try:
        cfg = load_study_config("smoke", {"name": "real", "results_dir": str(tmp / "results"), "runs_dir": str(tmp / "runs"),
                                          "workers": 1, **TINY})
        # A trial killed after 2 of its 4 steps: its run dir holds latest.pt at step 2.
        from dimstudy.train import TrainConfig, train

        v = make_variant(["padding_tokens"])
        run_dir = Path(cfg.runs_dir) / "real" / f"{v.key}-seed0"
        partial = TrainConfig.from_dict({**cfg.train.to_dict(), "steps": 2, "out_dir": str(run_dir),
                                         "model_kwargs": {**cfg.train.model_kwargs, **v.model_kwargs}})
        train(partial, progress=False)
        out = run_grid(cfg, [v], log=lambda s: None)  # one trial: each FID costs ~10 s on a CPU
        yield cfg, out
    finally:
        os.environ.pop("DIMSTUDY_CACHE", None)


def test_real_trials_resume_training_and_write_well_formed_rows(real_study):
    cfg, out = real_study
    assert out["counts"] == {"complete": 1}
    df = read_runs(cfg.results_dir, "real")
    assert len(df) == 1 and set(df["status"]) == {"ok"}
    required = [k for k in ROW_SCHEMA if k not in ("error", "params", "config", "attn_backend", "kid_mean", "kid_std")]
    assert not [c for c in required if c not in df], "missing columns"
    r = df.iloc[0]
    assert r["variant"] == "-PT" and r["resumed_from"] == 2  # the killed run continued from its latest.pt
    assert [r[c] for c in ("multi_scan", "long_skip", "padding_tokens", "local_conv")] == [True, True, False, True]
    assert (r["steps"], r["num_samples"], r["num_reference"], r["seed"], r["status"]) == (4, 8, 16, 0, "ok")
    assert math.isfinite(r["fid"]) and math.isfinite(r["final_loss"]) and r["params_m"] > 0 and r["gflops"] > 0
    assert r["scan_backend"].startswith(("torch", "ref")) and r["git_sha"] and r["torch"] == torch.__version__
    assert (r["config.train.steps"], r["config.eval.num_samples"], r["preset"], r["study"]) == (4, 8, "smoke", "real")
    assert r["device"] == "cpu" and r["wall_s"] > 0 and r["sample_steps"] == 2
    assert math.isfinite(r["fid_half_a"]) and math.isfinite(r["fid_half_b"]) and not r["cuda_graphs"]
    study_dir = Path(cfg.study_dir)
    assert (study_dir / r["loss_curve"]).is_file() and (study_dir / r["grid"]).is_file()
    assert len(pd.read_csv(study_dir / r["loss_curve"])) == 4  # every step of the resumed run's log
    assert not list(Path(cfg.runs_dir).rglob("eval/*"))  # sample chunks are removed once the row is written


def test_rerunning_a_finished_study_redoes_nothing(real_study):
    cfg, _ = real_study
    out = run_grid(cfg, [make_variant(["padding_tokens"])], log=lambda s: None,
                   trial_fn=lambda t, c: pytest.fail("a finished trial ran again"))
    assert out["counts"] == {"complete": 1}
    assert run_worker("real", None, cfg.results_dir, trial_fn=lambda t, c: pytest.fail("ran again"), log=lambda s: None) == 0


def test_a_study_resumes_from_its_committed_rows_with_a_fresh_database(real_study):
    """A later GPU slot: the rows are committed, the Optuna database is gone. Nothing runs twice."""
    cfg, _ = real_study
    v = make_variant(["padding_tokens"])
    ckpt = Path(cfg.runs_dir) / "real" / f"{v.key}-seed0" / "latest.pt"
    before = (len(read_runs(cfg.results_dir, "real")), ckpt.stat().st_mtime_ns)
    db = Path(cfg.study_dir) / "optuna.db"
    db.unlink()
    messages = []
    out = run_grid(cfg, [v], log=messages.append, trial_fn=lambda t, c: pytest.fail("ran again"))
    assert out["counts"] == {} and any("1 done (1 of them committed in" in m for m in messages)
    # A database that still has the cell waiting (enqueued before the row was committed): the real trial
    # function finds the row and returns its FID without training, sampling or writing a row.
    db.unlink()
    study = runner.open_study(cfg)
    runner.enqueue_grid(study, [v], cfg.seeds)
    assert run_worker("real", None, cfg.results_dir, log=messages.append) == 1
    assert any("not run again" in m for m in messages)
    assert (len(read_runs(cfg.results_dir, "real")), ckpt.stat().st_mtime_ns) == before
    # The same cell under another seed, or another budget, is not done: another seed is a new cell, and
    # rows of other result-defining settings are refused rather than mixed into one table.
    from dimstudy.study.cells import cells

    assert [c["row"] is not None for c in cells(cfg, [v], [0, 1])] == [True, False]
    other = load_study_config("smoke", {**cfg.to_dict(), "train": {**cfg.train.to_dict(), "steps": 5}})
    with pytest.raises(ValueError, match=r"runs.jsonl holds rows made with other settings \(train.steps: 4 -> 5\)"):
        run_grid(other, [v], log=lambda s: None, trial_fn=lambda t, c: pytest.fail("ran"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_trial_leaves_no_row(tmp_path, sig):
    cfg = make_cfg(tmp_path, name="intr", workers=1, **{**TINY, "train": {**TINY["train"], "steps": 100_000}})
    code = ("import json, sys; from dimstudy.study.config import StudyConfig; from dimstudy.study.run import run_grid; "
            "from dimstudy.study import make_variant; cfg = StudyConfig.from_dict(json.loads(sys.argv[1])); "
            "run_grid(cfg, [make_variant(())])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIMSTUDY_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg.to_dict())], env=env, cwd=tmp_path)
    log = Path(cfg.runs_dir) / "intr" / f"{make_variant(()).key}-seed0" / "loss.jsonl"
    t0 = time.time()
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.time() - t0 < 120:
        time.sleep(0.1)
    assert log.exists(), "the trial never started training"
    proc.send_signal(sig)
    assert proc.wait(timeout=60) != 0
    assert read_runs(cfg.results_dir, "intr").empty  # neither a row nor a torn one
    assert not (Path(cfg.study_dir) / "runs.jsonl").exists()
    states = keys_by_state(runner.open_study(cfg))
    # SIGTERM: the worker re-queues its trial itself; SIGKILL: it stays RUNNING until the next run reaps it.
    assert states.get(TrialState.WAITING if sig == signal.SIGTERM else TrialState.RUNNING) == [runner.grid_key(make_variant(()), 0)]


def test_a_row_torn_by_a_killed_writer_is_never_read_and_is_cut_before_the_next(tmp_path):
    write_row({"study": "t", "key": "a", "fid": 1.0}, tmp_path / "t")
    with open(tmp_path / "t" / "runs.jsonl", "ab") as f:
        f.write(b'{"study": "t", "key": "torn", "fi')  # killed mid-line
    assert list(read_runs(tmp_path, "t")["key"]) == ["a"]
    write_row({"study": "t", "key": "b", "fid": 2.0}, tmp_path / "t")
    lines = (tmp_path / "t" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b"]


def test_machine_shares_divide_time_among_trials_that_ran_side_by_side():
    from dimstudy.study.cells import machine_shares

    rows = pd.DataFrame({  # two trials side by side on one host for their whole 100 s, one alone elsewhere,
        "timestamp": ["2026-01-01T00:01:40+00:00", "2026-01-01T00:01:40+00:00", "2026-01-01T00:01:40+00:00",
                      "2026-01-01T00:03:20+00:00"],  # and one on the first host after them, overlapping half
        "wall_s": [100.0, 100.0, 100.0, 150.0], "host": ["a", "a", "b", "a"]})
    # the fourth ran 00:00:50-00:03:20: it shares 50 s with the two (a third each), then 100 s alone
    assert list(machine_shares(rows)) == pytest.approx([50 / 3 + 50 / 2, 50 / 3 + 50 / 2, 100.0, 50 / 3 + 100])
    assert machine_shares(rows).iloc[:2].sum() + machine_shares(rows).iloc[3] == pytest.approx(200.0)  # busy time


def test_status_shows_done_and_remaining_cells_and_the_minutes_left(tmp_path, cli):
    from dimstudy.study.cells import cell_train_config

    cfg = make_cfg(tmp_path, name="st", seeds=[0, 1])
    for i, v in enumerate(ablation_variants(["local_conv"])):  # full and -LFE done for seed 0, 60 s each alone
        tcfg = cell_train_config(cfg, v.model_kwargs, 0, "somewhere")
        write_row({"study": "st", "kind": "grid", "key": f"{v.key}/seed0", "variant": v.label, "variant_key": v.key,
                   "seed": 0, "status": "ok", "fid": 10.0 + i, "wall_s": 60.0, "host": "h",
                   "timestamp": f"2026-01-01T00:0{2 * i + 1}:00+00:00",
                   "config": {"train": tcfg.to_dict(), "eval": cfg.eval.__dict__}}, cfg.study_dir)
    save_path = Path(cfg.study_dir) / "study.toml"
    from dimstudy.study.config import save_study_config

    save_study_config(load_study_config("smoke", {"name": "st", "drop": ["local_conv"], "patterns": ["1234"],
                                                  "seeds": [0, 1]}), save_path)
    runner_, app = cli
    res = runner_.invoke(app, ["status", "--study", "st", "--results", cfg.results_dir])
    assert res.exit_code == 0, res.output
    assert "| full | FID 10.00 | — |" in res.output and "| -LFE | FID 11.00 | — |" in res.output
    assert "2 of 4 cells done" in res.output and "remaining: full seed 1, -LFE seed 1" in res.output
    assert "estimated 2 GPU-minutes to finish (1.0 min" in res.output


def test_concurrent_appends_lose_nothing(tmp_path):
    code = ("import sys; from dimstudy.study.rows import write_row\n"
            "for i in range(40): write_row({'study': 'c', 'key': f'{sys.argv[1]}-{i}', 'fid': i}, sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w), str(tmp_path / "c")]) for w in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    df = read_runs(tmp_path, "c")
    assert len(df) == 160 and df["key"].nunique() == 160


def test_write_row_orders_columns_by_the_schema(tmp_path):
    write_row({"zzz": 1, "fid": 2.0, "study": "o"}, tmp_path / "o")
    line = json.loads((tmp_path / "o" / "runs.jsonl").read_text())
    assert list(line) == ["study", "fid", "zzz"]


# -- presets and the CLI -------------------------------------------------------------------------------------------
def test_presets_load_and_flags_override():
    assert {"smoke", "gpu-small", "paper"} <= set(list_presets())
    smoke = load_study_config("smoke")
    assert smoke.name == "smoke" and smoke.preset == "smoke" and smoke.train.dataset == "digits"
    assert smoke.train.device == "cpu" and smoke.eval.num_samples <= 500 and smoke.eval.num_reference <= 1797
    paper = load_study_config("paper")
    assert (paper.train.model, paper.train.steps, paper.train.batch_size, paper.train.lr) == ("dim_s_2", 500_000, 128, 2e-4)
    assert (paper.eval.sampler, paper.eval.steps, paper.eval.num_samples, paper.eval.reference_split) == \
        ("euler_maruyama", 1000, 50_000, "train")
    gpu = load_study_config("gpu-small")
    assert gpu.train.precision == "bf16" and gpu.seeds == [0, 1] and gpu.workers > 1
    photos = load_study_config("gpu-photos")  # the GPU study on natural images: held-out reference crops, 3 seeds
    assert (photos.train.dataset, photos.eval.reference_split, photos.seeds) == ("photos", "test", [0, 1, 2])
    assert "5678" in photos.patterns and photos.train.device == "cuda"

    cfg = study_cli.study_config("smoke", {"seeds": [0, 1], "train": {"steps": 7, "lr": None}},
                                 ["train.weight_decay=0", "eval.kid=false", "train.model_kwargs.d_state=8"])
    assert cfg.seeds == [0, 1] and cfg.train.steps == 7 and cfg.train.lr == smoke.train.lr
    assert cfg.train.weight_decay == 0.0 and cfg.eval.kid is False
    assert cfg.train.model_kwargs == {"scan_backend": "auto", "d_state": 8}  # merged into the preset's table


def test_preset_from_a_path_and_bad_keys(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('seeds = [4]\n[train]\nsteps = 3\n[eval]\nnum_samples = 10\n')
    cfg = load_study_config(str(path))
    assert (cfg.name, cfg.seeds, cfg.train.steps, cfg.eval.num_samples) == ("mine", [4], 3, 10)
    path.write_text('[eval]\nnum_sample = 10\n')
    with pytest.raises(ValueError, match="unknown config key 'eval.num_sample'; valid keys: eval.num_samples"):
        load_study_config(str(path))
    with pytest.raises(ValueError, match="unknown preset 'nope'; valid choices: .*gpu-small.*smoke"):
        load_study_config("nope")


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    study_cli.register(app)
    return CliRunner(), app


@pytest.mark.parametrize("args, message", [
    (["ablate", "--preset", "smoke", "--drop", "padding_token"],
     "error: unknown component 'padding_token'; valid choices: each, multi_scan, long_skip, padding_tokens, local_conv"),
    (["ablate", "--preset", "nope"], "error: unknown preset 'nope'; valid choices: eight-gpus, gpu-photos, gpu-small, paper, smoke"),
    (["scan-study", "--preset", "smoke", "--patterns", "1239"], "error: unknown scan pattern '9'; valid patterns: 1=row"),
    (["ablate", "--preset", "smoke", "--model", "uvit_tiny_2"], "error: ablations switch DiM's designs, but 'uvit_tiny_2'"),
    (["sweep", "--preset", "smoke", "--space", "lrr=1:2"], "error: unknown sweep parameter 'lrr'"),
    (["worker", "--study", "missing"], "error: no study 'missing'"),
    (["report", "--study", "missing"], "error: no rows for study 'missing'"),
    (["status", "--study", "missing"], "error: no study 'missing': results/missing/study.toml does not exist"),
])
def test_cli_errors_are_one_line(cli, tmp_path, monkeypatch, args, message):
    runner_, app = cli
    monkeypatch.chdir(tmp_path)
    result = runner_.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


@pytest.mark.parametrize("command", ["ablate", "scan-study", "sweep"])
def test_study_commands_share_their_options_and_map_them_into_the_config(cli, tmp_path, command):
    runner_, app = cli
    help_text = runner_.invoke(app, [command, "--help"], terminal_width=200).output
    for flag in ("--preset", "--seeds", "--storage", "--ema-warmup", "--num-reference", "--set", "--no-report"):
        assert flag in help_text
    if command == "sweep":
        return  # a sweep samples its trials as it runs: there is no enqueue-only run to inspect
    results = tmp_path / "res"
    res = runner_.invoke(app, [command, "--preset", "smoke", "--workers", "0", "--results", str(results),
                               "--seeds", "3,4", "--steps", "7", "--ema-warmup", "--num-reference", "99",
                               "--scan-backend", "torch", "--set", "train.weight_decay=0.5", "--study", "opts"])
    assert res.exit_code == 0, res.output
    cfg = load_study_config(str(results / "opts" / "study.toml"))
    assert (cfg.name, cfg.seeds, cfg.workers) == ("opts", [3, 4], 0)
    assert (cfg.train.steps, cfg.train.ema_warmup, cfg.train.weight_decay) == (7, True, 0.5)
    assert cfg.train.model_kwargs["scan_backend"] == "torch" and cfg.eval.num_reference == 99
    assert cfg.train.lr == load_study_config("smoke").train.lr  # no flag: the preset's value


def test_a_study_whose_ema_would_stay_mostly_the_init_says_so_before_training(cli, tmp_path):
    runner_, app = cli
    args = ["ablate", "--preset", "smoke", "--workers", "0", "--results", str(tmp_path), "--steps", "100"]
    res = runner_.invoke(app, [*args, "--study", "a"])
    assert res.exit_code == 0 and ("warning: EMA: with ema_decay 0.99 over 100 steps, the final EMA weights are "
                                   "still 37% the initial ones") in res.output
    res = runner_.invoke(app, [*args, "--study", "b", "--ema-warmup"])
    assert res.exit_code == 0 and "warning: EMA" not in res.output


def test_standalone_workers_get_unique_names_from_host_and_pid():
    import os
    import socket
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DIMSTUDY_WORKER"}
    code = "from dimstudy.study.runner import WORKER_ID; print(WORKER_ID)"
    names = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
             for _ in range(2)]
    assert names[0] != names[1] and all(n.startswith(f"{socket.gethostname()}-") for n in names)


def test_trials_without_a_bar_log_their_progress_every_minute():
    """Several workers share one terminal, so a trial logs a line a minute: step, rate and time left, counted
    from the first step this process trained (here a run resumed at step 100, one step every 0.5 s)."""
    from dimstudy.study.trial import _chain, _progress_lines

    now, lines, seen = [0.0], [], []
    hook = _chain(None, _progress_lines(lines.append, "[w1 trial 3 -PT seed 0]", 800, clock=lambda: now[0]),
                  lambda row: seen.append(row["step"]))
    for step in range(101, 801):
        now[0] += 0.5
        hook({"step": step, "loss": 0.1})
    assert seen == list(range(101, 801))  # every hook sees every step
    assert len(lines) == 5  # at 60, 120, 180, 240 and 300 s of the 350
    assert lines[0] == "[w1 trial 3 -PT seed 0] step 220/800 (28%), 2.00 steps/s, 4m50s left"
    assert _chain(None, None) is None
