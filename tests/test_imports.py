"""The package's layering: shells (cli, actions) on top, stages below, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import publisher

PACKAGE = Path(publisher.__file__).parent
# The shells: they may import anything; nothing else may import them.
SHELLS = {
    "publisher.cli",
    "publisher.cli_actions",
    "publisher.cli_hub",
    "publisher.console",
    "publisher.actions",
    "publisher.__main__",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str) -> list[str]:
    """The publisher.* modules one import statement names (`from publisher import x` included)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("publisher")]
    if not isinstance(node, ast.ImportFrom):
        return []
    assert not node.level, f"{module}: use absolute imports (from publisher.x import y)"
    node_module = node.module or ""
    if not node_module.startswith("publisher"):
        return []
    return [node_module] + [f"{node_module}.{a.name}" for a in node.names]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """Statements run at import time: the top level and its if/try blocks, not functions."""
    out: list[ast.AST] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if _is_type_checking(node):
            continue
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    return out


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, imports anywhere) between the package's own modules."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    top: dict[str, set[str]] = {}
    anywhere: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def known(nodes, name=name):
            return {m for n in nodes for m in _imported(n, name) if m in files and m != name}

        top[name] = known(_module_level(tree))
        anywhere[name] = known(ast.walk(tree))
    return top, anywhere


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_module_level_imports_have_no_cycle():
    top, _ = _graph()
    assert "publisher.pipeline" in top and "publisher.recipe" in top["publisher.pipeline"]
    assert _cycle(top) is None, " -> ".join(_cycle(top) or [])


def test_core_modules_never_import_the_shells():
    # Anywhere in the module, function-level (late) imports included: a late import is how the
    # old actions -> cli -> pipeline -> actions loop hid.
    _, anywhere = _graph()
    crossing = {
        module: sorted(imports & SHELLS)
        for module, imports in anywhere.items()
        if module not in SHELLS and imports & SHELLS
    }
    assert crossing == {}


def test_the_checks_see_a_cycle_and_a_late_import():
    # The checks themselves can fail: a two-module loop is found, and so is an import of a
    # shell inside a function body.
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    tree = ast.parse("def f():\n    from publisher import actions\n")
    found = {m for n in ast.walk(tree) for m in _imported(n, "publisher.hub")}
    assert "publisher.actions" in found
    assert not [m for n in _module_level(tree) for m in _imported(n, "publisher.hub")]
