"""The component registry: CLI names of DiM's four designs -> the DiM constructor flags that switch them.

This table is the only place the names live; the CLI, the ablation runner and the reports read it.
Scan patterns are a separate axis (`scan_patterns="1234"`, see `dimstudy.models.scans`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    name: str  # CLI name
    abbrev: str  # the paper's Tab. 4 column
    design: str
    off_means: str

    @property
    def flag(self) -> str:  # the DiM constructor flag has the component's name
        return self.name


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        Component("multi_scan", "MS", "multiple scan patterns, cycled per block (Sec. 3.2, Fig. 2)", "every block scans pattern 1"),
        Component("long_skip", "LSC", "U-ViT long skips: concat + Linear between mirrored blocks", "no long skips"),
        Component("padding_tokens", "PT", "3 learnable end-of-line pad tokens (+3 separators), (H+3)x(W+3) grid", "no pad or separator tokens"),
        Component("local_conv", "LFE", "two depthwise 3x3 convs, after patchify and before the head", "no convs"),
    ]
}


def check_components(names) -> list[str]:
    names = list(names)
    bad = [n for n in names if n not in COMPONENTS]
    if bad:
        raise ValueError(f"unknown component {bad[0]!r}; valid choices: {', '.join(COMPONENTS)}")
    return names


def component_flags(drop=(), keep_only=None) -> dict[str, bool]:
    """Constructor kwargs turning off the components in `drop` (or keeping only `keep_only`)."""
    drop = set(check_components(drop))
    keep = set(check_components(keep_only)) if keep_only is not None else set(COMPONENTS)
    return {c.flag: (c.name in keep and c.name not in drop) for c in COMPONENTS.values()}

