"""Checkpoints that are written atomically and hold everything an exact resume needs.

A checkpoint is one `torch.save`d dict (see CHECKPOINT_KEYS): the raw model's and the EMA's weights,
optimiser, LR scheduler and grad-scaler states, the step, every RNG state, the run config (a dict) and
the model's constructor arguments, so `load_checkpoint` rebuilds the network without the dataset.
Everything in it is a tensor or plain Python data, so it loads with `weights_only=True`.

Every checkpoint a command reads goes through `load_file`, which turns a file that is empty, truncated, damaged
or not a checkpoint at all into one CheckpointError line naming the file and what it is. A run's writers leave
`.<name>.<pid>.tmp` files only when killed mid-write; `remove_stale_temps` deletes those of dead processes.
"""

from __future__ import annotations

import os
import random
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dimstudy.models.registry import create_model, get_entry
from dimstudy.train.config import TrainConfig

LATEST = "latest.pt"
CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "scaler", "step", "rng", "config", "model_args", "environment")


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint; the message is one line naming the file and what it is."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically: temp file in the same directory, fsync, os.replace.

    A crash at any point leaves either the old file or the new one under `path`, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
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


_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # save_checkpoint's `.<name>.<pid>.tmp`


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files that writers killed mid-write left in `directory` (their pid is gone); returns them.

    A live writer's temp file is left alone. The pid is this machine's: on a directory shared between machines a
    temp file of another host's live writer looks dead, but the writer's os.replace only needs the name it holds
    open, so it fails loudly rather than silently.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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


def _what(path: Path) -> str:
    """What a file that torch cannot load looks like, in a few words."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return (f"a damaged torch archive of {size} bytes" if zipfile.is_zipfile(path)
                else f"a torch archive cut off at {size} bytes (truncated)")
    if head.startswith(b"\x80"):
        return f"a pickle of {size} bytes that torch cannot read (truncated, damaged or not a tensor file)"
    try:
        head.decode("utf-8")
        return f"a text file of {size} bytes"
    except UnicodeDecodeError:
        return f"{size} bytes of unknown binary data"


def load_file(path: str | Path):
    """torch.load(path) on the CPU with weights_only=True; any file it cannot read becomes one CheckpointError line.

    A zip-format file (what torch.save writes) is memory-mapped: nothing but the pickle is read until a tensor is
    used, so telling what a large file holds costs little.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception:  # RuntimeError, EOFError, UnpicklingError, ... by the damage; their words say less than _what's
        raise CheckpointError(f"{path} is not a readable checkpoint: {_what(path)}") from None


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
    fly with `dimstudy.convert.public_checkpoint` (the preset of its width and depth), so every command that
    takes a checkpoint takes either format. Anything else raises CheckpointError (see load_file).
    """
    # here, not at the top: dimstudy.convert imports this module
    from dimstudy.convert import is_public_checkpoint, is_public_state_dict, public_checkpoint

    if Path(path).is_dir() and is_public_checkpoint(path):
        return public_checkpoint(path)
    file = checkpoint_path(path)
    obj = load_file(file)
    if is_public_state_dict(obj):
        return public_checkpoint(file)
    return _check_checkpoint(obj, file)


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

