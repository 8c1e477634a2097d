"""The import graph of zcserve, read with `ast`, and the layout rules it must keep.

Run it from anywhere (`python tests/support/import_graph.py [PACKAGE_DIR]`): it prints
the edges between the parts (core, server, load, bench) with their counts, the
module-level edges that cross parts, and the forbidden edges; it exits 1 if
there are any. tests/project/test_layout.py imports the functions below.

Every import counts, wherever it sits: module level, inside a function, under
`if TYPE_CHECKING:`. `from zcserve import x` and `from zcserve.pkg import mod`
name the module `x` / `mod` when such a module exists, else the package.
Relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "zcserve"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE
PARTS = ("core", "server", "load", "bench")
SUBPACKAGES = frozenset(PARTS[1:])

# part -> the parts it must never import
FORBIDDEN_PARTS: Mapping[str, frozenset[str]] = {
    "load": frozenset({"server", "bench"}),
    "server": frozenset({"load", "bench"}),
}
# A strategy depends on the socket abstraction only, never on the server.
STRATEGIES = "zcserve.server.strategies"
STRATEGIES_MAY_IMPORT = frozenset(
    {"zcserve.server.sockio", "zcserve.server.files", "zcserve.errors"}
)


@dataclass(frozen=True, order=True)
class Edge:
    """`source` imports `target` (both dotted zcserve module names) at `line`."""

    source: str
    target: str
    line: int = 0


@dataclass(frozen=True)
class Violation:
    edge: Edge
    rule: str

    def __str__(self) -> str:
        e = self.edge
        return f"{e.source} -> {e.target} (line {e.line}): {self.rule}"


def discover(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package_dir`."""
    package = package_dir.name
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """`name` if it is a known module, else its closest known parent package."""
    known = set(known)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_in(
    source: str, module: str, known: Iterable[str], *, is_package: bool = False
) -> list[Edge]:
    """The edges from `module` (whose code is `source`) to modules in `known`."""
    known = set(known)
    root = module.split(".", 1)[0]
    edges: set[Edge] = set()

    def add(name: str, line: int) -> None:
        if name == root or name.startswith(root + "."):
            target = _resolve(name, known)
            if target is not None and target != module:
                edges.add(Edge(module, target, line))

    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor.pop()
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                add(candidate if candidate in known else base, node.lineno)
    return sorted(edges)


def build_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, list[Edge]]:
    """Every module under `package_dir` -> its edges to other modules there."""
    modules = discover(package_dir)
    return {
        name: imports_in(
            path.read_text(encoding="utf-8"), name, modules, is_package=path.name == "__init__.py"
        )
        for name, path in modules.items()
    }


def part_of(module: str) -> str:
    """core (top-level modules and the package itself), server, load or bench."""
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] in SUBPACKAGES:
        return pieces[1]
    return "core"


def all_edges(graph: Mapping[str, Sequence[Edge]]) -> list[Edge]:
    return sorted(edge for edges in graph.values() for edge in edges)


def module_edges(graph: Mapping[str, Sequence[Edge]]) -> set[tuple[str, str]]:
    """(source, target) pairs: one per importing module and imported module."""
    return {(e.source, e.target) for e in all_edges(graph)}


def part_edges(graph: Mapping[str, Sequence[Edge]]) -> Counter[tuple[str, str]]:
    """(source part, target part) -> how many module-level edges go that way."""
    return Counter((part_of(s), part_of(t)) for s, t in module_edges(graph))


def crossing_edges(graph: Mapping[str, Sequence[Edge]]) -> list[tuple[str, str]]:
    return sorted((s, t) for s, t in module_edges(graph) if part_of(s) != part_of(t))


def forbidden_edges(graph: Mapping[str, Sequence[Edge]]) -> list[Violation]:
    """Every edge that breaks a layout rule, with the rule it breaks."""
    found: list[Violation] = []
    for edge in all_edges(graph):
        source, target = part_of(edge.source), part_of(edge.target)
        if target in FORBIDDEN_PARTS.get(source, ()):
            found.append(Violation(edge, f"{source} must not import {target}"))
        if edge.source == STRATEGIES and edge.target not in STRATEGIES_MAY_IMPORT:
            allowed = ", ".join(sorted(STRATEGIES_MAY_IMPORT))
            found.append(Violation(edge, f"strategies may import only {allowed}"))
    return found


def render(graph: Mapping[str, Sequence[Edge]]) -> str:
    counts = part_edges(graph)
    lines = [f"{len(graph)} modules, {len(module_edges(graph))} module edges", ""]
    lines.append("edges between parts (module pairs):")
    for source in PARTS:
        for target in PARTS:
            if counts[source, target]:
                lines.append(f"  {source:>6} -> {target:<6} {counts[source, target]:3d}")
    lines += ["", "module edges that cross parts:"]
    lines += [f"  {s} -> {t}" for s, t in crossing_edges(graph)] or ["  (none)"]
    violations = forbidden_edges(graph)
    lines += ["", f"forbidden edges: {len(violations)}"]
    lines += [f"  {v}" for v in violations]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    graph = build_graph(Path(args[0]) if args else PACKAGE_DIR)
    print(render(graph))
    return 1 if forbidden_edges(graph) else 0


if __name__ == "__main__":
    sys.exit(main())
