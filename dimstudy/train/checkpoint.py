"""Checkpoints that hold everything an exact resume needs, and the network they rebuild.

A checkpoint is one `torch.save`d dict (see CHECKPOINT_KEYS): the raw model's and the EMA's weights,
optimiser, LR scheduler and grad-scaler states, the step, every RNG state, the run config (a dict) and
the model's constructor arguments, so `load_checkpoint` rebuilds the network without the dataset.
`adapt_state_dict` fits the weights of the same network at another resolution (weak-to-strong, `init_from`).
Everything in it is a tensor or plain Python data, so it loads with `weights_only=True`.

The files themselves (atomic writes, `load_file`'s one-line errors, stale temp files) are
`dimstudy.train.files`'; a public DiM checkpoint is read through `dimstudy.train.convert`.
"""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dimstudy.models.layers import resize_pos_embed
from dimstudy.models.registry import create_model, get_entry
from dimstudy.train.config import TrainConfig
from dimstudy.train.convert import is_public_checkpoint, is_public_state_dict, public_checkpoint
from dimstudy.train.files import LATEST, CheckpointError, checkpoint_path, load_file

CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "scaler", "step", "rng", "config", "model_args", "environment")


REQUIRED_KEYS = ("model", "ema", "config", "model_args")  # what loading a network needs of CHECKPOINT_KEYS


def _check_checkpoint(obj, path: Path) -> dict:
    """`obj` if it is a dimstudy checkpoint dict, else a CheckpointError saying what it is instead."""
    if isinstance(obj, dict) and all(k in obj for k in REQUIRED_KEYS):
        return obj
    convert = f"dimstudy convert --from dim-public {path} --model NAME --out NAME.pt"
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} is a plain state dict ({len(obj)} tensors) without the run's config: a public "
                              f"DiM file converts with `{convert}`; for a dimstudy run pass its latest.pt or run directory")
    if isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:6])) + (", ..." if len(obj) > 6 else "")
        raise CheckpointError(f"{path} is not a dimstudy checkpoint: a dict with keys {keys or '(none)'}, lacking "
                              f"{', '.join(k for k in REQUIRED_KEYS if k not in obj)}")
    raise CheckpointError(f"{path} is not a dimstudy checkpoint: it holds a {type(obj).__name__}")


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, tensors on the CPU (memory-mapped).

    A public DiM checkpoint (its nnet_ema.pth / nnet.pth, or their `<step>.ckpt/` directory) is converted on the
    fly with `dimstudy.train.convert.public_checkpoint` (the preset of its width and depth), so every command that
    takes a checkpoint takes either format. Anything else raises CheckpointError (see load_file).
    """
    if Path(path).is_dir() and is_public_checkpoint(path):
        return public_checkpoint(path)
    file = checkpoint_path(path)
    return _as_checkpoint(load_file(file), file)


def _as_checkpoint(obj, file: Path) -> dict:
    """What `file` held (`obj`, already loaded) as a checkpoint dict: a public DiM state dict converted."""
    if is_public_state_dict(obj):
        return public_checkpoint(file)
    return _check_checkpoint(obj, file)


INIT_KINDS = ("a state dict (what `dimstudy finetune` writes as init.pt), a dimstudy checkpoint or run directory, "
              "or a public DiM checkpoint")  # what `init_from` may name


def read_init_weights(path: str | Path) -> dict:
    """The weights a run's `init_from` names, tensors on the CPU (one of INIT_KINDS).

    A state dict is taken as it is. A checkpoint gives its EMA weights, not the raw ones: they are what a run
    samples and is scored by, and what the paper's weak-to-strong fine-tune starts from (`finetune --ema`,
    `load_checkpoint`); the new run's EMA then starts equal to them. Anything else is one CheckpointError line.
    """
    try:
        if Path(path).is_dir():
            return read_checkpoint(path)["ema"]["module"]
        obj = load_file(path)  # read once, whichever kind it is
        if (isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())
                and not is_public_state_dict(obj)):
            return obj
        return _as_checkpoint(obj, Path(path))["ema"]["module"]
    except (CheckpointError, FileNotFoundError) as e:
        raise type(e)(f"init_from: {e}; it takes {INIT_KINDS}") from None


def numbered_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's kept `step_<N>.pt` checkpoints, newest first."""
    return sorted(Path(run_dir).glob("step_*.pt"), reverse=True)


