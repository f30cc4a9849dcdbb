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
