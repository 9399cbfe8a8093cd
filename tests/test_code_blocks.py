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
import json
import os
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import matplotlib
import numpy as np
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
    assert counts["README.md"] >= 1 and counts["usage.md"] >= 5 and counts["architecture.md"] >= 3, counts


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
            missing = _names_used(code)
            assert not missing, f"{where} is run alone by every process, but uses {sorted(missing)}"
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


CLUSTER = [pytest.param(code, id=f"{p.name}-block{j + 1}")
           for p in PAGES for j, (mark, code) in enumerate(python_blocks(p)) if mark == "cluster"]

# One process of a cluster block: the arguments a cluster would give jax.distributed.initialize
# (detected there) are localhost's; the block itself runs as written, then reports its result.
_PROCESS = """
import json, sys
import jax
pid, port, block = int(sys.argv[1]), sys.argv[2], open(sys.argv[3]).read()
jax.config.update("jax_cpu_collectives_implementation", "gloo")
detected = jax.distributed.initialize
jax.distributed.initialize = lambda: None if pid < 0 else detected(  # pid -1: one process alone
    coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid, initialization_timeout=120)
ns = {"__name__": "__main__"}
exec(compile(block, "cluster block", "exec", dont_inherit=True), ns)
r = ns["result"]
print("RESULT " + json.dumps({"process": jax.process_index(), "count": jax.process_count(),
                              "rows": int(ns["mine"].S), "status": r.status,
                              "loss": [float(v) for v in r.history["loss"]]}), flush=True)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("code", CLUSTER)
def test_the_cluster_blocks_run_in_two_processes(code, tmp_path):
    """Both processes finish with the same history, each having given half of the rows; the
    history is that of the same solve on all the rows in one process (to float32 round-off)."""
    script = tmp_path / "block.py"
    script.write_text(code)
    port = str(_free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS, str(i), port, str(script)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1, -1)]
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-3000:]
            outs.append(json.loads([l for l in stdout.splitlines() if l.startswith("RESULT ")][-1][7:]))
    finally:
        for proc in procs:
            proc.kill()
    first, second, alone = outs
    assert [(o["process"], o["count"]) for o in outs] == [(0, 2), (1, 2), (0, 1)]
    assert first["rows"] + second["rows"] == alone["rows"] and first["rows"] == second["rows"]
    assert first["loss"] == second["loss"] and first["status"] == alone["status"] == "max_iters"
    np.testing.assert_allclose(first["loss"], alone["loss"], rtol=1e-4)
