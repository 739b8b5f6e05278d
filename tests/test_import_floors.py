"""The one-way floors, read from the source (``ast``): core <- data_prep <- (library) <- commands.

- the core (``lesionjax.core``) imports nothing else of the project;
- ``data_prep`` imports only itself and the core;
- the ``lesionjax`` library imports only itself and the core, never ``data_prep`` or a command;
- the commands on the top floor (``TOP_FLOOR``) may import anything;
- no import cycle, counting imports inside functions too.

The checker is tested on a small made-up tree first, so that a broken rule is seen to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lesionjax", "data_prep")
# The commands and the task orchestration behind the main job (predict, export and experiment
# are the planned commands of the design card).
TOP_FLOOR = (
    "lesionjax.main",
    "lesionjax.evaluate",
    "lesionjax.predict",
    "lesionjax.predict_inputs",
    "lesionjax.export",
    "lesionjax.prep",
    "lesionjax.experiment",
    "lesionjax.cli",
    "lesionjax.tasks",
)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """{module: the project modules it imports}, from every ``import`` and ``from .. import``
    statement anywhere in the file; ``from pkg import name`` counts as ``pkg.name`` when that is
    a module, else as ``pkg``."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                    for a in node.names
                ]
            else:
                continue
            deps.update(t for t in targets if t.split(".")[0] in packages and t != name)
        graph[name] = deps
    return graph


def floor(module: str) -> str:
    if module == "lesionjax.core" or module.startswith("lesionjax.core."):
        return "core"
    if module.split(".")[0] == "data_prep":
        return "data_prep"
    if any(module == t or module.startswith(t + ".") for t in TOP_FLOOR):
        return "top"
    return "library"


ALLOWED = {
    "core": {"core"},
    "data_prep": {"core", "data_prep"},
    "library": {"core", "library"},
    "top": {"core", "data_prep", "library", "top"},
}


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} ({floor(m)}) imports {d} ({floor(d)})"
        for m, deps in graph.items()
        for d in deps
        if floor(d) not in ALLOWED[floor(m)]
    )


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules larger than one (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_floor_violation_and_a_cycle(tmp_path):
    _write(
        tmp_path,
        {
            "lesionjax/__init__.py": "",
            "lesionjax/core/__init__.py": "",
            "lesionjax/core/records.py": "import numpy\n",
            "lesionjax/eval/__init__.py": "",
            # a lazy import inside a function is still an import
            "lesionjax/eval/report.py": "def f():\n    from lesionjax.eval import figures\n",
            "lesionjax/eval/figures.py": "from lesionjax.eval.report import f\n",
            "lesionjax/data/__init__.py": "",
            "lesionjax/data/prepare.py": "from data_prep.build import build\n",
            "lesionjax/main.py": "import data_prep.build\nfrom lesionjax.core import records\n",
            "data_prep/__init__.py": "",
            "data_prep/build.py": (
                "from lesionjax.core import records\nimport lesionjax.data.prepare\n"
            ),
        },
    )
    graph = import_graph(tmp_path)
    assert graph["lesionjax.eval.report"] == {"lesionjax.eval.figures"}
    assert graph["lesionjax.main"] == {"data_prep.build", "lesionjax.core.records"}
    assert floor_violations(graph) == [
        "data_prep.build (data_prep) imports lesionjax.data.prepare (library)",
        "lesionjax.data.prepare (library) imports data_prep.build (data_prep)",
    ]
    assert import_cycles(graph) == [
        ["data_prep.build", "lesionjax.data.prepare"],
        ["lesionjax.eval.figures", "lesionjax.eval.report"],
    ]


@pytest.fixture(scope="module")
def project_graph():
    return import_graph(REPO)


def test_every_floor_imports_only_the_floors_below(project_graph):
    assert {floor(m) for m in project_graph} == {"core", "data_prep", "library", "top"}
    assert floor_violations(project_graph) == []


def test_no_import_cycles(project_graph):
    assert import_cycles(project_graph) == []
