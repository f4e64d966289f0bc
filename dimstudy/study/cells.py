"""The cells of a grid study, (variant, seed), and which of them the committed rows already hold.

A study grows over GPU slots on fresh machines: the Optuna database is local and short-lived, the rows in
`<results>/<study>/runs.jsonl` are what is committed. So a cell counts as done when an `ok` row of that study
has the same *resolved* configuration: the cell's TrainConfig (the preset's, with the variant's flags and the
seed) and EvalConfig, less the settings that change no result (`TRAIN_MAY_CHANGE`, `EVAL_MAY_CHANGE`: where
files live, the device, worker counts, ...). Both sides go through the dataclasses, so a row written before a
field existed compares with that field's default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from dimstudy.study.config import EVAL_MAY_CHANGE, TRAIN_MAY_CHANGE, EvalConfig, StudyConfig, identity_diff
from dimstudy.study.grid import Variant
from dimstudy.train.config import TrainConfig

VARIANT_FLAGS = ("multi_scan", "long_skip", "padding_tokens", "local_conv", "scan_patterns")  # set by the grid


def cell_train_config(cfg: StudyConfig, model_kwargs: dict, seed: int, run_dir: str | Path,
                      base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig a trial trains: the study's (or `base`), its variant's flags merged in, its seed."""
    base = base or cfg.train
    return TrainConfig.from_dict({**base.to_dict(), "seed": seed, "out_dir": str(run_dir), "results_dir": None,
                                  "model_kwargs": {**base.model_kwargs, **model_kwargs}})


def _settings(train: dict, eval_: dict, drop_variant: bool = False) -> dict | None:
    """The result-defining settings of a (train, eval) pair as plain data; None when they do not load (a row
    of a newer dimstudy with fields this one lacks)."""
    try:
        t = TrainConfig.from_dict(train).to_dict()
        e = dataclasses.asdict(EvalConfig(**eval_))
    except (TypeError, ValueError):
        return None
    t = {k: v for k, v in t.items() if k not in TRAIN_MAY_CHANGE}
    if drop_variant:  # compare a row with the study: the grid sets these per cell
        t.pop("seed")
        t["model_kwargs"] = {k: v for k, v in t["model_kwargs"].items() if k not in VARIANT_FLAGS}
    return {"train": t, "eval": {k: v for k, v in e.items() if k not in EVAL_MAY_CHANGE}}


def cell_identity(train: dict, eval_: dict) -> str | None:
    """One string per resolved configuration: equal strings, the same result."""
    s = _settings(train, eval_)
    return None if s is None else json.dumps(s, sort_keys=True)


def _row_config(row: dict) -> tuple[dict, dict] | None:
    """(train, eval) dicts of a row, read nested (as written) or from the dotted columns of a DataFrame row."""
    if isinstance(row.get("config"), dict):
        return row["config"].get("train", {}), row["config"].get("eval", {})
    train, eval_ = {}, {}
    for k, v in row.items():
        if isinstance(v, float) and math.isnan(v):
            continue
        for prefix, into in (("config.train.", train), ("config.eval.", eval_)):
            if k.startswith(prefix):
                _set_dotted(into, k[len(prefix):], v)
    return (train, eval_) if train else None


def _set_dotted(d: dict, key: str, value) -> None:
    head, _, rest = key.partition(".")
    if rest and head == "model_kwargs":
        d.setdefault(head, {})[rest] = value
    else:
        d[key] = value


def read_rows(study_dir: str | Path) -> list[dict]:
    """The study's rows as written (nested dicts), oldest first; a torn last line is skipped."""
    path = Path(study_dir) / "runs.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def finished_rows(cfg: StudyConfig) -> dict[str, dict]:
    """identity -> the latest `ok` grid row of the study with that resolved configuration."""
    out = {}
    for row in read_rows(cfg.study_dir):
        if row.get("status") != "ok" or row.get("kind", "grid") != "grid":
            continue
        conf = _row_config(row)
        ident = cell_identity(*conf) if conf else None
        if ident is not None:
            out[ident] = row
    return out


