"""The `runs` table: one self-describing row per trial, appended to <results_dir>/<study>/runs.jsonl.

`ROW_SCHEMA` says what every column is; `dimstudy report` and the notebook read only these. A row that
failed or was pruned is still written (status says so), so the table is the whole history of the study.
The loss curve of each run is copied, binned to at most `CURVE_POINTS` points, beside the table
(curves/<run>.csv), because run directories (checkpoints) live under runs/ and are not kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dimstudy.models.components import COMPONENTS
from dimstudy.results import append_row, read_table

TABLE = "runs"
CURVE_POINTS = 200

ROW_SCHEMA: dict[str, str] = {
    # what ran
    "study": "study name (= results/<study>/)",
    "kind": "grid (ablate / scan-study) or sweep",
    "preset": "the preset the study was made from",
    "trial": "Optuna trial number",
    "key": "the trial's identity: network and seed (grid) or sweep/<run>",
    "variant": "the label the grid gave it: full, -PT, 12, ...",
    "variant_key": "the network's canonical name, e.g. scan1234-lsc1-pt1-lfe1",
    "seed": "seed of init, data order, noise and sampling",
    "status": "ok | failed | pruned",
    "error": "the exception, when status is failed",
    "retries": "how often the trial was re-queued after its worker died",
    # the network
    "model": "registry name",
    **{c.name: f"{c.abbrev} on (Tab. 4)" for c in COMPONENTS.values()},
    "scan_patterns": "the scan patterns the blocks cycle through ('1' when multi_scan is off)",
    "params_m": "parameters (millions)",
    "gflops": "GMACs of one forward at batch 1 at the training resolution (the paper's 'GFLOPs')",
    "blocks": "blocks (depth)", "width": "hidden width",
    # training
    "dataset": "training data", "resolution": "image side (px)", "steps": "optimiser steps",
    "batch_size": "images per step", "lr": "AdamW lr", "ema_decay": "EMA decay", "warmup_steps": "LR warm-up",
    "ema_warmup": "EMA decay warm-up min(decay, (1+t)/(10+t)) on",
    "ema_init_share": "weight the final EMA still gives the initial parameters (above ~1%: samples are noise)",
    "precision": "autocast dtype that ran", "world_size": "training processes (GPUs)",
    "final_loss": "mean training loss over the last 10% of steps",
    "train_wall_s": "training wall time of the last (resumed) segment", "steps_per_s": "training throughput",
    "images_per_s": "training throughput", "resumed_from": "step the last training segment started at",
    "params": "sweep: the trial's sampled values (columns params.<name>)",
    # evaluation
    "fid": "FID of num_samples EMA samples against num_reference reference images",
    "fid_half_a": "FID of the first half of the samples (same reference)",
    "fid_half_b": "FID of the second half: |a - b| / 2 estimates FID's own sampling noise at num_samples",
    "kid_mean": "KID", "kid_std": "KID spread over subsets",
    "num_samples": "samples scored", "num_reference": "reference images", "reference": "reference set",
    "feature_extractor": "Inception source", "sampler": "sampler", "sample_steps": "sampler steps",
    "sample_wall_s": "sampling wall time", "fid_wall_s": "FID wall time",
    "cuda_graphs": "the network ran from CUDA graphs while sampling",
    # where and how
    "wall_s": "the whole trial (this attempt)",
    "scan_backend": "selective-scan kernel that ran", "attn_backend": "attention kernel that ran (U-ViT)",
    "device": "cpu | cuda", "gpu": "GPU name", "cpu": "CPU", "torch": "torch version", "cuda": "CUDA version",
    "python": "Python version", "git_sha": "commit of dimstudy (-dirty: with local changes)",
    "timestamp": "UTC time the row was written", "host": "machine", "worker": "worker name",
    "run_dir": "checkpoints and full loss log (not kept in results/)",
    "loss_curve": "binned loss curve, relative to the study's results directory",
    "grid": "sample grid PNG, relative to the study's results directory",
    "config": "the full TrainConfig and EvalConfig (columns config.train.* and config.eval.*)",
}


def write_row(row: dict, study_dir: str | Path) -> Path:
    """Append the row (columns in ROW_SCHEMA order, unknown ones after) to <study_dir>/runs.jsonl."""
    ordered = {k: row[k] for k in ROW_SCHEMA if k in row} | {k: v for k, v in row.items() if k not in ROW_SCHEMA}
    return append_row(TABLE, ordered, study_dir)


def read_runs(results_dir: str | Path = "results", study: str | None = None) -> pd.DataFrame:
    """Every study's rows under results_dir (or one study's), as one DataFrame; empty if none."""
    root = Path(results_dir)
    dirs = [root / study] if study else sorted(p.parent for p in root.glob(f"*/{TABLE}.jsonl"))
    frames = [read_table(TABLE, d) for d in dirs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_loss_log(path: str | Path) -> pd.DataFrame:
    """A trainer loss log (JSON lines: step, loss, lr) as a DataFrame."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash
            continue
    return pd.DataFrame(rows, columns=["step", "loss", "lr"])


def final_loss(log: pd.DataFrame, fraction: float = 0.1) -> float:
    """Mean loss over the last `fraction` of the steps (single steps are too noisy to compare runs)."""
    if log.empty:
        return math.nan
    k = max(1, int(len(log) * fraction))
    return float(log["loss"].iloc[-k:].mean())


def bin_curve(log: pd.DataFrame, points: int = CURVE_POINTS) -> pd.DataFrame:
    """At most `points` rows: the mean step and loss of consecutive equal bins."""
    if len(log) <= points:
        return log[["step", "loss"]].reset_index(drop=True)
    bins = pd.Series(range(len(log))) * points // len(log)
    return log[["step", "loss"]].reset_index(drop=True).groupby(bins.values).mean()


def write_curve(log: pd.DataFrame, study_dir: str | Path, run_name: str) -> str:
    """Save the binned curve to <study_dir>/curves/<run>.csv; returns the path relative to study_dir."""
    rel = Path("curves") / f"{run_name}.csv"
    path = Path(study_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    bin_curve(log).to_csv(path, index=False, float_format="%.6g")
    return rel.as_posix()


def sync_rows(study, study_dir: str | Path) -> int:
    """Append the rows (and loss curves) that finished trials stored in the Optuna storage but this machine's
    <study_dir>/runs.jsonl lacks: with workers on several machines, each one's rows reach every report.
    Returns how many rows were added."""
    from optuna.trial import TrialState

    have = read_table(TABLE, study_dir)
    seen = set(zip(have["key"], have["timestamp"], strict=True)) if {"key", "timestamp"} <= set(have) else set()
    added = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row = t.user_attrs.get("row")
        if not row or (row.get("key"), row.get("timestamp")) in seen:
            continue
        curve = t.user_attrs.get("curve")
        if curve and row.get("loss_curve") and not (Path(study_dir) / row["loss_curve"]).exists():
            write_curve(pd.DataFrame(curve), study_dir, Path(row["loss_curve"]).stem)
        write_row(row, study_dir)
        added += 1
    return added
