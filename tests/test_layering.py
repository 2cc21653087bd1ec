"""The house rules, checked on the source: which part may import which, and no import cycle.

The package is layered, bottom up: the shared vocabulary (``errors``, ``ids``, ``idenum``,
``_version``, ``record``, ``procinfo``, ``files``, ``paths``), ``formats`` (the bytes), ``producer``
(what ``import kmemdump`` runs), ``memory`` (the sources behind one ``read``), ``inspect`` (decoding),
``fleet`` (object storage: shipping, remote listing, triage), ``collector``, ``cli``. An
import may only go down. The producer imports nothing but the standard library and the layers
below it. Imports are read with ``ast`` (those inside functions too), so a lazy import that breaks
a rule is caught as well.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "kmemdump"

# What each part may import from kmemdump (besides itself).
ALLOWED: dict[str, set[str]] = {
    "vocabulary": set(),
    "formats": {"vocabulary"},
    "producer": {"vocabulary", "formats"},
    "memory": {"vocabulary", "formats"},
    "inspect": {"vocabulary", "formats", "memory"},
    "fleet": {"vocabulary", "formats", "memory", "inspect"},
    "collector": {"vocabulary", "formats", "memory", "inspect", "fleet"},
    "cli": {"vocabulary", "formats", "memory", "inspect", "fleet", "collector"},
    "facade": {"vocabulary", "formats", "producer"},
}
PROGRAMS = {"kmemdump.cli.demo_target"}
"""Producer programs the command line runs in a child process: they import kmemdump as users do."""
VOCABULARY = {"errors", "ids", "idenum", "_version", "procinfo", "files", "paths", "record"}
FACADE = {"logging", "asyncio", "pytest_plugin"}
"""Public modules beside the package's ``__init__`` (``kmemdump.logging`` …): thin faces of the producer."""


def _part(module: str) -> str:
    """The part a ``kmemdump.…`` module belongs to."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "facade" if len(parts) == 1 else "cli"
    if parts[1] in VOCABULARY:
        return "vocabulary"
    if parts[1] in FACADE:
        return "facade"
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _imports(*, at_run_time: bool = False) -> dict[str, set[str]]:
    """Every module of the package and the modules it imports (absolute names, relative resolved);
    with ``at_run_time``, leaving out those imported only for type checkers (``if TYPE_CHECKING:``)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "autoinit" in path.parts:  # runs as a top-level sitecustomize, imports kmemdump as a user
            continue
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        unseen = _type_checking_blocks(tree) if at_run_time else set()
        for node in ast.walk(tree):
            if id(node) in unseen:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets.add(module)
                # "from kmemdump.formats import zstd" imports the submodule kmemdump.formats.zstd
                for alias in node.names:
                    candidate = f"{module}.{alias.name}"
                    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                        targets.add(candidate)
        found[name] = targets
    return found


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` bodies (never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def _internal(module: str) -> bool:
    return module == "kmemdump" or module.startswith("kmemdump.")


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for module, targets in _imports().items():
        here = _part(module)
        for target in filter(_internal, targets):
            there = _part(target)
            if there != here and there not in ALLOWED[here] and module not in PROGRAMS:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert wrong == []


_PRODUCER_FORMATS = (
    "kmemdump",
    "kmemdump.formats.table",
    "kmemdump.formats.arena",
    "kmemdump.formats.kinds",
    "kmemdump.formats.enums",
    "kmemdump.formats.ring",
)


def test_the_producer_imports_only_the_standard_library() -> None:
    stdlib = sys.stdlib_module_names
    foreign = [
        f"{module} imports {target}"
        for module, targets in _imports(at_run_time=True).items()
        if _part(module) in ("producer", "vocabulary") or module in _PRODUCER_FORMATS
        for target in targets
        if not _internal(target) and target.split(".")[0] not in stdlib and target != "__future__"
    ]
    assert foreign == []


def test_cli_subcommands_never_import_one_another() -> None:
    crossing = [
        f"{module} imports {target}"
        for module, targets in _imports().items()
        if module.startswith("kmemdump.cli.cmd_")
        for target in targets
        if target.startswith("kmemdump.cli.cmd_") and target != module
    ]
    assert crossing == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    graph = {
        # a package's __init__ that re-exports its submodules is not a cycle of the code
        module: {t for t in targets if _internal(t) and not module.startswith(f"{t}.")}
        for module, targets in _imports().items()
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["kmemdump.cli.cmd_show", "kmemdump.producer.api"])
def test_the_reader_sees_imports(module: str) -> None:
    assert any(_internal(t) for t in _imports()[module])
