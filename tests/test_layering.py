"""The layering rules of DESIGN.md: libs/ imports neither Metaflow nor steps/; steps/ never imports Metaflow."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):  # every import, also those inside functions
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "libs").rglob("*.py")), ids=lambda p: p.name)
def test_libs_import_neither_metaflow_nor_steps(path):
    bad = _imports(path) & {"metaflow", "steps", "flows"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: libs/ must stay free of them"


@pytest.mark.parametrize("path", sorted((ROOT / "steps").rglob("*.py")), ids=lambda p: p.name)
def test_steps_do_not_import_metaflow(path):
    bad = _imports(path) & {"metaflow", "flows"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: only flows/ may"


def test_the_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from metaflow import current\n")
    assert "metaflow" in _imports(bad)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _project_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (top level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(n for n in names if n in modules)
    return found


def _import_cycles() -> list[list[str]]:
    files = [p for folder in ("libs", "steps", "flows", "bench") for p in sorted((ROOT / folder).rglob("*.py"))]
    modules = {_module_name(p): p for p in files}
    graph = {m: _project_imports(p, set(modules)) - {m} for m, p in modules.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_no_module_imports_one_that_imports_it_back():
    assert _import_cycles() == [], "import cycles (also through imports inside functions)"


def test_no_sys_path_edits_and_no_shadowed_standard_library():
    import sys

    for folder in ("libs", "steps", "flows", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            assert "sys.path.insert" not in path.read_text() and "sys.path[:]" not in path.read_text(), \
                f"{path.relative_to(ROOT)} edits sys.path: import the installed package instead (pip install -e .)"
    for folder in ("libs", "steps", "flows", "bench"):
        for path in (ROOT / folder).glob("*.py"):
            assert path.stem not in sys.stdlib_module_names, \
                f"{path.relative_to(ROOT)} shadows the standard library's {path.stem!r} when its folder is on the path"
