"""Which way imports run (DESIGN, "Which way imports run"), read from the source.

Every import counts, at module level or inside a function (a lazy import is still a dependency);
only `if TYPE_CHECKING:` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nexpy", "handlers", "stubs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, package: str) -> set[str]:
    """The modules of our packages that `path` imports when it runs."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in paths and m != name}
    return graph


GRAPH = _graph()


def _deps(module: str) -> set[str]:
    return GRAPH[module]


def test_the_graph_was_read() -> None:
    # A walk that found nothing would pass every rule below.
    assert "nexpy.provider" in GRAPH and "nexpy.errors" in _deps("nexpy.provider")
    assert "nexpy.context" in _deps("nexpy.agent")
    assert "nexpy.litellm_setup" in _deps("nexpy.window")  # a lazy import counts


def test_no_import_cycle_inside_nexpy() -> None:
    nodes = {m for m in GRAPH if m.startswith("nexpy")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(_deps(module) & nodes):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := walk(dep)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(nodes):
        if module not in state and (cycle := walk(module)) is not None:
            pytest.fail("import cycle: " + " -> ".join(cycle))


# The model call sits low: it knows errors, how to read a reply and classify a failure, how to
# load litellm, and the transport under it; nothing about plans, sessions, context or the UI.
LOW = {
    "nexpy.provider": {
        "nexpy",
        "nexpy.errors",
        "nexpy.classify",
        "nexpy.reply",
        "nexpy.litellm_setup",
        "nexpy.coalesce",
        "nexpy.integrity",
        "nexpy.adapt",
        "nexpy.rawtext",
        "nexpy.reasoning",
    },
    # Asking llama.cpp for raw text: the tools-in-prompt rule, nothing else (issue 13).
    "nexpy.rawtext": {"nexpy.adapt", "nexpy.errors"},
    # The rules for templates that refuse: pure, they know no other nexpy module.
    "nexpy.adapt": set(),
    # Thinking apart from the answer, and where it goes back: pure as well.
    "nexpy.reasoning": set(),
    "nexpy.classify": {"nexpy.errors", "nexpy.integrity"},
    "nexpy.reply": {"nexpy.errors", "nexpy.toolcalls", "nexpy.reasoning"},
    "nexpy.litellm_setup": {"nexpy.errors"},
    # The transport checks an unstreamed answer's end while it is bytes (issue 13).
    "nexpy.coalesce": {"nexpy.integrity", "nexpy.errors"},
    "nexpy.integrity": {"nexpy.errors"},
    "nexpy.errors": set(),
    "nexpy.limits": {"nexpy.errors"},
    "nexpy.outcome": {"nexpy.errors"},
    "nexpy.routing": {"nexpy.errors"},
}


@pytest.mark.parametrize("module", sorted(LOW))
def test_low_modules_import_only_what_they_are_allowed(module: str) -> None:
    assert _deps(module) <= LOW[module], f"{module} imports {_deps(module) - LOW[module]}"


UI = {"nexpy.cli", "nexpy.repl", "nexpy.doctor"}
CORE = {
    "nexpy.messages",
    "nexpy.budget",
    "nexpy.context",
    "nexpy.compaction",
    "nexpy.window",
    "nexpy.provider",
    "nexpy.classify",
    "nexpy.reply",
    "nexpy.agent",
    "nexpy.session",
    "nexpy.runtime",
    "nexpy.limits",
    "nexpy.outcome",
    "nexpy.handler",
    "nexpy.events",
}


@pytest.mark.parametrize("module", sorted(CORE | {m for m in GRAPH if m.startswith("nexpy.tools")}))
def test_the_core_never_imports_the_ui(module: str) -> None:
    assert not _deps(module) & UI


# The handlers wrap CLIs: they never load the agent loop, the model call or its context.
IN_PROCESS_ONLY = {
    "nexpy.agent",
    "nexpy.provider",
    "nexpy.context",
    "nexpy.litellm_setup",
    "nexpy.classify",
    "nexpy.reply",
    "nexpy.coalesce",
    "nexpy.rawtext",
    "nexpy.budget",
    "nexpy.compaction",
    "nexpy.window",
}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("handlers")))
def test_handlers_never_load_the_in_process_loop(module: str) -> None:
    assert not _deps(module) & (IN_PROCESS_ONLY | UI)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("stubs")))
def test_stubs_never_import_nexpy(module: str) -> None:
    assert not {d for d in _deps(module) if d.startswith(("nexpy", "handlers"))}
