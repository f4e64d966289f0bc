"""`dimstudy photos`: where the `photos` dataset's source photographs are, their licences, export and pre-cut."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dimstudy.cli.common import friendly


def register(app: typer.Typer) -> None:
    @app.command("photos")
    @friendly
    def photos_cmd(
        export: Annotated[Path | None, typer.Option(help="Copy the seven source photographs and their licences "
                                                    "here (2.4 MB), for a machine without scikit-image.")] = None,
        data_dir: Annotated[Path | None, typer.Option(help="Read the photographs from this folder instead of the "
                                                      "installed wheels.")] = None,
        build: Annotated[int | None, typer.Option(help="Cut and cache the train and reference crops at this "
                                                  "resolution now (the first training otherwise does it).")] = None,
    ):
        """The offline natural-image dataset `photos`: its sources, licences and cache.

        Example: dimstudy photos --export .gpuwheels/photos    (then train with --data-dir .gpuwheels/photos)
        """
        from dimstudy.data import photos

        paths = photos.locate(data_dir)
        for p, path in zip(photos.PHOTOS, paths, strict=True):
            typer.echo(f"{p.name:22s} {p.licence:14s} {p.what}  [{path}]")
        if export is not None:
            out = photos.export(export, data_dir)
            typer.echo(f"exported {len(paths)} photographs and LICENSES.md to {out}")
        if build is not None:
            from dimstudy.data import build_dataset

            for train in (True, False):
                typer.echo(f"cached: {build_dataset('photos', build, data_dir=data_dir, train=train)!r}")
