"""`dimstudy convert`: public DiM checkpoints (nnet_ema.pth / nnet.pth) to dimstudy checkpoints, and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dimstudy.cli.common import friendly


def register(app: typer.Typer) -> None:
    @app.command("convert")
    @friendly
    def convert(
        path: Annotated[Path, typer.Argument(help="With --from dim-public: a public nnet_ema.pth / nnet.pth, or its "
                                             "<step>.ckpt/ directory. With --from dimstudy: a checkpoint or run directory.")],
        from_: Annotated[str, typer.Option("--from", help="Format of PATH: dim-public (import into dimstudy) or "
                                           "dimstudy (export to the public layout).")],
        out: Annotated[Path, typer.Option(help="Output: a dimstudy .pt (import) or a public .pth (export).")],
        model: Annotated[str | None, typer.Option(help="Preset to load into (import; default: the one with the file's "
                                                  "width and depth: dim_s_2, dim_l_2 or dim_h_2).")] = None,
        pad_layout: Annotated[str | None, typer.Option(help="lateral or cyclic (import; default: the public config's, "
                                                       "cyclic for the 512 px fine-tune's 64x64 latents).")] = None,
        ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Import: which file of a <step>.ckpt/ directory; "
                                          "export: which weights of the checkpoint.")] = True,
        public_classes: Annotated[int | None, typer.Option(help="Export of an unconditional model: K of the public "
                                                           "class tables (default 10, the public CIFAR config).")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Import: a model option as KEY=VALUE, e.g. "
                                                       "--set num_classes=10 to keep the CIFAR tables' 11 rows.")] = None,
    ):
        """Convert a released DiM checkpoint into a dimstudy one (exact, strict), or export one back.

        Keys that are left over or missing, or shapes that differ, stop with one line that lists them. Commands
        that take --ckpt also read public files directly; converting once saves the conversion at every load.

        Example: dimstudy convert --from dim-public ckpts/625000.ckpt/nnet_ema.pth --model dim_h_2 --out dim_h_2-in256.pt

        Back: dimstudy convert --from dimstudy dim_h_2-in256.pt --out nnet_ema.pth
        """
        from dimstudy.train.checkpoint import load_checkpoint
        from dimstudy.train.config import parse_set
        from dimstudy.train.convert import FORMATS, export_public, import_public

        if from_ not in FORMATS:
            raise ValueError(f"unknown format {from_!r}; valid choices: {', '.join(FORMATS)}")
        if from_ == "dim-public":
            summary = import_public(path, model, out, ema=ema, pad_layout=pad_layout, **parse_set(set_ or []))
        else:
            if model or pad_layout or set_:
                raise ValueError("--model, --pad-layout and --set apply to --from dim-public only; an export keeps "
                                 "the checkpoint's network")
            summary = export_public(load_checkpoint(path, ema=ema)[0], out, public_classes=public_classes)
        typer.echo(json.dumps(summary, indent=2))
