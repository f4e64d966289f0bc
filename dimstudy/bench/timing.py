"""The one timing protocol every dimstudy measurement uses (STYLE.md point 6).

nanoGPT `bench.py` honesty, written once:

1. **Warm up.** `warmup` untimed calls first: they pay for CUDA context creation, cuBLAS heuristics,
   kernel loading, torch.compile and the allocator's first growth.
2. **Synchronise, then time every repeat alone.** On CUDA a pair of events brackets each call on the
   current stream and the host synchronises once at the end, so host overhead between calls is not
   hidden but no `synchronize()` sits inside the timed region; on CPU `time.perf_counter` brackets it.
3. **Median over repeats, with spread.** `Timing` keeps the median, the quartiles and min/max. The
   number of repeats is capped by a time budget (`budget_s`): a 1 s iteration gets `min_repeats`,
   a 1 ms one gets `repeats`, so a sweep spends its time where the noise is.
4. **One process per configuration.** `run_isolated` runs `module:function(**kwargs)` in a fresh Python
   (`python -m dimstudy.bench.timing --worker '<json>'`) that prints one JSON row, so GPU memory,
   allocator caches, compiled graphs and cuDNN/cuBLAS state never leak from one point into the next.
   A worker that raises, runs out of memory, dies or outlives its timeout still yields a row, with
   `status` "oom" | "error" | "timeout" and a one-line `error`, so a sweep always goes on. ("skipped"
   is the sweep's own: a larger point it did not run after a smaller one ran out of memory.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dimstudy.results import _jsonable
from dimstudy.runtime import is_oom, one_line

ROW_MARKER = "DIMSTUDY_ROW "  # the worker's answer line; anything else a library prints is ignored
STATUSES = ("ok", "oom", "error", "timeout", "skipped")
ERROR_CHARS = 300  # a row's `error` is cut to this length
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -- timing one callable in this process --------------------------------------------------------------
@dataclass
class Timing:
    """Milliseconds per call: the median and its spread over `repeats` individually timed calls."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def as_row(self) -> dict:
        """The flat columns every result table uses: ms (the median), ms_q1, ms_q3, ms_iqr, ms_min, ms_max."""
        return {
            "ms": self.median_ms, "ms_q1": self.q1_ms, "ms_q3": self.q3_ms, "ms_iqr": self.iqr_ms,
            "ms_min": self.min_ms, "ms_max": self.max_ms, "repeats": self.repeats, "warmup": self.warmup,
        }


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (numpy's default method)."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize_ms(samples: list[float], warmup: int) -> Timing:
    xs = sorted(samples)
    return Timing(_quantile(xs, 0.5), _quantile(xs, 0.25), _quantile(xs, 0.75), xs[0], xs[-1], len(xs), warmup)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device | str,
    warmup: int = 10,
    repeats: int = 30,
    min_repeats: int = 3,
    budget_s: float | None = 10.0,
) -> Timing:
    """Time `fn()` by the protocol above; returns milliseconds per call.

    `budget_s` caps the timed repeats at about that many seconds, judged from the last warm-up call
    (at least `min_repeats`, at most `repeats`); None times exactly `repeats` calls.
    """
    device = torch.device(device)
    est_ms = None
    for _ in range(warmup):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        est_ms = (time.perf_counter() - t0) * 1e3
    if budget_s is not None and est_ms:
        repeats = max(min_repeats, min(repeats, int(budget_s * 1e3 / max(est_ms, 1e-3))))
    repeats = max(1, repeats)

    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        synchronize(device)
        for s, e in zip(starts, ends, strict=True):
            s.record()
            fn()
            e.record()
        synchronize(device)  # one sync at the end: events hold the device-side times
        samples = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    else:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return summarize_ms(samples, warmup)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset, in GiB; None off CUDA (not tracked there)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


# -- one configuration per process --------------------------------------------------------------------
def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])  # the folder that holds `dimstudy/`


def run_isolated(target: str, kwargs: dict, timeout_s: float | None = 600.0) -> dict:
    """Run `target` ("package.module:function") with `kwargs` in a fresh Python; returns its row.

    The row always has `status` and `worker_pid`. Failures become rows, never exceptions:
    - the function raised: the worker itself reports "oom" (CUDA out of memory) or "error";
    - the worker died without a row (a segfault, the host OOM killer, a CUDA abort): "oom" when its
      stderr says so or it was SIGKILLed, else "error" with the last stderr line;
    - it outlived `timeout_s`: its whole process group is killed and the row says "timeout".
    Ctrl-C in the caller kills the worker's process group and propagates.
    """
    payload = json.dumps({"target": target, "kwargs": kwargs})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_package_root(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # A new session: Ctrl-C at the terminal reaches only the parent, which then ends the worker's whole
    # group (torch.compile's helper processes included) - and only that group.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dimstudy.bench.timing", "--worker", payload],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return {"status": "timeout", "error": f"no result after {timeout_s:.0f} s (worker killed)", "worker_pid": proc.pid}
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    for line in reversed(out.splitlines()):
        if line.startswith(ROW_MARKER):
            row = json.loads(line[len(ROW_MARKER):])
            row.setdefault("worker_pid", proc.pid)
            return row
    # No row: the worker died before it could answer.
    rc = proc.returncode
    tail = [ln for ln in err.splitlines() if ln.strip()]
    died_oom = rc == -signal.SIGKILL or any("out of memory" in ln.lower() for ln in tail[-20:])
    why = tail[-1] if tail else f"worker exited with code {rc} and no output"
    return {"status": "oom" if died_oom else "error", "error": one_line(f"worker exit {rc}: {why}", ERROR_CHARS), "worker_pid": proc.pid}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created for this worker, nothing else
    except (ProcessLookupError, PermissionError):
        pass


def _resolve(target: str) -> Callable[..., dict]:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main(payload: str) -> int:
    """Worker side of `run_isolated`: call the target, print one marked JSON row, exit 0.

    Exceptions become rows here, where the exception type is still known (torch.cuda.OutOfMemoryError).
    """
    spec = json.loads(payload)
    try:
        row = dict(_resolve(spec["target"])(**spec["kwargs"]))
        row.setdefault("status", "ok")
    except Exception as e:  # noqa: BLE001  (every failure must become a row)
        traceback.print_exc(file=sys.stderr)
        row = {"status": "oom" if is_oom(e) else "error", "error": one_line(e, ERROR_CHARS)}
    row["worker_pid"] = os.getpid()

    sys.stdout.write(ROW_MARKER + json.dumps(_jsonable(row)) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    sys.exit("usage: python -m dimstudy.bench.timing --worker '{\"target\": \"module:function\", \"kwargs\": {...}}'")
