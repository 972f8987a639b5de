"""The house's floors: which package may import which (DESIGN.md section 4).

`sim` imports nothing above it; `hw` imports `sim`; `validate` imports `sim` and `hw`;
`reports` imports `sim`; the command line imports everything and nothing imports it.
`errors` is the ground floor. Checked twice: statically over every import statement
(lazy ones inside functions included) and by importing each package in a fresh
interpreter and looking at what it loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("errors", "sim", "hw", "validate", "reports", "cli")
ALLOWED = {
    "errors": set(),
    "sim": {"errors"},
    "hw": {"errors", "sim"},
    "validate": {"errors", "sim", "hw"},
    "reports": {"errors", "sim"},
    "cli": {"errors", "sim", "hw", "validate", "reports"},
}
LIBRARIES = ("sim", "hw", "validate", "reports")


def _modules() -> dict[str, Path]:
    """Dotted module name (under hssim) -> file, for every module of the package."""
    out = {"hssim.errors": ROOT / "errors.py", "hssim": ROOT / "__init__.py"}
    for floor in FLOORS[1:]:
        for path in (ROOT / floor).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out["hssim." + ".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every hssim module (or package) this file imports, anywhere in it."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hssim"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hssim":
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import costs`
    return found


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


MODULES = _modules()
GRAPH = {name: {m for m in _imports(name, path) if m in MODULES} for name, path in MODULES.items()}


@pytest.mark.parametrize("floor", FLOORS)
def test_each_floor_imports_only_the_floors_below_it(floor):
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if _floor(name) == floor
        for target in targets
        if _floor(target) not in (None, floor) and _floor(target) not in ALLOWED[floor]
    )
    assert not wrong, "\n".join(wrong)


def test_no_library_module_uses_click():
    users = []
    for name, path in MODULES.items():
        if _floor(name) in LIBRARIES:
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                users += [name for m in mods if m.split(".")[0] == "click"]
    assert not users, f"click belongs to hssim.cli only: {sorted(set(users))}"


def test_the_schedule_ir_imports_only_specs():
    assert GRAPH["hssim.sim.schedule"] <= {"hssim.sim.specs"}, GRAPH["hssim.sim.schedule"]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_loops_between_modules():
    # a package's __init__ re-exporting its own modules is not a loop of the design: leave
    # out edges from a package to the modules inside it
    graph = defaultdict(set)
    for name, targets in GRAPH.items():
        graph[name] = {t for t in targets if not (MODULES[name].name == "__init__.py" and t.startswith(name + "."))}
    assert _cycles(graph) == []


@pytest.mark.parametrize("floor", LIBRARIES)
def test_importing_a_library_in_isolation_loads_nothing_above_it(floor):
    mods = sorted(m for m in MODULES if _floor(m) == floor)
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('hssim.')})))\n"
        "print('click' in sys.modules)\n"
    )
    if floor in ("hw", "validate"):
        pytest.importorskip("torch")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded, click_loaded = res.stdout.split("\n")[:2]
    assert set(loaded.split()) - {floor, "__init__"} <= ALLOWED[floor], loaded
    assert click_loaded == "False"
