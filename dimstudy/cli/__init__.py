"""The `dimstudy` command line: one module per command, composed here."""

from __future__ import annotations

import typer

from dimstudy.cli import convert as _convert
from dimstudy.cli import data as _data
from dimstudy.cli import fid as _fid
from dimstudy.cli import models as _models
from dimstudy.cli import resolution as _resolution
from dimstudy.cli import sample as _sample
from dimstudy.cli import speed as _speed
from dimstudy.cli import study as _study
from dimstudy.cli import train as _train
from dimstudy.cli.common import OneLineUsageErrors

app = typer.Typer(
    name="dimstudy",
    cls=OneLineUsageErrors,
    help=(
        "Take Diffusion Mamba (DiM) apart and measure it against U-ViT and a plain Mamba baseline.\n\n"
        "Examples:\n\n"
        "  dimstudy models                      # every registered model: params, GFLOPs, tokens\n\n"
        "  dimstudy models --pattern 'dim*' --json\n\n"
        "  dimstudy components                  # DiM's four designs and the CLI names that toggle them"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_models.register(app)
_fid.register(app)
_train.register(app)
_sample.register(app)
_speed.register(app)
_resolution.register(app)
_study.register(app)
_data.register(app)
_convert.register(app)


def main() -> None:
    app()
