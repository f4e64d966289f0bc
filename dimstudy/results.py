"""The results store: append-only, flat, self-describing JSON-lines tables.

One file per table (`<root>/<table>.jsonl`, e.g. `runs`, `speed`), one row per run. Every row carries
the environment it ran in (`environment()`), so a row read alone says what produced it. Writers take a
file lock and append one line, so concurrent workers lose nothing; readers get a pandas DataFrame.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import subprocess
from pathlib import Path

import torch
from filelock import FileLock

DEFAULT_ROOT = Path(os.environ.get("DIMSTUDY_RESULTS", "results"))


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    """The commit the code came from, '-dirty' when tracked files differ from it.

    A copy of the tree without .git (a remote GPU machine, a wheel) can't tell; there the launcher passes
    it in DIMSTUDY_GIT_SHA. Without either, 'unknown'.
    """
    if os.environ.get("DIMSTUDY_GIT_SHA"):
        return os.environ["DIMSTUDY_GIT_SHA"]
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return (sha + ("-dirty" if dirty.stdout.strip() else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tuning_env() -> dict[str, str]:
    """The kernel tunables set in the environment (DIMSTUDY_SCAN_*, read by dimstudy.ops.triton_scan), by name."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("DIMSTUDY_SCAN_") and v}


def environment(device: torch.device | str | None = None) -> dict:
    """Where a row came from: device, GPU name, versions, git SHA, timestamp; and `tuning_env`, only when a
    kernel tunable was overridden, so that such a row cannot pass for one made with the defaults."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {
        "device": device.type,
        "gpu": gpu,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **({"tuning_env": tuned} if (tuned := tuning_env()) else {}),
    }


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return str(v)


def append_row(table: str, row: dict, root: str | Path | None = None) -> Path:
    """Append one row to `<root>/<table>.jsonl` under a lock; returns the file.

    A row is whole or absent: the line goes out in one write, and a line torn by a writer killed mid-write
    (no newline at the end of the file) is cut off before the next row is appended (readers skip it too).
    """
    path = Path(root or DEFAULT_ROOT) / f"{table}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(_jsonable(row), sort_keys=False) + "\n").encode("utf-8")
    with FileLock(str(path) + ".lock"):
        with open(path, "a+b") as f:
            _cut_torn_tail(f)
            view = memoryview(line)
            while view:  # os.write may write less than asked (a full disk, a signal): finish the line
                view = view[os.write(f.fileno(), view):]
            os.fsync(f.fileno())
    return path


def _cut_torn_tail(f) -> None:
    """Truncate an append-mode file back to its last newline when it does not end with one."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    start = max(0, size - 2**20)  # a torn line is one row: the last MiB holds its start
    f.seek(start)
    nl = f.read().rfind(b"\n")
    if nl < 0 and start > 0:  # (a row longer than that: look through the whole file)
        start = 0
        f.seek(0)
        nl = f.read().rfind(b"\n")
    keep = start + nl + 1 if nl >= 0 else 0
    f.truncate(keep)


def read_table(table: str, root: str | Path | None = None):
    """All rows of a table as a DataFrame (empty if none). Nested dicts become dotted columns."""
    import pandas as pd

    path = Path(root or DEFAULT_ROOT) / f"{table}.jsonl"
    if not path.exists():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a killed writer: not a row
            continue
    return pd.json_normalize(rows)
