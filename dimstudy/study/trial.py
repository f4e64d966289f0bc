"""One trial: train the variant (resuming its run directory), sample with the EMA weights, score FID, write its row.

Every stage can be interrupted and picked up again by the trial's re-queued copy:
- training resumes exactly from <run_dir>/latest.pt (a finished training is not repeated);
- sampling writes `eval.batch_size` images at a time to <run_dir>/eval/<setting>/NNNNN.pt (atomically),
  each chunk from its own seed, so a resumed evaluation only draws the missing chunks and gets the same images;
- the FID reference statistics are cached by dimstudy.metrics, computed once under a file lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from dimstudy.data import build_dataset
from dimstudy.data.datasets import DATASETS, cache_root, float_to_uint8, uint8_to_float
from dimstudy.diffusion import build_schedule
from dimstudy.diffusion.graphs import graphed
from dimstudy.diffusion.sampling import draw_samples, save_grid
from dimstudy.flops import build_on_meta, count_flops, count_params
from dimstudy.models.components import COMPONENTS
from dimstudy.ops.mixers import kernels_that_ran
from dimstudy.results import environment
from dimstudy.runtime import one_line, resolve_device
from dimstudy.study.cells import cell_identity, cell_train_config, finished_rows
from dimstudy.study.config import StudyConfig
from dimstudy.study.rows import bin_curve, final_loss, read_loss_log, write_curve, write_row
from dimstudy.study.runner import WORKER_ID
from dimstudy.study.sweep import apply_params, suggest
from dimstudy.train import load_checkpoint, train
from dimstudy.train.checkpoint import read_checkpoint
from dimstudy.train.config import TrainConfig, save_config
from dimstudy.train.ema import init_share
from dimstudy.train.files import save_checkpoint

Log = Callable[[str], None]


def run_trial(trial: optuna.Trial, cfg: StudyConfig, log: Log = print, progress: bool = False) -> float:
    """The objective of every dimstudy study: the trial's FID (or final loss, for a sweep on loss)."""
    t0 = time.perf_counter()
    spec = dict(trial.user_attrs)
    kind = spec.get("kind", "sweep")
    params: dict = {}
    tcfg = cfg.train
    if kind == "sweep":
        params = suggest(trial, cfg.sweep.space)
        if "run_name" not in spec:  # first start; a re-queued copy keeps its original's run dir
            spec.update(key=f"sweep/trial{trial.number:04d}", kind="sweep", run_name=f"trial{trial.number:04d}")
            for k in ("key", "kind", "run_name"):
                trial.set_user_attr(k, spec[k])
        tcfg = apply_params(tcfg, params)
    run_name = spec["run_name"]
    run_dir = Path(cfg.runs_dir) / cfg.name / run_name
    seed = spec.get("seed", cfg.seeds[0])
    tcfg = cell_train_config(cfg, spec.get("model_kwargs", {}), seed, run_dir, base=tcfg)
    tag = f"[{WORKER_ID} trial {trial.number} {spec.get('variant', run_name)} seed {seed}]"
    if kind == "grid" and (done := committed_row(cfg, tcfg)) is not None:
        # A row of this very configuration is already in runs.jsonl (an earlier slot, another machine): the
        # cell is done, whatever this Optuna database says.
        log(f"{tag} already in {cfg.study_dir / 'runs.jsonl'} (FID {done['fid']:.2f}, {done.get('timestamp')}); not run again")
        return float(done["fid"])
    base = {"study": cfg.name, "kind": kind, "preset": cfg.preset, "trial": trial.number, "key": spec["key"],
            "variant": spec.get("variant", run_name), "variant_key": spec.get("variant_key"), "seed": seed,
            "retries": spec.get("retries", 0), "params": params or None, "run_dir": str(run_dir)}
    try:
        train_summary = _train(trial, kind, cfg, tcfg, log, tag, progress)
        _release_cached_gpu_memory()  # the training's cached blocks would stack under the sampler's (many workers, one GPU)
        loss_log = read_loss_log(run_dir / "loss.jsonl")
        speed = (f"{train_summary['steps_per_s']:.2f} steps/s" if train_summary.get("steps_this_run")
                 else f"already trained to step {train_summary.get('steps')}")
        log(f"{tag} trained: {speed}, final loss {final_loss(loss_log):.4f}")
        metrics, eval_info, grid = {}, {}, None
        if not (kind == "sweep" and cfg.sweep.metric == "loss"):
            log(f"{tag} sampling {cfg.eval.num_samples} images ({cfg.eval.sampler}, {cfg.eval.steps} steps) and scoring FID")
            metrics, eval_info = evaluate(cfg, tcfg, run_dir, cfg.eval.num_samples, seed, progress=progress)
            grid = eval_info.pop("grid_images")
            log(f"{tag} FID {metrics['fid']:.2f} ({metrics['num_samples']} samples vs {metrics['num_reference']} reference)")
        row = {**base, "status": "ok", **_model_info(tcfg, run_dir), **_train_info(tcfg, train_summary, loss_log),
               **metrics, **eval_info, "wall_s": time.perf_counter() - t0,
               "loss_curve": write_curve(loss_log, cfg.study_dir, run_name),
               "grid": _save_grid(grid, cfg.study_dir, run_name) if grid is not None and len(grid) else None}
        row = _finish_row(row, cfg, tcfg)
        value = row["final_loss"] if (kind == "sweep" and cfg.sweep.metric == "loss") else row["fid"]
        # The row and the binned curve also go into the storage, so `dimstudy report --storage` can gather the
        # rows of workers on other machines (each also appends to its own results dir).
        trial.set_user_attr("row", json.loads(json.dumps(row, default=str)))
        trial.set_user_attr("curve", bin_curve(loss_log).to_dict("list"))
        shutil.rmtree(run_dir / "eval", ignore_errors=True)  # the samples were only kept for a resumed evaluation
        return value
    except optuna.TrialPruned:
        _finish_row({**base, "status": "pruned", "wall_s": time.perf_counter() - t0}, cfg, tcfg)
        log(f"{tag} pruned")
        raise
    except Exception as e:
        msg = one_line(e)
        _finish_row({**base, "status": "failed", "error": msg, "wall_s": time.perf_counter() - t0}, cfg, tcfg)
        log(f"{tag} failed: {msg}\n{traceback.format_exc(limit=4)}")
        raise


