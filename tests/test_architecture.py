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


#: Code lines (after the docstring) a function of the library may have without saying why.
MAX_FUNCTION_LINES = 80


def long_functions(path: pathlib.Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name (n lines)`` for every function of ``path`` whose body after its docstring is over
    ``limit`` lines, unless the docstring gives the reason (a line starting ``Long because``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node) or ""
        body = node.body[1:] if doc and len(node.body) > 1 else node.body
        n = node.end_lineno - body[0].lineno + 1
        if n > limit and "Long because" not in doc:
            out.append(f"{node.name} ({n} lines)")
    return out


def test_the_length_reader_counts_code_not_docstrings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('def f():\n    """' + "doc\n" * 200 + '"""\n    return 1\n\n\ndef g():\n' + "    x = 1\n" * 81)
    assert long_functions(f) == ["g (81 lines)"]


@pytest.mark.parametrize("package", ["controlnet", "solvers", "problems", "controlnet_cli"])
def test_every_function_reads_in_one_sitting(package):
    long = {str(p.relative_to(ROOT)): v for p in sorted((ROOT / package).rglob("*.py")) if (v := long_functions(p))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them, or say why: 'Long because'): {long}"
