"""The documentation describes what is: its code examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import solvers

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_extension_examples_of_the_architecture_document_work(monkeypatch):
    """The three blocks run as written (their own imports and data) and do what the text says."""
    blocks = _python_blocks(DOCS / "architecture.md")
    assert len(blocks) == 3, "a field, an integrator and a solver"
    page = types.ModuleType("docs_page_architecture")
    monkeypatch.setitem(sys.modules, page.__name__, page)
    ns = page.__dict__
    for block in blocks:
        exec(compile(block, "architecture.md", "exec", dont_inherit=True), ns)
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
    """The first block of "Solving from Python", as written but for fewer iterations."""
    block = next(b for b in _python_blocks(DOCS / "usage.md") if "solvers.Budget" in b)
    assert "max_iters=300" in block
    monkeypatch.chdir(tmp_path)
    page = types.ModuleType("docs_page_usage")
    monkeypatch.setitem(sys.modules, page.__name__, page)
    exec(compile(block.replace("max_iters=300", "max_iters=30"), "usage.md", "exec", dont_inherit=True),
         page.__dict__)
    r = page.result
    assert r.status == "max_iters" and len(r.history["loss"]) == 30 and "test_accuracy" in r.info
    assert all(len(v) == 30 for v in r.history.values()), "one entry per iteration, per quantity"
    assert (tmp_path / "run.npz").exists()


def _integrate(integrator, f, n):
    z = jnp.ones(())
    for _ in range(n):
        z = integrator.step(f, z, None, 1.0 / n)
    return z


_SITE: dict = {}


def build_site(tmp_path_factory):
    """``make docs``'s build (``mkdocs build --strict``) into a temporary folder, once per test
    process: ``(completed process, site folder)``. The site tests (here and in
    tests/test_browser.py) share it through the ``site`` fixture."""
    if "site" not in _SITE:
        out = tmp_path_factory.mktemp("site")
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                              cwd=DOCS.parent, capture_output=True, text=True, env=env, timeout=600)
        _SITE["site"] = (done, out)
    return _SITE["site"]


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The built site's folder; fails the test when the strict build failed."""
    done, out = build_site(tmp_path_factory)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_the_documentation_site_builds_strictly(site):
    """``make docs``'s build: mkdocs --strict fails on any warning (a broken link between pages,
    a docstring parameter that is not in the signature, a page missing from the navigation)."""
    api = (site / "api" / "solvers" / "index.html").read_text()
    assert "Budget" in api and "ExtendedMSA" in api and ":class:" not in api
    assert (site / "notebooks" / "09_cnn_as_an_ode" / "index.html").exists()


def test_the_site_ships_mathjax_and_loads_it_from_itself(site):
    """MathJax is in the site (no network needed), every page loads it by a relative path, and
    the notebook pages no longer carry nbconvert's MathJax 2 loader (an empty ``src``)."""
    assert (site / "assets" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
    assert list((site / "assets" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    pages = sorted(site.rglob("index.html"))
    assert len(pages) >= 15
    for page in pages:
        html = page.read_text()
        if "md-content" not in html:
            continue
        srcs = re.findall(r'<script src="([^"]*)"', html)
        assert any(s.endswith("assets/mathjax/tex-chtml.js") for s in srcs), page
        assert not any(s == "" or s.startswith(("http:", "https:", "//")) for s in srcs), (page, srcs)


def test_no_tex_in_titles_navigation_or_table_of_contents(site):
    """TeX is rendered in a page's text only: a ``$`` or a backslash command in a ``<title>``,
    a navigation entry or a table-of-contents entry would show raw."""
    tex = re.compile(r"\$|\\[A-Za-z]+")
    for page in sorted(site.rglob("index.html")):
        html = page.read_text()
        texts = re.findall(r"<title>(.*?)</title>", html, re.S)
        texts += re.findall(r'class="md-nav__link[^"]*"[^>]*>(.*?)</a>', html, re.S)
        texts += re.findall(r'<span class="md-ellipsis">(.*?)</span>', html, re.S)
        for text in texts:
            assert not tex.search(text), f"{page.relative_to(site)}: TeX in {text.strip()!r}"


def test_the_benchmark_page_and_the_readme_speed_table_are_those_of_results_json():
    """docs/benchmarks.md and the README's speed table are written from benchmarks/results.json
    (``python -m benchmarks.report``); a number edited by hand, or a results.json rewritten
    without them, fails here."""
    from benchmarks import report

    assert report.main(["--check"]) == 0
