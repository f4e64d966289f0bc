"""The grid points of the paper's ablations: Tab. 4 (components) and Tab. 6 (scan patterns).

A `Variant` is one DiM configuration: which of the four designs are on, and the scan patterns its blocks
cycle through. Its `key` names the *network*, not the table that asked for it: the Tab. 6 row "1234" is the
Tab. 4 row "full", and Tab. 6's "1" is Tab. 4's "-MS" (with multi_scan off every block scans pattern 1). So
one study that runs both tables trains each distinct network once per seed, and both tables read its row.
"""

from __future__ import annotations

from dataclasses import dataclass

from dimstudy.models.components import COMPONENTS, component_flags
from dimstudy.models.scans import parse_patterns
from dimstudy.paper import (
    DEFAULT_PATTERNS,
    PATTERN_COMPONENT,
    SINGLE_PATTERN,
    TAB4_DROPS,
    TAB4_PATTERNS,
    variant_key,
    variant_label,
)


@dataclass(frozen=True)
class Variant:
    label: str  # what the table that asked for it calls it: "full", "-PT", "12"
    flags: tuple[tuple[str, bool], ...]  # (component, on) for every component, in COMPONENTS order
    patterns: str  # effective scan patterns: "1" whenever multi_scan is off

    @property
    def components(self) -> dict[str, bool]:
        return dict(self.flags)

    @property
    def key(self) -> str:
        """The network's name, e.g. 'scan1234-lsc1-pt1-lfe1' (see dimstudy.paper.variant_key)."""
        return variant_key(self.components, self.patterns)

    @property
    def model_kwargs(self) -> dict:
        """create_model overrides: the component flags and, when several directions are scanned, the patterns."""
        kw = dict(self.components)
        if kw[PATTERN_COMPONENT]:
            kw["scan_patterns"] = self.patterns
        return kw


def make_variant(drop=(), patterns: str = DEFAULT_PATTERNS, label: str | None = None) -> Variant:
    """The DiM with `drop` switched off and scanning `patterns`, in the canonical form that `key` names.

    Scanning only pattern 1 *is* multi_scan off (the model builds the same blocks), so it is stored that way.
    """
    flags = component_flags(drop=drop)
    keys = parse_patterns(patterns) if flags[PATTERN_COMPONENT] else (SINGLE_PATTERN,)
    if keys == (SINGLE_PATTERN,):
        flags[PATTERN_COMPONENT] = False
    eff = "".join(keys)
    if label is None:
        label = variant_label(flags) if eff in TAB4_PATTERNS else f"{variant_label(flags)} scan {eff}"
    return Variant(label, tuple((c, flags[c]) for c in COMPONENTS), eff)


def ablation_variants(drops: list[str]) -> list[Variant]:
    """The full DiM plus one variant per `drops` entry ("padding_tokens", "long_skip,padding_tokens" drops
    both in one model); "each" expands to Tab. 4's rows. Duplicates are dropped, order kept."""
    groups: list[tuple[str, ...]] = [()]
    for entry in drops:
        names = [n.strip() for n in entry.split(",") if n.strip()]
        if names == ["each"]:
            groups += TAB4_DROPS
        elif "each" in names:
            raise ValueError(f"'each' stands alone (it means all of Tab. 4's rows), got {entry!r}")
        else:
            groups.append(tuple(names))
    variants = [make_variant(g) for g in groups]
    return _unique(variants)


def scan_variants(patterns: list[str]) -> list[Variant]:
    """One variant per pattern string ("1234", "12", "1", or the zigzag keys "5678"), all designs on."""
    if not patterns:
        raise ValueError("give at least one scan pattern string, e.g. 1234,12,1")
    return _unique([make_variant((), p, label="".join(parse_patterns(p))) for p in patterns])


def _unique(variants: list[Variant]) -> list[Variant]:
    seen, out = set(), []
    for v in variants:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def check_drop_names(drops: list[str]) -> None:
    """Unknown component -> ValueError naming the valid ones (and 'each')."""
    for entry in drops:
        for name in (n.strip() for n in entry.split(",")):
            if name and name != "each" and name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r}; valid choices: each, {', '.join(COMPONENTS)}")