def read_resumable(run_dir: str | Path, warn=warnings.warn) -> tuple[dict, Path]:
    """(checkpoint, its path) to resume a run from: its latest.pt, else the newest readable numbered checkpoint.

    When latest.pt cannot be read, `warn` says so and which checkpoint is used instead; with none readable, the
    CheckpointError of latest.pt is raised.
    """
    latest = Path(run_dir) / LATEST
    try:
        return read_checkpoint(latest), latest
    except CheckpointError as e:
        first = e
    for p in numbered_checkpoints(run_dir):
        try:
            ckpt = read_checkpoint(p)
        except CheckpointError:
            continue
        warn(f"{first}; resuming from {p.name} (step {int(ckpt['step'])}) instead")
        return ckpt, p
    raise CheckpointError(f"{first}, and no readable numbered checkpoint (step_*.pt) to resume from instead")


def build_model(model_args: dict) -> nn.Module:
    """The one place a network is made from a run: `create_model(name, **kwargs)`, for training and loading."""
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


# -- weights of the same network at another resolution (weak-to-strong, Sec. 3.3; `init_from`) ------------
POS_KEY = "pos_embed"  # the one resolution-dependent tensor of every model here: (1, extra + gh*gw, D)
_MAX_KEYS = 4  # keys named per kind of mismatch, so the error stays one readable line


class CheckpointMismatchError(ValueError):
    """Weights that cannot be made to fit a network; the message names the keys."""


def _resized_pos(w: torch.Tensor, want: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
    """A checkpoint's (1, extra + s*s, D) positional embedding resized to `want`'s grid, or None if it cannot be.

    The extra-token count is the target's (t, c for DiM; t and maybe c for U-ViT); the source grid is square.
    """
    extra = want.shape[1] - grid[0] * grid[1]
    n_src = w.shape[1] - extra
    side = math.isqrt(max(n_src, 0))
    if w.dim() != 3 or w.shape[-1] != want.shape[-1] or n_src < 1 or side * side != n_src:
        return None
    return resize_pos_embed(w, extra, (side, side), grid)


def adapt_state_dict(state: dict, model: nn.Module, source: str = "checkpoint") -> dict:
    """`state` (weights of the same network built at another resolution) made to fit `model` (Sec. 3.3).

    The positional embedding is resized bilinearly over its grid part with the extra rows kept; every other
    tensor (the pad tokens and separators included) does not depend on the resolution and is reused as is.
    Anything else that differs (width, patch size, depth, components) raises CheckpointMismatchError.
    """
    target = model.state_dict()
    out, shape_bad = {}, []
    for key, want in target.items():
        if key not in state:
            continue
        w = state[key]
        if key == POS_KEY and w.shape != want.shape:
            w = _resized_pos(w, want, tuple(model.grid))
            w = state[key] if w is None else w
        if w.shape != want.shape:
            shape_bad.append(f"{key} {tuple(w.shape)} vs {tuple(want.shape)}")
        out[key] = w
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    parts = [
        f"{what}: {', '.join(keys[:_MAX_KEYS])}" + (f" (+{len(keys) - _MAX_KEYS} more)" if len(keys) > _MAX_KEYS else "")
        for what, keys in (("shape (checkpoint vs model)", shape_bad), ("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    if parts:
        name = getattr(model, "registry_name", type(model).__name__)
        raise CheckpointMismatchError(f"{source} does not fit {name} at img_size {getattr(model, 'img_size', '?')}: "
                                      + "; ".join(parts))
    return out


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

