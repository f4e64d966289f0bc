"""Studies on Optuna: each grid point (variant x seed) or sampled setting is one trial; workers pull trials.

Guarantees, and how they are kept:

- **Each grid point runs exactly once.** A point is identified by its `key` (the network and the seed, see
  `grid.Variant.key`). `enqueue_grid` adds a WAITING trial for a key only when no trial with that key is
  WAITING, RUNNING or COMPLETE, so re-running a command, or running `ablate` and `scan-study` on one study
  (whose grids share points), never doubles one. A worker claims a WAITING trial by flipping it to RUNNING
  in the storage; on PostgreSQL/MySQL that flip holds a row lock, and on SQLite (whose driver reads
  before it locks) every claim, enqueue and re-queue takes a file lock beside the database, so two workers
  never claim the same trial.
- **A killed study continues where it stopped.** Finished trials stay COMPLETE in the storage and are
  never claimed again. A trial whose worker died is found two ways: its worker was on this host and its
  pid is gone (found at once), or its heartbeat (written every `heartbeat_s` by a thread of the worker)
  is older than `grace_s` (Optuna's `fail_stale_trials`, for workers on other machines). Either way it
  is marked FAIL and a WAITING copy with the same spec is enqueued; its training resumes exactly from the
  run directory's latest.pt, and its evaluation from the sample chunks already written. A worker that is
  interrupted (Ctrl-C, SIGTERM) re-queues its trial itself before it exits.
- **Workers stop when the study is done:** no WAITING trial is left and none is RUNNING (a worker waits
  for RUNNING trials of others, so it can pick up their re-queued copy if their worker dies).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from dimstudy.runtime import one_line
from dimstudy.study import optuna_adapter
from dimstudy.study.config import StudyConfig, identity, identity_diff
from dimstudy.study.grid import Variant
from dimstudy.study.sweep import make_pruner, make_sampler

CONFIG_ATTR = "dimstudy_config"  # study user attr: the StudyConfig as a dict, so `worker --study` needs nothing else
OWNER_ATTR = "dimstudy_worker"  # trial system attr: {"host", "pid", "worker"} of the worker running it
POLL_S = 2.0  # how often an idle worker looks for work while other workers' trials run
# names this worker in trial attrs, result rows and logs: unique across machines and processes (host and pid), so
# standalone `dimstudy worker`s on one study are told apart; the workers a study spawns add their index
WORKER_ID = os.environ.get("DIMSTUDY_WORKER") or f"{socket.gethostname()}-{os.getpid()}"

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from us instead

TrialFn = Callable[[optuna.Trial, StudyConfig], float]


# -- the storage -----------------------------------------------------------------------------------------------
def sqlite_path(url: str) -> Path | None:
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _storage(cfg: StudyConfig) -> optuna.storages.RDBStorage:
    url = cfg.storage_url
    engine_kwargs = {}
    if (db := sqlite_path(url)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}  # wait for other workers' writes, don't fail
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna; we rely on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=cfg.heartbeat_s, grace_period=cfg.grace_s,
            heartbeat_stale_trial_callback=requeue,
        )


def claim_lock(study: optuna.Study):
    """The cross-process lock of claims, enqueues and re-queues: a file beside a SQLite database; server
    databases lock rows themselves (nullcontext)."""
    db = sqlite_path(optuna_adapter.storage_url(study))
    return FileLock(str(db) + ".claim.lock") if db is not None else contextlib.nullcontext()


def open_study(cfg: StudyConfig, sampler=None, pruner=None) -> optuna.Study:
    """Create the study, or open it and check it was made with the same result-defining settings."""
    study = optuna.create_study(study_name=cfg.name, storage=_storage(cfg), direction="minimize",
                                load_if_exists=True, sampler=sampler, pruner=pruner)
    saved = study.user_attrs.get(CONFIG_ATTR)
    if saved is None:
        study.set_user_attr(CONFIG_ATTR, json.loads(json.dumps(cfg.to_dict())))
    else:
        diff = identity_diff(identity(StudyConfig.from_dict(saved)), identity(cfg))
        if diff:
            raise ValueError(f"study {cfg.name!r} in {cfg.storage_url} was made with other settings "
                             f"({'; '.join(diff)}); use the same settings, or another --study name")
    return study


def attach(name: str, storage: str | None = None, results_dir: str = "results", **overrides) -> tuple[optuna.Study, StudyConfig]:
    """(study, its StudyConfig) for a worker that knows only the study's name and storage.

    `overrides` are settings that change no result (workers, threads, device, ...), given as StudyConfig
    fields, or `device` for the trials' TrainConfig.
    """
    url = storage or StudyConfig(name=name, results_dir=results_dir).storage_url
    if (db := sqlite_path(url)) is not None and not db.exists():
        raise FileNotFoundError(f"no study {name!r}: {db} does not exist (start one with `dimstudy ablate`, "
                                "`scan-study` or `sweep`, or pass --storage)")
    try:
        saved = optuna.load_study(study_name=name, storage=url).user_attrs.get(CONFIG_ATTR)
    except KeyError:
        raise ValueError(f"no study {name!r} in {url}") from None
    if saved is None:
        raise ValueError(f"study {name!r} in {url} was not made by dimstudy (no {CONFIG_ATTR} attribute)")
    saved = {**saved, "storage": storage, "results_dir": results_dir}
    device = overrides.pop("device", None)
    if device:
        saved["train"] = {**saved["train"], "device": device}
    cfg = StudyConfig.from_dict({**saved, **{k: v for k, v in overrides.items() if v is not None}})

    study = optuna.load_study(study_name=name, storage=_storage(cfg), sampler=make_sampler(cfg.sweep),
                              pruner=make_pruner(cfg.sweep))
    return study, cfg


# -- the queue -----------------------------------------------------------------------------------------------
def grid_key(variant: Variant, seed: int) -> str:
    return f"{variant.key}/seed{seed}"


def enqueue_grid(study: optuna.Study, variants: list[Variant], seeds: list[int],
                 in_rows: set[str] | frozenset = frozenset()) -> dict[str, int]:
    """Enqueue every (variant, seed) that no trial covers yet and whose key is not in `in_rows` (cells whose
    result row is committed: done, even in a fresh database); returns counts of new, pending and done points."""
    counts = {"new": 0, "pending": 0, "done": 0}
    with claim_lock(study):
        states = _states_by_key(study)
        for v in variants:
            for seed in seeds:
                key = grid_key(v, seed)
                have = states.get(key, set())
                if TrialState.COMPLETE in have or key in in_rows:
                    counts["done"] += 1
                elif have & {TrialState.WAITING, TrialState.RUNNING}:
                    counts["pending"] += 1
                else:
                    study.enqueue_trial(
                        {"variant": v.key, "seed": seed},
                        user_attrs={"key": key, "kind": "grid", "variant": v.label, "variant_key": v.key, "seed": seed,
                                    "model_kwargs": v.model_kwargs, "scan_patterns": v.patterns,
                                    "run_name": f"{v.key}-seed{seed}"},
                    )
                    counts["new"] += 1
    return counts


def _states_by_key(study: optuna.Study) -> dict[str, set]:
    out: dict[str, set] = {}
    for t in study.get_trials(deepcopy=False):
        if "key" in t.user_attrs:
            out.setdefault(t.user_attrs["key"], set()).add(t.state)
    return out


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Enqueue a WAITING copy of a FAIL trial (same params and spec, so it resumes from the same run dir).

    The copy carries `retry_of` = the failed trial's number. Nothing happens when the trial already has a
    copy, or its key is WAITING, RUNNING or COMPLETE elsewhere. Also Optuna's heartbeat-stale callback.
    Callers hold `claim_lock`.
    """
    trials = study.get_trials(deepcopy=False)
    if any(t.user_attrs.get("retry_of") == trial.number for t in trials):
        return False
    key = trial.user_attrs.get("key")
    if key is not None and _states_by_key(study).get(key, set()) & {TrialState.WAITING, TrialState.RUNNING,
                                                                    TrialState.COMPLETE}:
        return False
    fixed = {**trial.params, **trial.system_attrs.get("fixed_params", {})}
    retries = trial.user_attrs.get("retries", 0) + 1
    study.enqueue_trial(fixed, user_attrs={**trial.user_attrs, "retry_of": trial.number, "retries": retries})
    return True


