"""The paper's tables, in one place: Tab. 4's rows (what each switches off), Tab. 6's scan patterns, their labels,
the paper's FIDs (DiM-S/2, CIFAR-10, FID-50K), and Fig. 3's speed claim.

What depends on the *set* of components (a variant's key and label, which rows Tab. 6 reads) is derived from
`COMPONENTS`, so a new component needs a row there and nothing here.
"""

from __future__ import annotations

from dimstudy.models.components import COMPONENTS, Component

DEFAULT_PATTERNS = "1234"  # DiM's (Fig. 2)
SINGLE_PATTERN = "1"  # what every block scans with multi_scan off
PATTERN_COMPONENT = "multi_scan"  # the component the scan patterns stand for: on exactly when they are not "1"

# Tab. 4, in the paper's order: what each row switches off, and its FID
TAB4: dict[tuple[str, ...], float] = {
    (): 2.92, ("local_conv",): 3.07, ("padding_tokens",): 2.94, ("long_skip",): 6.23, ("multi_scan",): 17.60,
}
TAB4_DROPS: list[tuple[str, ...]] = list(TAB4)
TAB4_PATTERNS = (DEFAULT_PATTERNS, SINGLE_PATTERN)  # Tab. 4's networks scan all four patterns, or one with -MS
# Tab. 6, in the paper's order: the scan patterns (all other designs on), and their FID
TAB6: dict[str, float] = {"1234": 2.92, "12": 2.91, "1": 17.60}
TAB6_PATTERNS: list[str] = list(TAB6)
PAPER_COL = {"tab4": "paper FID (Tab. 4)", "tab6": "paper FID (Tab. 6)"}

FIG3_CLAIM = "paper (Fig. 3, H800): DiM faster than U-ViT above 1280×1280; only slightly slower than the Mamba baseline"
FIG3_CROSSOVER_PX = 1280  # Sec. 4.2: "DiM is faster than the transformer at resolutions above 1280 x 1280"


def variant_label(flags: dict[str, bool], minus: str = "-", components: dict[str, Component] = COMPONENTS) -> str:
    """'full', or the paper's style '-PT', '-LFE-PT' (components off, in table order); the report prints '−'."""
    off = [c.abbrev for c in components.values() if not flags[c.name]]
    return "".join(f"{minus}{a}" for a in off) or "full"


def variant_key(flags: dict[str, bool], patterns: str, components: dict[str, Component] = COMPONENTS) -> str:
    """A network's name, e.g. 'scan1234-lsc1-pt1-lfe1': its patterns (which imply multi_scan), then every other
    component on (1) or off (0)."""
    rest = "".join(f"-{c.abbrev.lower()}{int(flags[c.name])}" for c in components.values() if c.name != PATTERN_COMPONENT)
    return f"scan{patterns}{rest}"


def tab6_network(flags: dict[str, bool], components: dict[str, Component] = COMPONENTS) -> bool:
    """Whether a network belongs in Tab. 6: every design but the scan patterns on."""
    return all(flags[c.name] for c in components.values() if c.name != PATTERN_COMPONENT)
