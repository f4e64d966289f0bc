"""What every layer needs at run time: the device a run asked for, and an error as one line.

Nothing here imports torch at module level: `dimstudy.cli.common` formats its errors with `one_line`, and
`dimstudy --help` must stay torch-free (see tests/test_cli_errors.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when there is one, else cpu; a device this machine lacks is one ValueError line."""
    import torch  # here, not at the top: see the module docstring

    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {str(name)!r}; valid choices: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"--device {name} asked for, but {why}; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return dev


def one_line(exc: BaseException | str, limit: int | None = None, *, named: bool = True) -> str:
    """An error as one line: 'ValueError: <its first non-blank line>', cut at `limit` characters.

    named=False leaves out the class name (the CLI's `error: <line>`); an error without a message is then its
    class name.
    """
    text = exc if isinstance(exc, str) else str(exc)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not isinstance(exc, str):
        line = f"{type(exc).__name__}: {line}".rstrip() if named else line or type(exc).__name__
    return line[:limit]


def is_oom(exc: BaseException) -> bool:
    """Out of memory, whichever way it surfaces: torch's typed CUDA error (matched by name, so torch need not be
    imported), or a RuntimeError from a CUDA kernel or the CPU allocator."""
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "cudaerrormemoryallocation", "can't allocate memory"))
