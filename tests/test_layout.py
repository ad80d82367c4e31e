"""The package layout: layers import downwards only, so there is no import cycle.

Every ``import quantport.X`` (module level or inside a function) is an edge between two
layers; the layers are the top-level modules and subpackages of ``quantport``. Lower layers
never import higher ones: ir/errors/recipe/plan (core) <- quant, formats <- readers <- writers
<- pipeline <- models <- validate, inspect, catalog <- cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import quantport

PKG = Path(quantport.__file__).parent


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "quantport"


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        here = _layer(".".join(rel.parts).removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n.startswith("quantport.") and _layer(n) != here:
                    edges.setdefault(here, set()).add(_layer(n))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles_between_layers() -> None:
    edges = _edges()
    assert edges, "the scan must see quantport's own imports"
    assert "writers" in edges["pipeline"]  # the scan sees what it must
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges) or [])}"


def test_cycle_detector_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_core_layers_stay_low() -> None:
    edges = _edges()
    for low in ("ir", "errors", "recipe", "plan", "quant", "formats"):
        high = edges.get(low, set()) & {"readers", "writers", "pipeline", "validate", "cli",
                                        "models"}
        assert not high, f"{low} imports {high}"
