"""The package's floors: every import of ``daemon/`` read from the source (``ast``), none running from
a lower floor to a higher one, and no circle of imports.

The floors, ground first. A module may import from its own subpackage and from any lower floor;
two subpackages on one floor do not import each other. Imports inside functions and under
``TYPE_CHECKING`` count too: a lazy import still ties the lower floor to the higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "daemon"

FLOORS: list[list[str]] = [
    [
        "daemon",
        "daemon.errors",
        "daemon.logs",
        "daemon.sizing",
        "daemon.states",
        "daemon.messages",
        "daemon.active_hours",
    ],  # the ground: no other floor
    ["daemon.folders"],  # the Maildir part: files and folders only
    ["daemon.engine", "daemon.encode"],  # frames from an image; files from frames
    ["daemon.settings"],  # config, config_sections, config_service (they check values the two above know)
    ["daemon.prompting"],  # prompts written from the image by a vision-language model
    ["daemon.job"],  # one job, from its inbox files to its JOB.json
    ["daemon.listeners"],  # who hears of finished jobs
    ["daemon.service"],  # the daemon's loop and threads
    ["daemon.cluster"],  # the Ray executor, one of the service's executors
    ["daemon.cli"],  # the command line assembles everything
]
# Modules that share a floor as one part, though they are files of the package's top.
PARTS = {
    "daemon.config": "daemon.settings",
    "daemon.config_sections": "daemon.settings",
    "daemon.config_service": "daemon.settings",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports (anywhere in its body)."""
    modules = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
        graph[name] = {t for t in found if t in modules and t != name}
    return graph


def _part(module: str) -> str:
    """The subpackage (or top-level module) a module belongs to: ``daemon.job.prepare`` -> ``daemon.job``."""
    if module in PARTS:
        return PARTS[module]
    parts = module.split(".")
    return ".".join(parts[:2])


def _floor(module: str) -> int:
    part = _part(module)
    for i, floor in enumerate(FLOORS):
        if part in floor:
            return i
    raise AssertionError(f"{module} ({part}) is on no floor: add it to FLOORS in {Path(__file__).name}")


GRAPH = _imports()


def test_every_module_has_a_floor() -> None:
    for module in GRAPH:
        _floor(module)


def test_no_import_runs_back_up() -> None:
    upward = sorted(
        f"{src} (floor {_floor(src)}) imports {dst} (floor {_floor(dst)})"
        for src, targets in GRAPH.items()
        for dst in targets
        if _part(src) != _part(dst) and _floor(dst) >= _floor(src)
    )
    assert upward == []


def test_no_circle_of_imports() -> None:
    """Tarjan's strongly connected components: any with more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
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
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == []


@pytest.mark.parametrize(
    "src, dst",
    [("daemon.engine.oom", "daemon.job.image"), ("daemon.folders.scan", "daemon.service.loop")],
)
def test_the_rule_catches_an_upward_import(src: str, dst: str) -> None:
    """The floors above are not vacuous: these imports would be refused."""
    assert _part(src) != _part(dst) and _floor(dst) > _floor(src)
