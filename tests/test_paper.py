"""The paper's tables (dimstudy.paper): keys, labels and the Tab. 6 filter follow the component table."""

from dimstudy import paper
from dimstudy.models.components import COMPONENTS, Component
from dimstudy.study.grid import make_variant


def test_a_new_component_reaches_the_key_the_label_and_the_tab6_filter():
    extra = Component("gated_skip", "GS", "a made-up fifth design", "no gate")
    table = {**COMPONENTS, extra.name: extra}
    on = dict.fromkeys(table, True)
    off = {**on, "gated_skip": False}
    assert paper.variant_key(on, "1234", table) == "scan1234-lsc1-pt1-lfe1-gs1"
    assert paper.variant_key(off, "1234", table) == "scan1234-lsc1-pt1-lfe1-gs0"  # not merged into full
    assert paper.variant_label(on, components=table) == "full"
    assert paper.variant_label(off, components=table) == "-GS"
    assert paper.variant_label({**off, "padding_tokens": False}, minus="−", components=table) == "−PT−GS"
    assert paper.tab6_network(on, table) and not paper.tab6_network(off, table)
    assert paper.tab6_network({**on, "multi_scan": False}, table)  # the scan patterns are Tab. 6's own axis


def test_the_component_table_gives_the_papers_keys_labels_and_tab6_rows():
    variants = [make_variant(d) for d in paper.TAB4_DROPS]
    assert [v.label for v in variants] == ["full", "-LFE", "-PT", "-LSC", "-MS"]
    assert [v.key for v in variants] == ["scan1234-lsc1-pt1-lfe1", "scan1234-lsc1-pt1-lfe0", "scan1234-lsc1-pt0-lfe1",
                                         "scan1234-lsc0-pt1-lfe1", "scan1-lsc1-pt1-lfe1"]
    assert make_variant((), "1").key == variants[-1].key  # Tab. 6's "1" is Tab. 4's -MS
    assert [paper.tab6_network(v.components) for v in variants] == [True, False, False, False, True]
