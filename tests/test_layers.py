"""Imports run one way: flows -> pipelines -> {features, models, retrieval}; the three leaves import none of
the project's other packages (docs/architecture.md). Read from the source with `ast`, so an import inside a
function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "pipelines", "features", "models", "retrieval")
ALLOWED = {
    "flows": {"flows", "pipelines", "features", "models", "retrieval"},
    "pipelines": {"pipelines", "features", "models", "retrieval"},
    "features": {"features"},
    "models": {"models"},
    "retrieval": {"retrieval"},
}


def _project_imports(path: Path) -> set[str]:
    """Top-level project packages imported by the module at `path`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(bad)
        for path in sorted((ROOT / package).rglob("*.py"))
        if (bad := _project_imports(path) - ALLOWED[package])
    }
    assert wrong == {}, f"{package} may import only {sorted(ALLOWED[package])}"


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from pipelines import io\n    import flows.cli\n")
    assert _project_imports(bad) == {"pipelines", "flows"}
