"""The shape of the code: the data flow stays readable module by module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "gradsonic"


def _imports() -> dict[str, set[str]]:
    """Module -> the gradsonic modules it imports anywhere (lazy imports in functions too)."""
    graph: dict[str, set[str]] = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if f.name == "__init__.py" else parts)
        pkg = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg[:len(pkg) - node.level + 1]
                if node.module:
                    deps.add(".".join(base + [node.module]))
                else:  # from . import x
                    deps.update(".".join(base + [a.name]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradsonic"):
                deps.add(node.module)
        graph[mod] = deps
    return graph


def test_no_module_imports_itself_through_others():
    graph = _imports()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep == path[0]:
                cycles.append(" -> ".join(path + [dep]))
            elif dep in graph and dep not in path:
                visit(dep, path + [dep])

    for start in graph:
        if start != "gradsonic":  # the package's own __init__ re-exports
            visit(start, [start])
    assert not cycles, cycles[:5]


def test_no_module_passes_about_500_lines():
    sizes = {f.relative_to(PACKAGE).as_posix(): len(f.read_text().splitlines())
             for f in PACKAGE.rglob("*.py")}
    assert sizes and max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
