"""
Package import directions: no cycles among the C{oxidb.*} packages.

Imports are read with C{ast} (nothing is imported). An edge goes from the
package of the importing module to the package of the imported one
(C{oxidb.server.dispatch} -> C{oxidb.server}; top-level modules such as
C{oxidb.errors} are their own node). Imports inside C{if TYPE_CHECKING:}
never run; they are kept apart and only the ones listed in
L{TYPE_ONLY_BACK_EDGES} may close a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "oxidb"

#: Type-only imports allowed against the direction of the runtime graph.
#: Three are C{oxidb.server.session.Session}, a plain attrs class of
#: per-connection state that handlers, the auditor and the login throttle
#: annotate with; it lives in the server package, which depends on them.
#: The metrics annotate L{oxidb.metrics.threadpool_stats} with the server's
#: C{WorkerPool}.
TYPE_ONLY_BACK_EDGES = {
    ("oxidb.audit", "oxidb.server"),
    ("oxidb.auth", "oxidb.server"),
    ("oxidb.commands", "oxidb.server"),
    ("oxidb.metrics", "oxidb.server"),
}


def _node(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def import_edges() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Runtime and type-only edges between C{oxidb} packages (fresh copies for each caller)."""
    runtime, type_only = _parsed_edges()
    return {k: set(v) for k, v in runtime.items()}, {k: set(v) for k, v in type_only.items()}


@functools.cache
def _parsed_edges() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The edges, read once per test process: parsing the whole package is most of these tests' time."""
    runtime: dict[str, set[str]] = {}
    type_only: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module, is_package = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        typing_only = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != "oxidb" or _node(target) == _node(module):
                    continue
                edges = type_only if id(node) in typing_only else runtime
                edges.setdefault(_node(module), set()).add(_node(target))
    return runtime, type_only


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_cycles_among_packages() -> None:
    runtime, _ = import_edges()
    assert _cycles(runtime) == []


def test_type_only_imports_close_no_other_cycle() -> None:
    runtime, type_only = import_edges()
    merged = {k: set(v) for k, v in runtime.items()}
    unexpected = set()
    for source, targets in type_only.items():
        for target in targets:
            if (source, target) in TYPE_ONLY_BACK_EDGES:
                continue
            merged.setdefault(source, set()).add(target)
            unexpected.add((source, target))
    assert _cycles(merged) == [], f"type-only imports closing a cycle: {sorted(unexpected)}"


def test_commands_never_import_the_server() -> None:
    runtime, _ = import_edges()
    assert "oxidb.server" not in runtime.get("oxidb.commands", set())
    assert "oxidb.commands" in runtime["oxidb.server"]


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_allowed_exceptions_are_still_needed() -> None:
    _, type_only = import_edges()
    present = {(s, t) for s, targets in type_only.items() for t in targets}
    assert TYPE_ONLY_BACK_EDGES <= present, "drop exceptions that no longer exist"

