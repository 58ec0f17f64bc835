"""The package's floors (docs/design.rst, "Layers"), enforced on its import graph.

Every `import` of a module of the package is read with `ast`, wherever it stands (a
function-level import is as real a dependency as a top-level one); only imports under
`if TYPE_CHECKING:` are left out, since they never run. A module may import its own
package and any lower floor, never a higher floor or a sibling on its own floor, and no
files may import each other in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import localdirector

PACKAGE = Path(localdirector.__file__).parent
ROOT = PACKAGE.parent

# The allowed directions, written once: each top-level part of the package and its floor.
# A module may import parts of lower floors; parts sharing a floor are independent.
FLOORS: dict[str, int] = {
    "__init__": 0, "model": 0, "syslog": 0,
    "shell": 1, "dataplane": 1,
    "commands": 2,
    "appliance": 3, "services": 3, "runtime": 3, "listeners": 3,
    "access": 4, "lab": 4, "monitor": 4, "probes": 4, "failover": 4, "bgp": 4,
    "cli": 5, "__main__": 6,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _part(module: str) -> str:
    """The top-level part a module belongs to (`localdirector` itself is `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _known(name: str) -> str | None:
    """The package module an imported name lives in, or None outside the package."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_only(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [f"{base}.{alias.name}" for alias in node.names]
    found = {_known(name) for name in names}
    return {name for name in found if name is not None and name != module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_part_has_a_floor() -> None:
    assert {_part(m) for m in MODULES} <= FLOORS.keys()


def test_no_import_goes_up_or_sideways() -> None:
    wrong = sorted(f"{source} -> {target}"
                   for source, targets in GRAPH.items() for target in targets
                   if _part(source) != _part(target)
                   and FLOORS[_part(target)] >= FLOORS[_part(source)])
    assert wrong == []


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for start in GRAPH:
        if start in index:
            continue
        work = [(start, iter(sorted(GRAPH[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(GRAPH[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def test_no_import_circles() -> None:
    assert _circles() == []


def test_the_checker_sees_violations(tmp_path: Path, monkeypatch) -> None:
    """The walk itself: relative, absolute and function-level imports are found,
    type-only ones are not, and a circle is reported."""
    example = tmp_path / "example.py"
    example.write_text("from typing import TYPE_CHECKING\n"
                       "from ..cli import main\n"
                       "import localdirector.shell.grammar\n"
                       "if TYPE_CHECKING:\n    from ..lab import netns\n"
                       "def later():\n    from . import director\n")
    assert _imports("localdirector.model.example", example) == {
        "localdirector.cli", "localdirector.shell.grammar", "localdirector.model.director"}
    monkeypatch.setitem(GRAPH, "localdirector.model.addr",
                        GRAPH["localdirector.model.addr"] | {"localdirector.model.state"})
    monkeypatch.setitem(GRAPH, "localdirector.model.state",
                        GRAPH["localdirector.model.state"] | {"localdirector.model.addr"})
    assert ["localdirector.model.addr", "localdirector.model.state"] in _circles()


_NO_LAB = """
import sys
from localdirector import cli
status = cli.main(["--check", sys.argv[1]])
lab = sorted(m for m in sys.modules if m.startswith("localdirector.lab"))
print(lab)
sys.exit(status)
"""


def test_check_and_production_never_import_the_lab(tmp_path: Path) -> None:
    config = tmp_path / "startup-config"
    config.write_text("virtual 192.0.2.10:80\n")
    result = subprocess.run([sys.executable, "-c", _NO_LAB, str(config)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


MAX_LINES = 450   # docs/design.rst, "Layers": small modules with one job each


def test_no_module_is_over_the_size_limit() -> None:
    """A module of the package or the benchmarks past MAX_LINES holds more than one job:
    cut it at its seam."""
    paths = [*_modules().values(), *sorted((ROOT / "benchmarks").glob("*.py"))]
    over = {str(path.relative_to(ROOT)): lines for path in paths
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
