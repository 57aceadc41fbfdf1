"""The house rules that a reader cannot see in one file: imports run one way,
and the pure cores do no I/O.

Every import counts, including those under ``if TYPE_CHECKING:`` and those
inside functions: a cycle that only a type checker follows still ties two
modules together for the reader.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("navi_actor", "supervisor")

# The pure cores: protocol, framing, replay, restart and stop policy. They
# compute; the modules that call them do the reading, writing and waiting.
PURE = (
    "navi_actor.protocol",
    "navi_actor.framing",
    "navi_actor.replay",
    "supervisor.restart",
    "navi_actor.stopladder",
    "navi_actor.busy",
)
# What a pure core may not import: event loops, sockets, the web framework,
# processes and files.
IMPURE_MODULES = {"asyncio", "socket", "aiohttp", "selectors", "subprocess", "threading", "uvloop", "sqlite3", "shutil"}
# ``os`` is allowed for constants (os.sep and the like), but not its I/O calls.
IMPURE_OS_CALLS = {
    "open", "read", "write", "close", "pipe", "fork", "kill", "killpg", "waitpid", "unlink", "remove",
    "mkdir", "makedirs", "listdir", "scandir", "stat", "fstat", "lseek", "fsync", "rename", "replace",
    "system", "popen", "spawnv", "execv", "execve", "getpid", "environ", "getenv", "chdir",
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: pathlib.Path) -> set[str]:
    """Every module ``name`` imports, as absolute dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def project_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(name, path):
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan).

    A package's ``__init__`` importing its own submodules is not a cycle a
    reader trips on, so edges from a package to the modules inside it are
    left out, and only edges that leave a package count against it.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def edges(node: str) -> set[str]:
        return {t for t in graph[node] if not t.startswith(node + ".")}

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges(node):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # a package importing its own modules is not a cycle; a module importing its package's sibling back is
    assert cycles({"p": {"p.x"}, "p.x": {"p"}}) == []


def test_relative_imports_resolve(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    mod = pkg / "mod.py"
    mod.write_text("from . import sibling\nfrom .other import thing\nfrom ..top import x\n")
    names = imports_of("root.pkg.mod", mod)
    assert {"root.pkg.sibling", "root.pkg.other", "root.top"} <= names


def test_no_import_cycles():
    found = cycles(project_graph())
    assert not found, "import cycles (every import counts, TYPE_CHECKING ones too): " + "; ".join(
        " ⇄ ".join(c) for c in found
    )


@pytest.mark.parametrize("name", PURE)
def test_pure_cores_do_no_io(name):
    path = project_modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.split(".")[0] in IMPURE_MODULES]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            root = (node.module or "").split(".")[0]
            if root in IMPURE_MODULES:
                bad.append(node.module)
            if root == "os":
                bad += [f"os.{a.name}" for a in node.names if a.name in IMPURE_OS_CALLS]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            if node.attr in IMPURE_OS_CALLS:
                bad.append(f"os.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"open", "print", "input"}:
            bad.append(f"{node.func.id}()")
    assert not bad, f"{name} is a pure core and must do no I/O, but uses: {sorted(set(bad))}"


@pytest.mark.parametrize("name", PURE)
def test_pure_cores_import_only_pure_project_modules(name):
    """A pure core may lean on project modules only if they are pure too."""
    graph = project_graph()
    allowed = set(PURE) | {"navi_actor.events", "navi_actor", "supervisor"}
    leaks = sorted(graph[name] - allowed)
    assert not leaks, f"{name} imports {leaks}, which are not pure cores"


def test_supervisor_knows_nothing_of_websocket():
    for name, path in project_modules().items():
        if name.startswith("supervisor"):
            text = path.read_text()
            assert "aiohttp" not in imports_of(name, path) and "navi_actor.front" not in text, name
