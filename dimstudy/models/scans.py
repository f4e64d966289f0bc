"""Scan patterns (paper Fig. 2) and DiM's per-block scan schedule.

A scan pattern is a visiting order of an H x W grid: a permutation of the row-major indices
0 .. H*W-1. Patterns are keyed by one character so that a study can ask for "1234", "12" or "1"
(paper Tab. 6). Adding a pattern is one entry in `SCAN_PATTERNS`.

Only the grid part of DiM's sequence is ever re-ordered; the time, class and separator tokens stay
in front. The residual stream travels in the current block's order, so between two blocks the grid is
gathered once with `transition_index`, and not at all when consecutive blocks share a pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch


def _rows(h: int, w: int) -> torch.Tensor:
    return torch.arange(h * w).reshape(h, w)


def _zigzag(grid: torch.Tensor) -> torch.Tensor:
    """Boustrophedon: every odd row of `grid` is walked backwards, so consecutive tokens stay neighbours."""
    grid = grid.clone()
    grid[1::2] = grid[1::2].flip(-1)
    return grid.reshape(-1)


@dataclass(frozen=True)
class ScanPattern:
    key: str
    name: str
    description: str
    order: Callable[[int, int], torch.Tensor]  # (H, W) -> (H*W,) row-major indices in visiting order
    paper: bool  # one of the paper's four patterns (Fig. 2)


SCAN_PATTERNS: dict[str, ScanPattern] = {
    p.key: p
    for p in [
        ScanPattern("1", "row", "row-major, left to right, top to bottom (paper ①)", lambda h, w: _rows(h, w).reshape(-1), True),
        ScanPattern("2", "row_rev", "row-major reversed (paper ②)", lambda h, w: _rows(h, w).reshape(-1).flip(0), True),
        ScanPattern("3", "col", "column-major, top to bottom, left to right (paper ③)", lambda h, w: _rows(h, w).t().reshape(-1), True),
        ScanPattern("4", "col_rev", "column-major reversed (paper ④)", lambda h, w: _rows(h, w).t().reshape(-1).flip(0), True),
        # ZigMa-style spatially continuous orders (Hu et al. 2024); not in the DiM paper.
        ScanPattern("5", "zigzag_row", "boustrophedon rows: odd rows right to left", lambda h, w: _zigzag(_rows(h, w)), False),
        ScanPattern("6", "zigzag_row_rev", "boustrophedon rows, reversed", lambda h, w: _zigzag(_rows(h, w)).flip(0), False),
        ScanPattern("7", "zigzag_col", "boustrophedon columns: odd columns bottom to top", lambda h, w: _zigzag(_rows(h, w).t()), False),
        ScanPattern("8", "zigzag_col_rev", "boustrophedon columns, reversed", lambda h, w: _zigzag(_rows(h, w).t()).flip(0), False),
    ]
}
_BY_NAME = {p.name: p.key for p in SCAN_PATTERNS.values()}


def parse_patterns(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'1234' | '1,2,3,4' | 'row,col_rev' | ('1', '2') -> ('1', '2', ...). Order and repeats are kept."""
    if isinstance(spec, str):
        parts = [s.strip() for s in spec.split(",")] if "," in spec else ([spec] if spec in _BY_NAME else list(spec))
    else:
        parts = list(spec)
    keys = tuple(_BY_NAME.get(p, p) for p in parts if p)
    bad = [k for k in keys if k not in SCAN_PATTERNS]
    if bad or not keys:
        valid = ", ".join(f"{p.key}={p.name}" for p in SCAN_PATTERNS.values())
        raise ValueError(f"unknown scan pattern {bad[0] if bad else repr(spec)!r}; valid patterns: {valid}")
    return keys


def block_schedule(depth: int, patterns: tuple[str, ...]) -> list[str]:
    """The pattern of every block: the encoder half cycles through `patterns`, the decoder half mirrors it.

    Block i > (depth-1)/2 takes the pattern of block depth-1-i, so the input of every decoder block (the
    output of its predecessor) has the token order of the long-skip tensor it pops, and the last block
    is pattern[0]. For 25 blocks and '1234': 0:1 1:2 2:3 3:4 ... 12:1 13:4 14:3 15:2 ... 24:1.
    """
    half = (depth - 1) // 2
    enc = [patterns[i % len(patterns)] for i in range(depth - half)]
    return enc + [enc[depth - 1 - i] for i in range(depth - half, depth)]


@lru_cache(maxsize=256)
def _order(key: str, h: int, w: int) -> torch.Tensor:
    order = SCAN_PATTERNS[key].order(h, w)
    assert order.numel() == h * w
    return order


@lru_cache(maxsize=256)
def transition_index(src: str, dst: str, h: int, w: int) -> torch.Tensor | None:
    """Gather index that turns a grid sequence in order `src` into order `dst`, or None when equal.

    seq_src[k] = grid[order_src[k]]; we want seq_dst[j] = grid[order_dst[j]] = seq_src[inv_src[order_dst[j]]].
    """
    if src == dst:
        return None
    inv_src = torch.empty(h * w, dtype=torch.long)
    inv_src[_order(src, h, w)] = torch.arange(h * w)
    return inv_src[_order(dst, h, w)]
