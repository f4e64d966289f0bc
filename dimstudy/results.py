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


def environment(device: torch.device | str | None = None) -> dict:
    """Where a row came from: device, GPU name, versions, git SHA, timestamp."""
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
    """Append one row to `<root>/<table>.jsonl` under a lock; returns the file."""
    path = Path(root or DEFAULT_ROOT) / f"{table}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_jsonable(row), sort_keys=False) + "\n"
    with FileLock(str(path) + ".lock"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    return path


def read_table(table: str, root: str | Path | None = None):
    """All rows of a table as a DataFrame (empty if none). Nested dicts become dotted columns."""
    import pandas as pd

    path = Path(root or DEFAULT_ROOT) / f"{table}.jsonl"
    if not path.exists():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.json_normalize(rows)
