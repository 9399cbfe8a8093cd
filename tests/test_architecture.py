"""Arrows one way: the core imports none of the layers built on it, and nothing imports the CLI.

Every ``import``/``from`` statement of every module is read with :mod:`ast`, including the ones
inside functions (a lazy import is still an arrow), so a test that passed only because an import
was deferred would fail here.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: package -> the top-level packages of this project it must never import.
FORBIDDEN = {
    "controlnet": {"problems", "solvers", "controlnet_cli"},
    "problems": {"solvers", "controlnet_cli"},
    "solvers": {"problems", "controlnet_cli"},
}


def imported_packages(path: pathlib.Path) -> set[str]:
    """The top-level names every absolute import of the module at ``path`` reaches."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_reader_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\ndef g():\n    from solvers.driver import solve\n    import problems as p\n")
    assert imported_packages(f) == {"os", "solvers", "problems"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package):
    bad = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
           for path in sorted((ROOT / package).rglob("*.py"))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"
