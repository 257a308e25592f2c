"""edge_xmr has no import cycle, and its layers import one way: the store (``edge_xmr.index``) knows
neither the model bundle nor the indexer, the search or the façade; the façade (``edge_xmr.library``)
is the only runtime module above the indexer and search that the apps (CLI, server) build on.

Imports are read from the source with ``ast``, wherever they are (module level or inside a
function: a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` are left out
(they name types and run nowhere).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edge_xmr"

# lowest first; a module may import its own layer and those below it only (prefix matching)
LAYERS: list[tuple[str, ...]] = [
    ("edge_xmr.errors", "edge_xmr.paths", "edge_xmr.index"),  # the store
    ("edge_xmr.bundle",),  # the model runtime
    ("edge_xmr.search", "edge_xmr.indexer", "edge_xmr.ray_index", "edge_xmr.assets", "edge_xmr.demo"),  # services
    ("edge_xmr.library", "edge_xmr.discovery"),  # the façade and the one bundle discovery
    ("edge_xmr.cli", "edge_xmr.server"),  # applications
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """edge_xmr modules that ``path`` imports at run time."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & modules  # "from . import schema"
            out.update(subs or {target})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in out if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    mods = set(files)
    return {m: imports_of(p, mods) for m, p in files.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = dfs(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = dfs(m)
            if found:
                return found
    return None


def layer(m: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(m == p or m.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_no_import_cycle_in_edge_xmr():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_one_way():
    bad = []
    for m, deps in graph().items():
        lm = layer(m)
        if lm is None:
            continue
        for d in deps:
            ld = layer(d)
            if ld is not None and ld > lm:
                bad.append(f"{m} (layer {lm}) imports {d} (layer {ld})")
    assert not bad, "\n".join(sorted(bad))


def test_store_imports_neither_bundle_nor_services():
    g = graph()
    store = [m for m in g if m == "edge_xmr.index" or m.startswith("edge_xmr.index.")]
    assert "edge_xmr.index.library" in store
    above = ("edge_xmr.bundle", "edge_xmr.search", "edge_xmr.indexer", "edge_xmr.assets", "edge_xmr.library",
             "edge_xmr.discovery")
    bad = {m: sorted(d for d in g[m] if d.startswith(above)) for m in store}
    assert not {m: d for m, d in bad.items() if d}


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path, monkeypatch):
    """The walk finds an import inside a function, skips a TYPE_CHECKING one, and finds a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    f = pkg / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import b\n"
                 "def g():\n    from . import a\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert imports_of(f, {"pkg.a", "b"}) == {"pkg.a"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
