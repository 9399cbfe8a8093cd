"""The documentation describes what is: its code examples run as written."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import controlnet as cn
import solvers
from solvers.gd import GDState

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_extension_examples_of_the_architecture_document_work():
    blocks = _python_blocks(DOCS / "architecture.md")
    assert len(blocks) == 3, "a field, an integrator and a solver"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    ns = dict(dataclasses=dataclasses, ClassVar=ClassVar, jax=jax, jnp=jnp, cn=cn, GDState=GDState,
              x=x, y=(np.linalg.norm(x, axis=1) > 1.0).astype(float))
    for block in blocks:
        exec(compile(block, "architecture.md", "exec"), ns)
    problem = ns["problem"]
    c = problem.init_controls(jax.random.PRNGKey(0))
    # The new field through the adjoint: its gradient is jax.grad's.
    _, g, _, _ = cn.gradient(problem, c)
    want = jax.grad(lambda c: cn.objective(problem, c)[0])(c)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # The new integrator is second order: halving h quarters the error (a linear field).
    heun = ns["Heun"]()
    f = lambda z, th: -z  # noqa: E731
    err = [abs(float(jnp.exp(-1.0) - _integrate(heun, f, n))) for n in (20, 40)]
    assert 3.6 < err[0] / err[1] < 4.4, err
    # The new solver runs through solve and lowers J.
    r = solvers.solve(ns["SignGD"](1e-2), problem, c, max_iters=20, progress=False)
    assert r.status == "max_iters" and r.history["loss"][-1] < r.history["loss"][0]
    r = solvers.solve(solvers.GradientDescent(optax.adam(1e-2)), problem, c, max_iters=5, progress=False)
    assert np.all(np.isfinite(r.history["loss"]))


def test_the_solve_example_of_the_usage_page_works(tmp_path, monkeypatch):
    import problems

    block = next(b for b in _python_blocks(DOCS / "usage.md") if "solvers.Budget" in b)
    task = problems.make("ring", samples=40, layers=4)
    monkeypatch.chdir(tmp_path)
    ns = dict(solvers=solvers, problem=task.problem, task=task,
              controls=task.problem.init_controls(jax.random.PRNGKey(0)))
    exec(compile(block.replace("max_iters=2000", "max_iters=30"), "usage.md", "exec"), ns)
    r = ns["result"]
    assert r.status == "max_iters" and len(r.history["loss"]) == 30 and "test_accuracy" in r.info
    assert (tmp_path / "run.npz").exists()


def _integrate(integrator, f, n):
    z = jnp.ones(())
    for _ in range(n):
        z = integrator.step(f, z, None, 1.0 / n)
    return z


def test_the_documentation_site_builds_strictly(tmp_path):
    """``make docs``'s build: mkdocs --strict fails on any warning (a broken link between pages,
    a docstring parameter that is not in the signature, a page missing from the navigation)."""
    import os
    import subprocess
    import sys

    root = DOCS.parent
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=root, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "solvers" / "index.html").read_text()
    assert "Budget" in api and "ExtendedMSA" in api and ":class:" not in api
    assert (tmp_path / "site" / "notebooks" / "09_cnn_as_an_ode" / "index.html").exists()


def test_the_benchmark_page_and_the_readme_speed_table_are_those_of_results_json():
    """docs/benchmarks.md and the README's speed table are written from benchmarks/results.json
    (``python -m benchmarks.report``); a number edited by hand, or a results.json rewritten
    without them, fails here."""
    from benchmarks import report

    assert report.main(["--check"]) == 0
