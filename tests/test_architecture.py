"""Arrows one way, modules that read in one sitting, and no private name crossing a module.

Every ``import``/``from`` statement of every module is read with :mod:`ast`, including the ones
inside functions (a lazy import is still an arrow), so a test that passed only because an import
was deferred would fail here. The library's modules are at most :data:`MAX_MODULE_LINES` lines,
its functions at most :data:`MAX_FUNCTION_LINES` code lines unless the docstring says why, and no
module imports another's private (``_x``) name.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: package -> the top-level packages of this project it must never import.
FORBIDDEN = {
    "controlnet": {"problems", "solvers", "studies", "controlnet_cli"},
    "problems": {"solvers", "studies", "controlnet_cli"},
    "solvers": {"problems", "studies", "controlnet_cli"},
    "studies": {"controlnet_cli"},
}

#: The library's packages: the length and privacy rules apply to every module in them.
LIBRARY = ["controlnet", "solvers", "problems", "controlnet_cli", "studies"]


def modules(package: str) -> list[pathlib.Path]:
    """Every module of ``package`` (none if the package does not exist)."""
    return sorted((ROOT / package).rglob("*.py"))


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
           for path in modules(package)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


#: Code lines (after the docstring) a function of the library may have without saying why.
MAX_FUNCTION_LINES = 60

#: Lines a module of the library may have (one concept per module, read in one sitting).
MAX_MODULE_LINES = 450


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
    f.write_text('def f():\n    """' + "doc\n" * 200 + '"""\n    return 1\n\n\ndef g():\n' + "    x = 1\n" * 61
                 + '\n\ndef h():\n    """Long because it must."""\n' + "    x = 1\n" * 70)
    assert long_functions(f) == ["g (61 lines)"]


@pytest.mark.parametrize("package", LIBRARY)
def test_every_function_reads_in_one_sitting(package):
    long = {str(p.relative_to(ROOT)): v for p in modules(package) if (v := long_functions(p))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them, or say why: 'Long because'): {long}"


@pytest.mark.parametrize("package", LIBRARY)
def test_every_module_reads_in_one_sitting(package):
    long = {str(p.relative_to(ROOT)): n for p in modules(package)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (one concept per module: split them): {long}"


def private_imports(path: pathlib.Path) -> list[str]:
    """``module._name`` for every private name (one leading underscore, not a dunder) that
    ``path`` imports from another module (``from x import _y``, relative imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            out += [f"{module}.{a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_the_privacy_reader_sees_relative_and_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .gd import _joined, auto_block\nfrom x import __version__\n"
                 "def g():\n    from controlnet.problem import _total\n")
    assert private_imports(f) == [".gd._joined", "controlnet.problem._total"]


@pytest.mark.parametrize("package", LIBRARY)
def test_no_private_name_is_imported_from_another_module(package):
    bad = {str(p.relative_to(ROOT)): v for p in modules(package) if (v := private_imports(p))}
    assert not bad, f"private names imported across modules (make them public or move them): {bad}"
