"""What every command shares: one-line errors instead of tracebacks, comma-separated list options.

Nothing here imports torch: `dimstudy --help` and every command's `--help` only build the option tables, and each
command imports what it needs when it runs.
"""

from __future__ import annotations

import functools
import sys

import typer
from typer.core import TyperGroup

from dimstudy.runtime import is_oom, one_line


class UserError(Exception):
    """Bad input or missing prerequisite: reported as one line, exit code 2."""


# Errors a user can fix, by class name (their modules import torch, so they are not imported to catch them):
# ValueError covers dimstudy's CheckpointError and ConversionError.
USER_ERRORS = ("UserError", "ValueError", "FileNotFoundError", "NotADirectoryError", "BackendUnavailableError",
               "DatasetUnavailableError", "FeatureExtractorUnavailableError")
SIZE_OPTIONS = ("resolution", "scale", "batch_size", "n", "num_samples", "num_reference", "model", "batch")


def friendly(fn):
    """Turn the errors a user can fix, and running out of memory, into `error: <one line>` on stderr, exit code 2.

    Out of memory names the sizes the command was asked for (its --resolution, --batch-size, ... options).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if is_oom(e):
                asked = ", ".join(f"--{k.replace('_', '-')} {kwargs[k]}" for k in SIZE_OPTIONS if kwargs.get(k) is not None)
                msg = (f"out of memory{' at ' + asked if asked else ''} ({one_line(e, 200, named=False)}); "
                       "try a smaller size or batch")
            elif any(c.__name__ in USER_ERRORS for c in type(e).__mro__):
                msg = one_line(e, named=False)
            else:
                raise
            typer.echo(f"error: {msg}", err=True)
            sys.stderr.flush()
            raise typer.Exit(2) from None

    return wrapper


class OneLineUsageErrors(TyperGroup):
    """Bad usage of a command (a non-numeric --steps, an unknown option, a missing argument) as one `error:` line,
    exit code 2, like every other error a user can fix; typer would print the usage and the message in a box.
    A command called with no arguments still shows its help (click signals that as a usage error too)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            # by class name: typer raises the errors of its own copy of click (typer._click), not click's
            names = {c.__name__ for c in type(e).__mro__}
            if "UsageError" not in names or "NoArgsIsHelpError" in names:
                raise
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            typer.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            sys.stderr.flush()
            raise typer.Exit(2) from None


def split_list(value: str | None) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']; None or '' -> []."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]
