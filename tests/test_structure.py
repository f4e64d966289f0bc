"""The package's import structure (issue 14): no cycle among its parts, imports only downward.

A part is a subpackage (`train`, `models`, ...) or a top-level module (`paper`, `runtime`, ...). Every import
of the package's own code counts, at module top or inside a function: an import hidden in a function is still
an arrow in the drawing.
"""

import ast
from pathlib import Path

import dimstudy

PACKAGE = Path(dimstudy.__file__).parent
# The layers, bottom to top; top-level modules sit wherever their imports put them.
LAYERS = {"ops": 0, "models": 0, "diffusion": 1, "data": 1, "metrics": 1, "train": 2, "bench": 3, "study": 3,
          "report": 4, "cli": 5}


def _edges() -> set[tuple[str, str]]:
    """(importer, imported) parts for every import of dimstudy's own code (relative imports stay inside a part)."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        src = parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:  # `from dimstudy import paper` imports dimstudy.paper
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            edges |= {(src, n.split(".")[1]) for n in names if n.startswith("dimstudy.")}
    return {(a, b) for a, b in edges if a != b and ((PACKAGE / b).is_dir() or (PACKAGE / f"{b}.py").exists())}


def _cycle(edges) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    done, stack = set(), []

    def visit(node):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt):
                return found
        stack.pop()
        done.add(node)
        return None

    return next((c for n in sorted(graph) if (c := visit(n))), None)


def test_the_packages_parts_import_each_other_without_a_cycle():
    edges = _edges()
    assert ("cli", "train") in edges and ("train", "models") in edges  # the walk sees imports at all
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_the_cycle_finder_finds_one():
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == ["a", "b", "c", "a"]


def test_at_most_one_import_runs_up_the_layers():
    up = sorted((a, b) for a, b in _edges() if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a])
    assert len(up) <= 1, up
