"""Checkpoint files: written atomically, read back with one-line errors.

`save_checkpoint` writes through a temp file, fsync and os.replace, so a crash leaves the old file or the new
one, never a torn one. Every checkpoint a command reads goes through `load_file`, which turns a file that is
empty, truncated, damaged or not a checkpoint at all into one CheckpointError line naming the file and what it is.
A run's writers leave `.<name>.<pid>.tmp` files only when killed mid-write; `remove_stale_temps` deletes those of
dead processes. What a checkpoint holds, and the network it rebuilds, is `dimstudy.train.checkpoint`'s business.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch

LATEST = "latest.pt"


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