def replaced(study: optuna.Study) -> set[int]:
    """Numbers of the trials that have a re-queued copy."""
    return {t.user_attrs["retry_of"] for t in study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def _alive(host: str, pid: int) -> bool:
    """Is worker `pid` on `host` still running? Other hosts: assume so (their heartbeat decides)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def reap_orphans(study: optuna.Study) -> list[int]:
    """FAIL and re-queue RUNNING trials whose worker is gone: a dead local pid, or a stale heartbeat.

    Returns the numbers of the trials re-queued.
    """
    storage = optuna_adapter.storage(study)
    done = []
    with claim_lock(study):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # calls `requeue` for each one it fails
        done += [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                 if t.number not in before]
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.system_attrs.get(OWNER_ATTR)
            if owner and not _alive(owner["host"], owner["pid"]):
                trial_id = optuna_adapter.trial_id_of(study, t.number)
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                        requeue(study, storage.get_trial(trial_id))
                        done.append(t.number)
    return done


def claim(study: optuna.Study, sweep_budget: int | None = None) -> optuna.Trial | None:
    """Move one WAITING trial to RUNNING for this worker and return it; for a sweep, when none waits and
    fewer than `sweep_budget` trials exist that are not failed, a new sampled trial. None: nothing to do."""
    storage = optuna_adapter.storage(study)
    with claim_lock(study):
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = optuna_adapter.trial_id_of(study, t.number)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    return _own(study, optuna.Trial(study, trial_id))
        if sweep_budget is not None:
            # A re-queued trial is replaced by its copy, so each setting counts once.
            gone = replaced(study)
            counted = [t for t in study.get_trials(deepcopy=False) if t.number not in gone]
            if len(counted) < sweep_budget:
                with warnings.catch_warnings():  # we run the heartbeat ourselves (see _Heartbeat)
                    warnings.simplefilter("ignore", UserWarning)
                    return _own(study, study.ask())
    return None


def _own(study: optuna.Study, trial: optuna.Trial) -> optuna.Trial:
    """Mark the claimed trial as this worker's, with a first heartbeat, before the claim lock is released:
    a worker that dies right after claiming is then found like any other."""
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "worker": WORKER_ID}
    storage, trial_id = optuna_adapter.storage(study), optuna_adapter.trial_id(trial)
    storage.set_trial_system_attr(trial_id, OWNER_ATTR, owner)
    storage.record_heartbeat(trial_id)
    return trial


class _Heartbeat:
    """Write the trial's heartbeat every `interval` seconds from a thread, while the trial runs."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float):
        self.storage, self.trial_id = optuna_adapter.storage(study), optuna_adapter.trial_id(trial)
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            with contextlib.suppress(Exception):  # a busy database must not kill the trial; the next beat retries
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def _raise_on_sigterm():
    """SIGTERM (a scheduler stopping us) unwinds like Ctrl-C, so the running trial is re-queued."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)


# -- the worker ----------------------------------------------------------------------------------------------
def work(study: optuna.Study, cfg: StudyConfig, trial_fn: TrialFn, *, sweep_budget: int | None = None,
         max_trials: int | None = None, wait: bool = True, log: Callable[[str], None] = print) -> int:
    """Pull and run trials until the study is done (or `max_trials` ran); returns how many this worker ran.

    trial_fn(trial, cfg) -> objective value. optuna.TrialPruned marks the trial PRUNED; another exception
    marks it FAIL (the worker goes on to the next); KeyboardInterrupt/SIGTERM re-queues it and stops.
    """
    _raise_on_sigterm()
    ran = 0
    while max_trials is None or ran < max_trials:
        for n in reap_orphans(study):
            log(f"trial {n}: its worker is gone; re-queued")
        trial = claim(study, sweep_budget)
        if trial is None:
            if wait and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                time.sleep(POLL_S)
                continue
            break
        ran += 1
        with _Heartbeat(study, trial, cfg.heartbeat_s):
            try:
                value = trial_fn(trial, cfg)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                continue
            except (KeyboardInterrupt, SystemExit):
                with claim_lock(study):
                    study.tell(trial, state=TrialState.FAIL)
                    requeue(study, optuna_adapter.storage(study).get_trial(optuna_adapter.trial_id(trial)))
                log(f"trial {trial.number}: interrupted; re-queued (it resumes from its run directory)")
                raise
            except Exception as e:  # the trial's own failure (a bug, out of memory): record it and go on
                study.tell(trial, state=TrialState.FAIL)
                log(f"trial {trial.number} failed: {one_line(e)}")
                continue
        study.tell(trial, value)
    return ran


def spawn_workers(cfg: StudyConfig, n: int, extra: list[str] | None = None) -> list[subprocess.Popen]:
    """Start `n` local `dimstudy worker` processes on this study (as `python -m dimstudy worker`, so they need no
    `dimstudy` script on the PATH).

    CPU: each gets cores // n torch threads (cfg.threads overrides). CUDA: when the machine has GPUs for
    every worker's `nproc`, each gets its own (CUDA_VISIBLE_DEVICES); otherwise all share them, which is
    how several small trials fill one large GPU.
    """
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // n)
    gpus = _gpu_count()
    procs = []
    for i in range(n):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DIMSTUDY_WORKER": f"{WORKER_ID}-w{i}"}
        if gpus >= n * cfg.nproc and n > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(i * cfg.nproc, (i + 1) * cfg.nproc))
        cmd = [sys.executable, "-m", "dimstudy", "worker", "--study", cfg.name, "--results", cfg.results_dir,
               "--threads", str(threads), *(extra or [])]
        if cfg.storage:
            cmd += ["--storage", cfg.storage]
        procs.append(subprocess.Popen(cmd, env=env))
    return procs


def wait_workers(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for every worker; on Ctrl-C pass SIGINT on (they re-queue their trials) and wait again."""
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=60)
        raise


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no CUDA runtime at all
        return 0


def trial_counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out
