"""What the study commands do, as functions: enqueue the grid (or set up the sweep) and run the workers.

    ablate      -> run_grid(cfg, ablation_variants(cfg.drop))
    scan-study  -> run_grid(cfg, scan_variants(cfg.patterns))
    sweep       -> run_sweep(cfg)
    worker      -> run_worker(name, storage)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from dimstudy.checks import check_choice
from dimstudy.diffusion.samplers import SAMPLERS
from dimstudy.models.registry import get_entry
from dimstudy.study import runner
from dimstudy.study.cells import cell_train_config, cells, check_rows_match
from dimstudy.study.config import StudyConfig, save_study_config
from dimstudy.study.grid import Variant
from dimstudy.study.sweep import check_space, make_pruner, make_sampler
from dimstudy.study.trial import ensure_reference, run_trial
from dimstudy.train.ema import ema_warning
from dimstudy.train.trainer import check_config

Log = Callable[[str], None]


def check_inputs(cfg: StudyConfig, variants: list[Variant]) -> None:
    """Every name the trials will use, checked before anything is enqueued or written (a bad one would otherwise
    stop each trial after its training): each variant's TrainConfig (dataset, schedule, the model and its flags;
    a sweep: the base one), the sampler, the FID extractor and the reference."""
    # here, not at the top: it loads torch-fidelity
    from dimstudy.metrics.fid import EXTRACTORS, check_reference

    for model_kwargs in [v.model_kwargs for v in variants] or [{}]:
        check_config(cell_train_config(cfg, model_kwargs, cfg.seeds[0], ""))
    check_choice("sampler", cfg.eval.sampler, SAMPLERS)
    check_choice("extractor", cfg.eval.extractor, EXTRACTORS)
    if cfg.eval.reference is not None:
        check_reference(cfg.eval.reference)


def check_grid_model(cfg: StudyConfig) -> None:
    family = get_entry(cfg.train.model).family
    if family != "dim":
        raise ValueError(f"ablations switch DiM's designs, but {cfg.train.model!r} is a {family} model; "
                         "pick a dim_* model (see `dimstudy models --pattern 'dim*'`)")


def check_ema(cfg: StudyConfig, log: Log) -> None:
    """Say once, before any trial trains, when the preset's EMA would still be mostly the initial weights at
    the end of training (every trial would then sample noise); the trainer repeats it in each run."""
    if msg := ema_warning(cfg.train):
        log(f"warning: {msg} (study flag --ema-warmup)")


def run_grid(cfg: StudyConfig, variants: list[Variant], *, log: Log = print, trial_fn=run_trial) -> dict:
    """Enqueue variants x seeds (points already covered are skipped), run cfg.workers workers until the study
    is done. Returns {"study", "counts"}."""
    check_grid_model(cfg)
    check_inputs(cfg, variants)
    check_ema(cfg, log)
    check_rows_match(cfg)
    study = runner.open_study(cfg)
    save_study_config(cfg, cfg.study_dir / "study.toml")
    in_rows = {c["key"] for c in cells(cfg, variants, cfg.seeds) if c["row"]}
    counts = runner.enqueue_grid(study, variants, cfg.seeds, in_rows)
    log(f"study {cfg.name!r}: {len(variants)} variants x {len(cfg.seeds)} seeds: {counts['new']} new, "
        f"{counts['pending']} waiting or running, {counts['done']} done ({len(in_rows)} of them committed in "
        f"{cfg.study_dir / 'runs.jsonl'}; storage {cfg.storage_url})")
    if cfg.workers == 0:
        log(f"enqueued only; run them with `dimstudy worker --study {cfg.name}"
            + (f" --storage {cfg.storage}`" if cfg.storage else f" --results {cfg.results_dir}`")
            + " (or any study command on this study)")
        return {"study": cfg.name, "counts": runner.trial_counts(study)}
    _run_workers(study, cfg, None, log, trial_fn)
    return {"study": cfg.name, "counts": runner.trial_counts(study)}


def run_sweep(cfg: StudyConfig, *, log: Log = print, trial_fn=run_trial) -> dict:
    """Sample cfg.sweep.n_trials settings (workers share the count), prune on the reported values. Returns
    {"study", "counts"}."""
    check_space(cfg.sweep.space)
    check_inputs(cfg, [])
    check_ema(cfg, log)
    if cfg.workers == 0:
        raise ValueError("a sweep needs workers >= 1 (its trials are sampled as they start, there is nothing to enqueue)")
    study = runner.open_study(cfg, sampler=make_sampler(cfg.sweep, cfg.seeds[0]), pruner=make_pruner(cfg.sweep))
    save_study_config(cfg, cfg.study_dir / "study.toml")
    log(f"sweep {cfg.name!r}: {cfg.sweep.n_trials} trials, sampler {cfg.sweep.sampler}, pruner {cfg.sweep.pruner}, "
        f"metric {cfg.sweep.metric} (storage {cfg.storage_url})")
    _run_workers(study, cfg, cfg.sweep.n_trials, log, trial_fn)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if done:
        best = min(done, key=lambda t: t.value)
        log(f"best trial {best.number}: {cfg.sweep.metric} {best.value:.4g} with {best.params}")
    return {"study": cfg.name, "counts": runner.trial_counts(study)}


def run_worker(name: str, storage: str | None = None, results_dir: str = "results", *, threads: int | None = None,
               device: str | None = None, max_trials: int | None = None, wait: bool = True, log: Log = print,
               trial_fn=run_trial) -> int:
    """Join a study by name and pull its remaining trials; returns how many this worker ran."""
    study, cfg = runner.attach(name, storage, results_dir, device=device)
    _set_threads(threads or cfg.threads or 0)
    budget = cfg.sweep.n_trials if _is_sweep(study) else None
    return runner.work(study, cfg, _bound(trial_fn, log), sweep_budget=budget, max_trials=max_trials, wait=wait, log=log)


def _is_sweep(study) -> bool:
    return study.user_attrs.get("dimstudy_kind") == "sweep"


def _run_workers(study, cfg: StudyConfig, sweep_budget: int | None, log: Log, trial_fn) -> None:
    if sweep_budget is not None:
        study.set_user_attr("dimstudy_kind", "sweep")
    t0 = time.perf_counter()
    counts = runner.trial_counts(study)
    if sweep_budget is None and not counts.get("waiting") and not counts.get("running"):
        log("nothing left to run")
        return
    if cfg.workers == 1:
        _set_threads(cfg.threads)
        runner.work(study, cfg, _bound(trial_fn, log, progress=True), sweep_budget=sweep_budget, log=log)
    else:
        log(f"starting {cfg.workers} local workers")
        procs = runner.spawn_workers(cfg, cfg.workers)
        if trial_fn is run_trial and runner.trial_counts(study).get("waiting"):
            # The FID reference statistics, computed here while the workers train (they wait on its lock
            # only if they reach their first FID before it is done), so no worker computes them twice.
            _set_threads(cfg.threads or 1)
            try:
                ensure_reference(cfg, log=log)
            except Exception as e:  # the workers meet the same problem in their own evaluation, and report it
                log(f"reference statistics not cached here: {type(e).__name__}: {e}")
        codes = runner.wait_workers(procs)
        if any(codes):
            log(f"worker exit codes: {codes}")
    log(f"workers finished in {time.perf_counter() - t0:.0f} s; trials: {runner.trial_counts(study)}")


def _bound(trial_fn, log: Log, progress: bool = False):
    if trial_fn is run_trial:
        return lambda trial, cfg: run_trial(trial, cfg, log=log, progress=progress)
    return trial_fn


def _set_threads(n: int) -> None:
    if n and n > 0:
        torch.set_num_threads(n)

