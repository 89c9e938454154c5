"""The package's import graph: no cycles, pytest only in the plugin, nothing imports back up into the plugin.

The graph is read with ``ast`` from every module of ``quant_harness/``, function-level imports included, so a cycle
hidden inside a function is still a cycle. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
``from pkg import name`` is an edge to the module ``pkg.name`` when that is a module, else to ``pkg``; importing
``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so those are edges too (except the importer's own
ancestors, which are already running). A package ``__init__`` that re-exports a higher layer is then a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "quant_harness"
PYTEST_MODULES = ("pytest", "_pytest", "xdist")
MAY_IMPORT_PYTEST = ("quant_harness.plugin", "quant_harness.scale.xdist_scheduler")
"""The plugin package and the xdist scheduler it registers (which subclasses xdist's)."""


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports (every import statement, at any depth), for the package at ``root``."""
    files = {_module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in files else target)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1 + is_pkg)}
        for target in list(edges):
            parts = target.split(".")
            edges.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in files)
        graph[name] = edges - own - {name}
    return graph


def cycles(graph: dict[str, set[str]], prefix: str) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), Tarjan's way."""
    inner = {m: {d for d in deps if d in graph and d.startswith(prefix)} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(inner[v]):
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
            if len(comp) > 1 or v in inner[v]:
                out.append(sorted(comp))

    for v in sorted(inner):
        if v not in index:
            visit(v)
    return out


def _pytest_users(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                  if d.split(".")[0] in PYTEST_MODULES and not m.startswith(MAY_IMPORT_PYTEST))


def _back_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                  if d.startswith("quant_harness.plugin") and not m.startswith("quant_harness.plugin"))


GRAPH = import_graph(PACKAGE)


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(GRAPH, "quant_harness") == []


def test_only_the_plugin_imports_pytest_and_xdist() -> None:
    assert _pytest_users(GRAPH) == []


def test_nothing_imports_back_up_into_the_plugin() -> None:
    assert _back_imports(GRAPH) == []
    importers = sorted(m for m, deps in GRAPH.items() if "quant_harness.plugin" in deps)
    assert importers == [], "the plugin's __init__ is the top: its parts import keys/options, never it"


def test_at_most_eight_plain_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_every_subpackage_says_what_it_owns_and_names_its_public_face() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        doc = ast.get_docstring(tree) or ""
        assert "May import" in doc or "may import" in doc, f"{init}: docstring says what it may import"
        names = [n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        assert names, f"{init}: __all__ names the public face"


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "quant_harness"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_a_back_import_inside_a_function_is_found(tmp_path: Path) -> None:
    """The checks fail on what they guard against: a hidden cycle, pytest in the library, a climb into the plugin."""
    pkg = _write(tmp_path, {
        "__init__.py": "", "study/__init__.py": "from quant_harness.study.grid import cells\n",
        "study/grid.py": "def cells():\n    from quant_harness.steer import settings\n",
        "steer/__init__.py": "", "steer/settings.py": "from quant_harness.study import grid\nimport pytest\n",
        "plugin/__init__.py": "from quant_harness.plugin import keys\n", "plugin/keys.py": "import pytest\n",
        "report/hooks.py": "from quant_harness.plugin import keys\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from quant_harness import typed\n",
    })
    graph = import_graph(pkg)
    assert cycles(graph, "quant_harness") == [
        ["quant_harness.steer.settings", "quant_harness.study", "quant_harness.study.grid"]]
    assert _pytest_users(graph) == ["quant_harness.steer.settings imports pytest"]
    assert _back_imports(graph) == ["quant_harness.report.hooks imports quant_harness.plugin",
                                   "quant_harness.report.hooks imports quant_harness.plugin.keys"]


@pytest.mark.parametrize("module", ["quant_harness.study", "quant_harness.steer.settings", "quant_harness.sae"])
def test_a_study_loads_without_torch(module: str) -> None:
    """Settings and the grid are torch-free, so a worker can pin its GPUs after the study is loaded."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
