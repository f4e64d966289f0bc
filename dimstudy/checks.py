"""The allowed range of every numeric option, in one table, checked before any data, weights or sampling is touched;
and the one form of an unknown name's error (`check_choice`), for the checks that run before a registry is used.

Commands call `check_ranges(steps=..., batch_size=...)` first thing, and `TrainConfig` checks its fields with it, so
a TOML preset and a flag are held to the same limits. A value outside its range is one ValueError line that names
the option as it is typed (`--ema-decay must be in [0, 1), got 1.5`). No torch here: `--help` stays light.
"""

from __future__ import annotations

import math
from pathlib import Path

# The values of the named options whose registry needs no torch: the CLI offers them as choices (typer lists them
# in --help and refuses others before a command runs) and the configs check against the same tuples. Registries
# that need torch (models, datasets, samplers, schedules, scan backends) are checked by name with check_choice
# before they are used, their error listing the registry, so that --help stays free of torch.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 autocast on CUDA, fp32 on CPU
SPLITS = ("train", "test")  # a dataset's part: FID references use the training split, as the papers do
PREPROCESS = ("pytorch-fid", "torch-fidelity")  # how FID resizes images for Inception (dimstudy.metrics.fid)

# option -> (lowest, highest, whether the highest itself is excluded); None: no bound on that side
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    # sizes and counts
    "steps": (1, None, False),  # optimiser steps, and sampler steps (0 would return the initial noise)
    "batch_size": (1, None, False),
    "fid_batch_size": (1, None, False),
    "n": (1, None, False),
    "resolution": (1, None, False),
    "scale": (1, None, False),
    "grad_accum": (1, None, False),
    "ckpt_every": (1, None, False),
    "log_every": (1, None, False),
    "num_samples": (2, None, False),  # FID needs a covariance: two samples at least
    "num_reference": (2, None, False),
    "warmup_steps": (0, None, False),
    "keep_every": (0, None, False),
    "sample_every": (0, None, False),
    "num_workers": (0, None, False),
    # rates and weights
    "lr": (0, None, False),
    "weight_decay": (0, None, False),
    "ema_decay": (0, 1, True),  # 1 never moves; above 1 the average diverges
    "p_uncond": (0, 1, True),
    "grad_clip": (0, None, False),
    "cfg_scale": (0, None, False),
    "ug_theta": (0, None, False),
    "ug_eta": (0, 1, False),
}


def _interval(lo, hi, hi_open) -> str:
    if hi is None:
        return f">= {lo:g}"
    return f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_ranges(**values) -> None:
    """ValueError for the first value outside its RANGES entry (None values are not set, and pass)."""
    for name, v in values.items():
        if v is None:
            continue
        lo, hi, hi_open = RANGES[name]
        bad = (isinstance(v, float) and math.isnan(v)) or (lo is not None and v < lo) \
            or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            raise ValueError(f"--{name.replace('_', '-')} must be {_interval(lo, hi, hi_open)}, got {v}")


def check_choice(what: str, value, choices) -> None:
    """ValueError `unknown <what> <value>; valid choices: ...` when `value` is not one of `choices` (a registry's
    keys, in the registry's order), the form every registry's own error has."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """`path` as a Path, when it is a directory or can become one (no file in the way, at it or above it)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{option} {path} must be a directory, but {p} is a file")
    return path
