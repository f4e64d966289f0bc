"""`dimstudy models` and `dimstudy components`: what can be built, and what can be switched off."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dimstudy.cli.common import friendly

COLUMNS = [
    ("name", "model"), ("blocks", "blocks"), ("width", "width"), ("patch", "patch"), ("input", "input"),
    ("params_m", "params (M)"), ("gflops", "GFLOPs"), ("gflops_no_pads", "GFLOPs w/o pads"), ("tokens", "tokens/block"),
    ("public_params_m", "public code params (M)"), ("paper_params_m", "paper params (M)"), ("paper_gflops", "paper GFLOPs"), ("paper_source", "paper source"),
]


def render_table(rows: list[dict], columns=COLUMNS) -> str:
    """A plain aligned text table (no colour codes, so it pastes anywhere)."""
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("models")
    @friendly
    def models(
        pattern: Annotated[str, typer.Option(help="Shell pattern over model names, e.g. 'dim*'.")] = "*",
        resolution: Annotated[int, typer.Option(help="Input side for GFLOPs and tokens (pixels, or latent cells).")] = 32,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows instead of a table.")] = False,
    ):
        """List registered models: blocks, width, params, GFLOPs at batch 1, tokens per block, paper numbers.

        GFLOPs follow the paper's Tab. 1 convention: multiply-accumulates of one forward pass, batch 1,
        32x32 input; the selective scan is counted analytically (9*L*d_inner*d_state FLOPs per Mamba).

        Example: dimstudy models --pattern 'dim*' --json
        """
        from dimstudy.flops import summarize
        from dimstudy.models.registry import list_models

        names = list_models(pattern)
        if not names:
            raise ValueError(f"no model matches {pattern!r}; valid choices: {', '.join(list_models())}")
        rows = [summarize(n, resolution) for n in names]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        typer.echo(render_table(rows))
        typer.echo(
            "\nGFLOPs = multiply-accumulates of one forward, batch 1 (paper Tab. 1 convention). DiM's tokens include"
            "\nits 2 condition tokens, 3 separators and the (H+3)x(W+3) padded grid. The paper's Tab. 1 GFLOPs agree"
            "\nwithin ~5% with the count for the same model without its pad and separator tokens ('w/o pads')."
            "\nPaper columns are the paper's own numbers. 'public code params' counts the public DiM checkpoints'"
            "\nstate dicts: equal to ours to 0.1M; the rest is 24 redundant skip biases for width > 512 (two summed"
            "\nLinear(d, d) there, one Linear(2d, d) here) and, for CIFAR's dim_s_2, 10 unused class rows per table."
        )

    @app.command("components")
    @friendly
    def components(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
        """DiM's four designs (paper Tab. 4) and the names that toggle them, plus the scan patterns.

        Example: dimstudy components
        """
        from dimstudy.models.components import COMPONENTS
        from dimstudy.models.scans import SCAN_PATTERNS

        comps = [dict(name=c.name, abbrev=c.abbrev, design=c.design, off=c.off_means) for c in COMPONENTS.values()]
        pats = [dict(key=p.key, name=p.name, description=p.description, paper=p.paper) for p in SCAN_PATTERNS.values()]
        if as_json:
            typer.echo(json.dumps({"components": comps, "scan_patterns": pats}, indent=2))
            return
        typer.echo(render_table(comps, [("name", "name"), ("abbrev", "Tab. 4"), ("design", "design"), ("off", "off means")]))
        typer.echo("")
        typer.echo(render_table(pats, [("key", "key"), ("name", "name"), ("description", "scan pattern")]))
