"""Every ```python block of the README and of docs/*.md runs as written.

The blocks of one page run in order in one namespace, as a reader pastes them into one session,
from an empty folder (the examples write files such as ``run.npz``). A block preceded by
``<!-- slow -->`` (minutes of training; the text says so) runs only in the slow suite, with the
page's other blocks before it. A block preceded by ``<!-- cluster -->`` needs several processes
started together (``jax.distributed``): it is compiled, and its names checked against what the
page defines, but not run. Shell blocks (``controlnet ...``) are not run here: the command line
has its own tests (tests/test_cli.py).
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
import types
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*(?P<mark>slow|cluster)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def python_blocks(path: Path) -> list[tuple[str | None, str]]:
    """The page's ```python blocks in order, each as ``(mark, code)``; ``mark`` is ``"slow"``,
    ``"cluster"`` or ``None``."""
    return [(m.group("mark"), m.group("code")) for m in _BLOCK.finditer(path.read_text())]


def _names_used(code: str) -> set[str]:
    """Names a block reads without binding them itself (a first approximation: loads minus
    every name the block stores or imports)."""
    tree = ast.parse(code)
    loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    stores = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            stores |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return loads - stores - set(dir(builtins))


def test_the_pages_have_python_blocks():
    counts = {p.name: len(python_blocks(p)) for p in PAGES}
    assert counts["README.md"] >= 1 and counts["usage.md"] >= 5 and counts["architecture.md"] == 3, counts


def _run_page(path: Path, tmp_path, monkeypatch, *, slow: bool):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    # The page as a module of its own (a dataclass looks its module up), as a script would be.
    page = types.ModuleType(f"docs_page_{path.stem}")
    monkeypatch.setitem(sys.modules, page.__name__, page)
    ns = page.__dict__
    ran = 0
    for j, (mark, code) in enumerate(python_blocks(path)):
        where = f"{path.name}, python block {j + 1}"
        compiled = compile(code, where, "exec", dont_inherit=True)  # a syntax error fails here for every block
        if mark == "cluster":
            # It may use only what the page's blocks before it define.
            missing = _names_used(code) - set(ns)
            assert not missing, f"{where} uses {sorted(missing)}, defined nowhere on the page"
            continue
        if mark == "slow" and not slow:
            continue
        exec(compiled, ns)
        ran += 1
    return ns, ran


FAST = [p for p in PAGES if python_blocks(p)]
SLOW = [p for p in PAGES if any(mark == "slow" for mark, _ in python_blocks(p))]


@pytest.mark.parametrize("path", FAST, ids=lambda p: p.name)
def test_the_code_blocks_of_the_page_run_as_written(path, tmp_path, monkeypatch):
    ns, ran = _run_page(path, tmp_path, monkeypatch, slow=False)
    assert ran >= 1
    if path.name == "usage.md":
        # What the text says of the result: a status, one history entry per iteration, a summary.
        r = ns["result"]
        assert r.status in {"max_iters", "max_seconds", "converged", "target", "interrupted", "diverged"}
        assert all(len(v) == r.info["iterations"] for v in r.history.values()), r.history.keys()
        assert (tmp_path / "run.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", SLOW, ids=lambda p: p.name)
def test_the_slow_code_blocks_of_the_page_run_as_written(path, tmp_path, monkeypatch):
    _, ran = _run_page(path, tmp_path, monkeypatch, slow=True)
    assert ran == len([m for m, _ in python_blocks(path) if m != "cluster"])