def cells(cfg: StudyConfig, variants: list[Variant], seeds: list[int]) -> list[dict]:
    """One dict per (variant, seed): variant, key, seed, identity, and its row when one is committed."""
    done = finished_rows(cfg)
    out = []
    for v in variants:
        for seed in seeds:
            tcfg = cell_train_config(cfg, v.model_kwargs, seed, "")
            ident = cell_identity(tcfg.to_dict(), dataclasses.asdict(cfg.eval))
            out.append({"variant": v.label, "variant_key": v.key, "seed": seed, "key": f"{v.key}/seed{seed}",
                        "identity": ident, "row": done.get(ident)})
    return out


def check_rows_match(cfg: StudyConfig) -> None:
    """Refuse to add cells to a results directory whose rows were made with other result-defining settings:
    the tables would mix them. (Seeds and the variant flags may differ: they are the grid.)"""
    mine = _settings(cfg.train.to_dict(), dataclasses.asdict(cfg.eval), drop_variant=True)
    for row in read_rows(cfg.study_dir):
        if row.get("kind", "grid") != "grid" or row.get("status") != "ok" or not (conf := _row_config(row)):
            continue
        theirs = _settings(*conf, drop_variant=True)
        if theirs is None:
            continue
        diff = identity_diff(theirs, mine)
        if diff:
            raise ValueError(f"{Path(cfg.study_dir) / 'runs.jsonl'} holds rows made with other settings "
                             f"({'; '.join(diff[:3])}); use the same settings, or another --study name")


# -- how long the rest takes -------------------------------------------------------------------------------------
def machine_shares(rows: pd.DataFrame) -> pd.Series:
    """Each row's share of its machine, in seconds: its wall time, with every moment divided among the trials
    that ran on the same host at that moment (trials side by side on one GPU split it). Needs timestamp (end),
    wall_s and host; rows lacking them get their wall time."""
    if rows.empty or not {"timestamp", "wall_s"} <= set(rows):
        return pd.Series(dtype=float)
    end = pd.to_datetime(rows["timestamp"], utc=True, errors="coerce").map(lambda t: t.timestamp() if pd.notna(t) else math.nan)
    start = end - rows["wall_s"].astype(float)
    host = rows["host"] if "host" in rows else pd.Series("", index=rows.index)
    share = rows["wall_s"].astype(float).copy()
    for h in host.unique():
        idx = [i for i in rows.index[host == h] if math.isfinite(start[i]) and math.isfinite(end[i])]
        points = sorted({t for i in idx for t in (start[i], end[i])})
        for i in idx:
            total = 0.0
            for a, b in zip(points, points[1:]):
                if a >= start[i] and b <= end[i] and b > a:
                    n = sum(1 for j in idx if start[j] <= a and end[j] >= b)
                    total += (b - a) / n
            share[i] = total
    return share


def status_table(cfg: StudyConfig, variants: list[Variant], seeds: list[int]) -> tuple[pd.DataFrame, dict]:
    """(variant x seed table of 'FID 12.3' / '—', summary): done and remaining cells, and the estimated
    GPU-minutes to finish: per remaining cell, the mean machine share of its variant's finished rows (else of
    all the study's finished rows)."""
    cs = cells(cfg, variants, seeds)
    table = pd.DataFrame({"variant": list(dict.fromkeys(c["variant"] for c in cs))}).set_index("variant")
    for c in cs:
        table.loc[c["variant"], f"seed {c['seed']}"] = (f"FID {c['row']['fid']:.2f}" if c["row"] and c["row"].get("fid") is not None
                                                        else "done" if c["row"] else "—")
    done_rows = pd.DataFrame([c["row"] for c in cs if c["row"]])
    shares = machine_shares(done_rows)
    per_variant = shares.groupby(done_rows["variant_key"]).mean() if not shares.empty else pd.Series(dtype=float)
    overall = float(shares.mean()) if not shares.empty else math.nan
    remaining = [c for c in cs if not c["row"]]
    est = sum(float(per_variant.get(c["variant_key"], overall)) for c in remaining) / 60 if remaining else 0.0
    summary = {"done": len(cs) - len(remaining), "cells": len(cs),
               "remaining": [f"{c['variant']} seed {c['seed']}" for c in remaining],
               "minutes_left": est, "minutes_per_trial": overall / 60 if not math.isnan(overall) else math.nan}
    return table.reset_index(), summary


__all__ = ["cell_identity", "cell_train_config", "cells", "check_rows_match", "finished_rows", "machine_shares",
           "read_rows", "status_table"]
