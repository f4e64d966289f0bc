"""What every command shares: one-line errors instead of tracebacks, comma-separated list options."""

from __future__ import annotations

import functools
import sys

import typer

from dimstudy.data.datasets import DatasetUnavailableError
from dimstudy.ops.selective_scan import BackendUnavailableError


class UserError(Exception):
    """Bad input or missing prerequisite: reported as one line, exit code 2."""


def _feature_extractor_error() -> tuple[type[Exception], ...]:
    try:  # metrics needs torch-fidelity; without it there is no such error to catch
        from dimstudy.metrics.fid import FeatureExtractorUnavailableError
    except ImportError:
        return ()
    return (FeatureExtractorUnavailableError,)


USER_ERRORS = (UserError, ValueError, BackendUnavailableError, FileNotFoundError, DatasetUnavailableError,
               *_feature_extractor_error())


def friendly(fn):
    """Turn the errors a user can fix into `error: <one line>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"error: {msg}", err=True)
            sys.stderr.flush()
            raise typer.Exit(2) from None

    return wrapper


def split_list(value: str | None) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']; None or '' -> []."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]
