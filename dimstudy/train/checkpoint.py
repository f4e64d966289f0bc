"""Checkpoints that are written atomically and hold everything an exact resume needs.

A checkpoint is one `torch.save`d dict (see CHECKPOINT_KEYS): the raw model's and the EMA's weights,
optimiser, LR scheduler and grad-scaler states, the step, every RNG state, the run config (a dict) and
the model's constructor arguments, so `load_checkpoint` rebuilds the network without the dataset.
Everything in it is a tensor or plain Python data, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dimstudy.train.config import TrainConfig

LATEST = "latest.pt"
CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "scaler", "step", "rng", "config", "model_args", "environment")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically: temp file in the same directory, fsync, os.replace.

    A crash at any point leaves either the old file or the new one under `path`, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(path: str | Path) -> Path:
    """A run directory means its latest.pt; a public DiM `<step>.ckpt/` directory its nnet_ema.pth."""
    path = Path(path)
    if path.is_dir():
        path = path / LATEST if (path / LATEST).exists() or not (path / "nnet_ema.pth").exists() else path / "nnet_ema.pth"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, tensors on the CPU.

    A public DiM checkpoint (its nnet_ema.pth / nnet.pth, or their `<step>.ckpt/` directory) is converted on the
    fly with `dimstudy.convert.public_checkpoint` (the preset of its width and depth), so every command that
    takes a checkpoint takes either format.
    """
    from dimstudy.convert import is_public_checkpoint, public_checkpoint

    if is_public_checkpoint(path):
        return public_checkpoint(path)
    return torch.load(checkpoint_path(path), map_location="cpu", weights_only=True)


def build_model(model_args: dict) -> nn.Module:
    """The one place a network is made from a run: `create_model(name, **kwargs)`, for training and loading."""
    from dimstudy.registry import create_model

    try:
        return create_model(model_args["name"], **model_args["kwargs"])
    except TypeError as e:  # an override the architecture has no flag for, e.g. long_skip on U-ViT
        raise ValueError(f"model {model_args['name']!r} rejects its options {model_args['kwargs']}: {e}") from None


# DiM before issue 13 (dimstudy 3955df0 and earlier) conditioned its head on the adaLN condition and shared the
# class token's table with adaLN-single. Its checkpoints lack `ada_label_emb.weight`; they are rebuilt with
# these options, so they load and run exactly as they were trained (with a warning), never silently refit.
PRE_ISSUE_13 = {"head_cond": "adaln", "ada_class_table": False}


def fit_model_args(model_args: dict, weights: dict, schedule: str | None = None, source: str = "checkpoint") -> dict:
    """`model_args`, plus PRE_ISSUE_13 when `weights` are a DiM/Mamba network saved before issue 13."""
    from dimstudy.registry import get_entry

    kwargs = model_args["kwargs"]
    old = ("ada_proj.1.weight" in weights and "ada_label_emb.weight" not in weights
           and not set(PRE_ISSUE_13) & set(kwargs) and get_entry(model_args["name"]).family in ("dim", "mamba"))
    if not old:
        return model_args
    msg = (f"{source} predates issue 13 (no separate adaLN class table): rebuilt as it was trained, with "
           f"{PRE_ISSUE_13}; new training uses the public DiM's conditioning")
    if schedule and schedule.startswith("ddpm"):
        msg += "; it was trained on DDPM labels 0..999 and now sees 1..1000 (one label later)"
    warnings.warn(msg, stacklevel=3)
    return {**model_args, "kwargs": {**kwargs, **PRE_ISSUE_13}}


def load_checkpoint(path: str | Path, *, ema: bool = True, device="cpu") -> tuple[nn.Module, TrainConfig]:
    """(model in eval mode, its TrainConfig) from a checkpoint file or run directory; EMA weights by default."""
    ckpt = read_checkpoint(path)
    weights = ckpt["ema"]["module"] if ema else ckpt["model"]
    model = build_model(fit_model_args(ckpt["model_args"], weights, ckpt["config"].get("schedule"), str(path)))
    model.load_state_dict(weights)
    return model.to(device).eval(), TrainConfig.from_dict(ckpt["config"])


def capture_rng() -> dict:
    """Every global RNG state: python `random`, numpy, torch CPU, and the current CUDA device's."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},  # tensor, not ndarray: weights_only loads it
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])