def committed_row(cfg: StudyConfig, tcfg: TrainConfig) -> dict | None:
    """The `ok` row of the study with this trial's resolved configuration, if one is committed."""
    return finished_rows(cfg).get(cell_identity(tcfg.to_dict(), dataclasses.asdict(cfg.eval)))


def _release_cached_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _finish_row(row: dict, cfg: StudyConfig, tcfg: TrainConfig) -> dict:
    dev = resolve_device(tcfg.device)
    row.update({**environment(dev), "host": socket.gethostname(), "worker": WORKER_ID,
                "config": {"train": tcfg.to_dict(), "eval": json.loads(json.dumps(cfg.eval.__dict__))}})
    write_row(row, cfg.study_dir)
    return row


# -- training -----------------------------------------------------------------------------------------------
def _train(trial, kind: str, cfg: StudyConfig, tcfg: TrainConfig, log: Log, tag: str, progress: bool) -> dict:
    """Train to tcfg.steps, resuming the run dir; report to the pruner for sweeps. Returns the trainer summary."""
    run_dir = Path(tcfg.out_dir)
    done = _finished_summary(run_dir, tcfg.steps)
    if done is not None:
        log(f"{tag} training already finished ({tcfg.steps} steps)")
        return done
    sweep = cfg.sweep if kind == "sweep" else None
    every = (sweep.report_every or max(1, tcfg.steps // 10)) if sweep else 0
    log(f"{tag} training {tcfg.model} for {tcfg.steps} steps -> {run_dir}")
    if sweep and sweep.report == "fid":  # train in segments, a quick FID after each one
        for stop in [*range(every, tcfg.steps, every), tcfg.steps]:
            seg = TrainConfig.from_dict({**tcfg.to_dict(), "steps": stop})
            summary = _finished_summary(run_dir, stop, at_least=True) or _train_segment(cfg, seg, None, progress)
            if stop < tcfg.steps:
                m, _ = evaluate(cfg, seg, run_dir, sweep.report_samples, tcfg.seed, tag=f"step{stop}")
                trial.report(m["fid"], stop)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return summary
    hooks = [_loss_reporter(trial, every) if sweep else None, None if progress else _progress_lines(log, tag, tcfg.steps)]
    return _train_segment(cfg, tcfg, _chain(*hooks), progress)


PROGRESS_EVERY_S = 60.0  # a trial's progress line, when workers share a terminal and no bar is drawn


def _progress_lines(log: Log, tag: str, total: int, every_s: float = PROGRESS_EVERY_S, clock=time.monotonic):
    """on_step that logs, every `every_s` seconds, the step reached, the rate since this process started
    training (a resumed run starts counting at its first new step) and the time left at that rate."""
    start, last, first = clock(), clock(), None

    def on_step(row: dict) -> None:
        nonlocal last, first
        now, step = clock(), row["step"]
        if first is None:
            first = step - 1
        if now - last >= every_s and step < total:
            rate = (step - first) / max(now - start, 1e-9)
            left = (total - step) / rate
            log(f"{tag} step {step}/{total} ({100 * step / total:.0f}%), {rate:.2f} steps/s, "
                f"{int(left // 60)}m{int(left % 60):02d}s left")
            last = now

    return on_step


def _chain(*hooks):
    """One on_step calling each hook given (None when there is none)."""
    hooks = [h for h in hooks if h is not None]

    def on_step(row: dict) -> None:
        for hook in hooks:
            hook(row)

    return on_step if hooks else None


def _loss_reporter(trial, every: int):
    window: list[float] = []

    def on_step(row: dict) -> None:  # the running mean of the last `every` losses, every `every` steps
        window.append(row["loss"])
        if row["step"] % every == 0:
            trial.report(float(np.mean(window[-every:])), row["step"])
            window.clear()
            if trial.should_prune():
                raise optuna.TrialPruned()

    return on_step


def _finished_summary(run_dir: Path, steps: int, at_least: bool = False) -> dict | None:
    """The trainer's summary when the run dir's training reached `steps` (or more, with at_least), else None."""
    path = run_dir / "summary.json"
    if path.exists() and (run_dir / "latest.pt").exists():
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("steps") == steps or at_least and summary.get("steps", -1) >= steps:
            return summary
    return None


def _train_segment(cfg: StudyConfig, tcfg: TrainConfig, on_step, progress: bool) -> dict:
    if cfg.nproc == 1:
        return train(tcfg, resume=None, progress=progress, on_step=on_step)
    return train_torchrun(tcfg, cfg.nproc, on_step)


def train_torchrun(tcfg: TrainConfig, nproc: int, on_step=None, poll_s: float = 5.0) -> dict:
    """Train in a subprocess on `nproc` GPUs: `torchrun --nproc_per_node N -m dimstudy train --preset <cfg>`.

    (`python -m torch.distributed.run` is torchrun.) `on_step` sees the loss log's new rows as they appear;
    if it raises (a pruned trial), the run is stopped and the exception re-raised.
    """
    run_dir = Path(tcfg.out_dir)
    preset = save_config(tcfg, run_dir / "trial_config.toml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dimstudy", "train", "--preset", str(preset), "--no-progress"]
    log_path, seen = run_dir / "loss.jsonl", 0
    with open(run_dir / "torchrun.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                if on_step is not None and log_path.exists():
                    rows = read_loss_log(log_path)
                    for row in rows.iloc[seen:].to_dict("records"):
                        on_step(row)
                    seen = len(rows)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            proc.wait()
            raise
    if proc.returncode != 0:
        tail = (run_dir / "torchrun.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"torchrun training exited with {proc.returncode}: {' | '.join(tail)}")
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def _train_info(tcfg: TrainConfig, summary: dict, loss_log) -> dict:
    return {"dataset": tcfg.dataset, "resolution": tcfg.resolution, "steps": tcfg.steps, "batch_size": tcfg.batch_size,
            "lr": tcfg.lr, "ema_decay": tcfg.ema_decay, "ema_warmup": tcfg.ema_warmup,
            "ema_init_share": init_share(tcfg.ema_decay, tcfg.steps, tcfg.ema_warmup), "warmup_steps": tcfg.warmup_steps,
            "precision": summary.get("precision"), "world_size": summary.get("world_size"),
            "final_loss": final_loss(loss_log), "train_wall_s": summary.get("wall_s"),
            "steps_per_s": summary.get("steps_per_s"), "images_per_s": summary.get("images_per_s"),
            "resumed_from": summary.get("resumed_from")}


def _model_info(tcfg: TrainConfig, run_dir: Path) -> dict:
    """The network the trainer built (from the checkpoint's constructor arguments): flags, size, GMACs."""
    kwargs = read_checkpoint(run_dir)["model_args"]["kwargs"]  # img_size, in_chans, num_classes, the flags
    model = build_on_meta(tcfg.model, **kwargs)
    x = torch.zeros(1, model.in_chans, model.img_size, model.img_size, device="meta")
    y = torch.zeros(1, dtype=torch.long, device="meta") if model.num_classes else None
    macs = count_flops(model, x, torch.zeros(1, device="meta"), y).gflops  # unrounded: small models matter too
    config = getattr(model, "config", {})
    return {"model": tcfg.model, **{c: bool(config.get(c, False)) for c in COMPONENTS},
            "scan_patterns": "".join(model.patterns) if hasattr(model, "patterns") else None,
            "params_m": count_params(model) / 1e6, "gflops": macs, "blocks": model.depth, "width": model.dim}


# -- evaluation -----------------------------------------------------------------------------------------------
_REFERENCES_READY: set[str] = set()


def reference_args(cfg: StudyConfig, tcfg: TrainConfig) -> dict:
    """compute_metrics' reference keywords: the training data at the training resolution unless eval says otherwise."""
    e = cfg.eval
    return dict(reference=e.reference or tcfg.dataset, resolution=tcfg.resolution, data_dir=e.data_dir or tcfg.data_dir,
                train=e.reference_split == "train", num_reference=e.num_reference, extractor=e.extractor,
                fid_weights=e.fid_weights, seed=e.reference_seed)


def ensure_reference(cfg: StudyConfig, tcfg: TrainConfig | None = None, log: Log = print) -> None:
    """Compute and cache the reference statistics once per machine, so workers don't race to compute them.

    A dataset-name reference is cached by dimstudy.metrics; scoring a handful of its own images fills that
    cache. A file lock makes other workers wait for the first, and a marker beside the cache lets later
    processes skip even the handful (if the cache is deleted, the next FID simply recomputes it).
    """
    from dimstudy.metrics import compute_metrics  # here, not at the top: it loads torch-fidelity

    tcfg = tcfg or cfg.train
    ref = reference_args(cfg, tcfg)
    tag = json.dumps(ref, sort_keys=True)
    if tag in _REFERENCES_READY or ref["reference"] not in DATASETS:
        return
    stem = cache_root() / "fid" / f"reference-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{stem}.lock"):
        if not Path(f"{stem}.done").exists():
            t0 = time.perf_counter()
            data = build_dataset(ref["reference"], ref["resolution"], data_dir=ref["data_dir"], train=ref["train"])
            few = torch.stack([data[i][0] for i in range(8)])
            compute_metrics(few, **ref, kid=False, device=_eval_device(tcfg), batch_size=cfg.eval.fid_batch_size)
            Path(f"{stem}.done").write_text(tag + "\n", encoding="utf-8")
            log(f"reference statistics for {ref['reference']} ({ref['num_reference'] or 'all'} images at "
                f"{ref['resolution']} px) computed and cached in {time.perf_counter() - t0:.0f} s")
    _REFERENCES_READY.add(tag)


def _eval_device(tcfg: TrainConfig) -> torch.device:
    dev = resolve_device(tcfg.device)
    return torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev


def chunk_seed(seed: int, index: int) -> int:
    """The sampling seed of chunk `index`: a pure function of (seed, index), so resumed chunks are the same."""
    return int(np.random.SeedSequence([seed, index, 0x5A4D]).generate_state(1)[0])


def draw_chunks(model, schedule, n: int, folder: Path, *, sampler: str, steps: int, batch_size: int, seed: int,
                device, cuda_graphs: bool = True, progress: bool = False) -> torch.Tensor:
    """n samples as uint8 (n, C, H, W), drawn `batch_size` at a time; chunks already in `folder` are reused.

    On CUDA the network is replayed from CUDA graphs (captured once, kept across the chunks) unless
    `cuda_graphs` is off. progress: a bar over the images, with their rate and the time left."""
    model = graphed(model, device, cuda_graphs)
    out = []
    with tqdm(total=n, desc="sampling", unit="img", dynamic_ncols=True, disable=not progress) as bar:
        for i, start in enumerate(range(0, n, batch_size)):
            b = min(batch_size, n - start)
            path = folder / f"{i:05d}.pt"
            if path.exists():
                x = torch.load(path, weights_only=True)["images"]
                if len(x) == b:
                    out.append(x)
                    bar.update(b)
                    continue
            x = float_to_uint8(draw_samples(model, schedule, b, sampler=sampler, steps=steps, batch_size=b,
                                            seed=chunk_seed(seed, i), device=device))
            save_checkpoint({"images": x}, path)  # atomic write
            out.append(x)
            bar.update(b)
    return torch.cat(out)


def evaluate(cfg: StudyConfig, tcfg: TrainConfig, run_dir: Path, n: int, seed: int, tag: str = "final",
             progress: bool = False) -> tuple[dict, dict]:
    """(metrics, info) for the EMA weights in run_dir: n samples with cfg.eval's sampler, FID against the reference
    (progress: a bar over the sampling)."""
    from dimstudy.metrics import compute_metrics  # here, not at the top: it loads torch-fidelity

    e = cfg.eval
    device = _eval_device(tcfg)
    ensure_reference(cfg, tcfg)
    model, _ = load_checkpoint(run_dir, ema=True, device=device)
    t0 = time.perf_counter()
    folder = run_dir / "eval" / f"{tag}-{e.sampler}{e.steps}-n{n}-seed{seed}"
    samples = draw_chunks(model, build_schedule(tcfg.schedule), n, folder, sampler=e.sampler, steps=e.steps,
                          batch_size=e.batch_size, seed=seed, device=device, cuda_graphs=e.cuda_graphs, progress=progress)
    backends = kernels_that_ran(model)
    if not backends.get("scan_backend") and not backends.get("attn_backend"):  # every chunk came from disk
        with torch.no_grad():
            model(torch.zeros(1, model.in_chans, model.img_size, model.img_size, device=device),
                  torch.ones(1, device=device), torch.zeros(1, dtype=torch.long, device=device) if model.num_classes else None)
        backends = kernels_that_ran(model)
    t1 = time.perf_counter()
    metrics = compute_metrics(samples, **reference_args(cfg, tcfg), kid=e.kid, device=device, batch_size=e.fid_batch_size)
    if e.fid_halves and n >= 4:  # FID's own sampling noise: the same reference, two disjoint halves of the samples
        half = n // 2
        for name, part in (("fid_half_a", samples[:half]), ("fid_half_b", samples[half:2 * half])):
            metrics[name] = compute_metrics(part, **reference_args(cfg, tcfg), kid=False, device=device,
                                            batch_size=e.fid_batch_size)["fid"]
    info = {"sampler": e.sampler, "sample_steps": e.steps, "sample_wall_s": t1 - t0,
            "cuda_graphs": e.cuda_graphs and device.type == "cuda",
            "fid_wall_s": time.perf_counter() - t1, "scan_backend": backends.get("scan_backend"),
            "attn_backend": backends.get("attn_backend"), "grid_images": samples[: e.grid] if e.grid else None}
    return metrics, info


def _save_grid(images: torch.Tensor, study_dir: Path, run_name: str) -> str:
    rel = Path("grids") / f"{run_name}.png"
    save_grid(uint8_to_float(images), Path(study_dir) / rel)
    return rel.as_posix()


__all__ = ["chunk_seed", "draw_chunks", "ensure_reference", "evaluate", "run_trial", "train_torchrun"]
