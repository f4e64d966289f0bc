"""`python -m dimstudy.study worker|ablate|scan-study|sweep|report ...`: the study commands on their own.

Local workers are started this way (spawn_workers), so they need nothing from the top-level CLI.
"""

import typer

from dimstudy.cli import study

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
study.register(app)
app()
