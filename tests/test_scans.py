"""Scan patterns, the mirrored schedule and the pad-token layout."""

import pytest
import torch

from dimstudy.models.scans import SCAN_PATTERNS, _order, block_schedule, parse_patterns, transition_index

SHAPES = [(1, 1), (2, 3), (4, 4), (5, 7), (19, 19), (35, 35)]


@pytest.mark.parametrize("key", list(SCAN_PATTERNS))
@pytest.mark.parametrize("hw", SHAPES)
def test_every_pattern_is_a_bijection_and_inverts_exactly(key, hw):
    h, w = hw
    order = _order(key, h, w)
    assert sorted(order.tolist()) == list(range(h * w))
    grid = torch.randn(h * w, 3)
    seq = grid[order]
    inv = torch.empty_like(order)
    inv[order] = torch.arange(h * w)
    assert torch.equal(seq[inv], grid)


def test_paper_patterns_visit_in_the_documented_order():
    # 2 x 3 grid, row-major ids 0..5
    assert _order("1", 2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    assert _order("2", 2, 3).tolist() == [5, 4, 3, 2, 1, 0]
    assert _order("3", 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert _order("4", 2, 3).tolist() == [5, 2, 4, 1, 3, 0]
    assert _order("5", 2, 3).tolist() == [0, 1, 2, 5, 4, 3]
    assert _order("7", 2, 3).tolist() == [0, 3, 4, 1, 2, 5]


@pytest.mark.parametrize("key", ["5", "6", "7", "8"])
def test_zigzag_orders_are_spatially_continuous(key):
    h, w = 5, 6
    order = _order(key, h, w)
    r, c = order // w, order % w
    steps = (r[1:] - r[:-1]).abs() + (c[1:] - c[:-1]).abs()
    assert steps.eq(1).all()


@pytest.mark.parametrize("src", list(SCAN_PATTERNS))
@pytest.mark.parametrize("dst", list(SCAN_PATTERNS))
def test_transition_index_moves_between_orders(src, dst):
    h, w = 4, 6
    grid = torch.arange(h * w)
    seq_src = grid[_order(src, h, w)]
    idx = transition_index(src, dst, h, w)
    seq_dst = seq_src if idx is None else seq_src[idx]
    assert torch.equal(seq_dst, grid[_order(dst, h, w)])
    assert (idx is None) == (src == dst)


def test_schedule_matches_the_paper_example_for_25_blocks():
    s = block_schedule(25, parse_patterns("1234"))
    assert s[:5] == ["1", "2", "3", "4", "1"]
    assert s[12] == "1" and s[13:16] == ["4", "3", "2"] and s[24] == "1"
    # decoder block i's input (block i-1's output) has the order of the skip it pops (block 25 - i)
    for i in range(13, 25):
        assert s[i - 1] == s[25 - i]


@pytest.mark.parametrize("spec,expected", [("1234", ("1", "2", "3", "4")), ("12", ("1", "2")), ("1", ("1",)),
                                           ("row,col_rev", ("1", "4")), ("zigzag_row", ("5",)), ("31", ("3", "1"))])
def test_parse_patterns(spec, expected):
    assert parse_patterns(spec) == expected


def test_unknown_pattern_error_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown scan pattern '9'; valid patterns: 1=row, 2=row_rev"):
        parse_patterns("129")
