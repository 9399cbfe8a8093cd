"""Gradient descent end to end, the solve driver's stopping rules, and results on disk."""

import json

import jax
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers


@pytest.fixture(scope="module")
def ring():
    return problems.make("ring", samples=300, layers=20)


def test_ring_width3_reaches_99_percent(ring):
    c0 = ring.problem.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(solvers.GradientDescent(optax.adam(2e-2)), ring.problem, c0, max_iters=800,
                      test=ring.test)
    assert r.status == "max_iters"
    assert r.info["accuracy"] >= 0.99, r.info
    assert r.info["test_accuracy"] >= 0.97, r.info
    h = r.history
    assert h["loss"].shape == h["accuracy"].shape == h["grad_norm"].shape == h["time"].shape == (800,)
    assert h["loss"][-1] < 0.2 * h["loss"][0]


def test_logged_grad_norm_is_the_norm_of_jax_grad(ring):
    # The step's grad_norm (one reduction over the joined leaves) is ‖∇J‖ over θ and w together.
    p = ring.problem
    c = p.init_controls(jax.random.PRNGKey(3))
    gd = solvers.GradientDescent(optax.sgd(0.0))
    _, info = jax.jit(gd.step)(p, gd.init(p, c, key=jax.random.PRNGKey(0)))
    g = jax.grad(lambda c: cn.objective(p, c)[0])(c)
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(g)]
    expected = np.sqrt(sum(np.sum(x**2) for x in leaves))
    assert expected > 0
    np.testing.assert_allclose(float(info["grad_norm"]), expected, rtol=1e-9)


def test_spiral_width2_reaches_99_percent():
    task = problems.make("spiral", samples=300)
    c0 = task.problem.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(solvers.GradientDescent(optax.adam(2e-2)), task.problem, c0, max_iters=1500)
    assert task.problem.width == 2
    assert r.info["accuracy"] >= 0.99, r.info


def test_minibatch_and_autodiff_gradient_paths(ring):
    p = ring.problem
    c0 = p.init_controls(jax.random.PRNGKey(1))
    adj = solvers.GradientDescent(optax.sgd(1e-2), gradient="adjoint")
    ad = solvers.GradientDescent(optax.sgd(1e-2), gradient="autodiff")
    ra = solvers.solve(adj, p, c0, max_iters=5)
    rb = solvers.solve(ad, p, c0, max_iters=5)
    np.testing.assert_allclose(ra.history["loss"], rb.history["loss"], rtol=1e-10)
    mb = solvers.GradientDescent(optax.adam(1e-2), batch_size=32)
    r1 = solvers.solve(mb, p, c0, max_iters=200, seed=3)
    r2 = solvers.solve(mb, p, c0, max_iters=200, seed=3)
    np.testing.assert_array_equal(r1.history["loss"], r2.history["loss"])  # same seed, same history
    assert r1.info["loss"] < 0.5 * r1.history["loss"][0]


def test_stopping_rules(ring):
    p = ring.problem
    c0 = p.init_controls(jax.random.PRNGKey(2))
    gd = solvers.GradientDescent(optax.adam(2e-2))
    r = solvers.solve(gd, p, c0, max_iters=10_000, target_loss=0.3)
    assert r.status == "target" and r.history["loss"][-1] <= 0.3 < r.history["loss"][0]
    r = solvers.solve(gd, p, c0, max_iters=10_000, tol=1e9)
    assert r.status == "converged" and r.info["iterations"] == 1
    r = solvers.solve(gd, p, c0, max_iters=100_000, max_seconds=0.5)
    assert r.status == "max_seconds" and r.info["iterations"] < 100_000


def test_divergence_keeps_last_finite_iterate(ring):
    p = ring.problem
    c0 = p.init_controls(jax.random.PRNGKey(2))
    with pytest.warns(RuntimeWarning, match="diverged at iteration"):  # and says so
        r = solvers.solve(solvers.GradientDescent(optax.sgd(1e12)), p, c0, max_iters=50)
    assert r.status == "diverged" and r.info["diverged_at"] is not None
    assert all(np.all(np.isfinite(l)) for l in jax.tree_util.tree_leaves(r.controls))
    assert np.all(np.isfinite(r.history["loss"]))


def test_result_round_trip(ring, tmp_path):
    p = ring.problem
    c0 = p.init_controls(jax.random.PRNGKey(2))
    r = solvers.solve(solvers.GradientDescent(), p, c0, max_iters=7, test=ring.test)
    r.save(tmp_path / "res")
    back = cn.Result.load(tmp_path / "res")
    assert back.status == r.status and back.info["iterations"] == 7
    for a, b in zip(jax.tree_util.tree_leaves(r.controls), jax.tree_util.tree_leaves(back.controls)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.history["loss"], r.history["loss"])
    meta = json.loads((tmp_path / "res" / "result.json").read_text())
    assert meta["format"] == "controlnet-result" and meta["test_accuracy"] == r.info["test_accuracy"]
    # The loaded controls give the same loss as the saved ones.
    assert float(cn.objective(p, back.controls)[0]) == pytest.approx(r.info["loss"], rel=1e-12)


def test_checkpointed_gradient_descent_follows_the_same_path(ring):
    """checkpoint_block recomputes states in the backward pass: same iterates to round-off."""
    p = ring.problem
    c0 = p.init_controls(jax.random.PRNGKey(4))
    plain = solvers.solve(solvers.GradientDescent(optax.adam(1e-2)), p, c0, max_iters=5)
    ck = solvers.solve(solvers.GradientDescent(optax.adam(1e-2), checkpoint_block=5), p, c0, max_iters=5)
    np.testing.assert_allclose(ck.history["loss"], plain.history["loss"], rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(ck.controls), jax.tree_util.tree_leaves(plain.controls)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="divisor"):
        solvers.solve(solvers.GradientDescent(checkpoint_block=7), p, c0, max_iters=1)
    for bad in (0, -2, 2.5, True, "always"):
        with pytest.raises(ValueError, match="checkpoint_block must be"):
            solvers.GradientDescent(checkpoint_block=bad)


def test_auto_checkpoint_block_follows_the_memory_budget(ring, monkeypatch):
    """"auto" keeps every residual of a small problem and checkpoints blocks of about √N layers
    past the budget, on the same path: the iterates agree to round-off."""
    from solvers.blocks import auto_block

    p = ring.problem  # N = 20 layers
    kept = p.N * p.S * p.width * p.x.dtype.itemsize  # the states the fast gradient keeps
    assert auto_block(p) is None and auto_block(p, budget=kept) is None
    assert auto_block(p, budget=kept - 1) == 4  # the divisor of 20 nearest √20
    c0 = p.init_controls(jax.random.PRNGKey(4))
    plain = solvers.solve(solvers.GradientDescent(optax.adam(1e-2), checkpoint_block=None), p, c0, max_iters=5)
    monkeypatch.setattr(solvers.blocks, "AUTO_CHECKPOINT_BYTES", 0)
    seen = []
    real = cn.value_and_gradient
    monkeypatch.setattr(cn, "value_and_gradient", lambda *a, block=None: seen.append(block) or real(*a, block=block))
    auto = solvers.solve(solvers.GradientDescent(optax.adam(1e-2)), p, c0, max_iters=5)
    assert seen == [4]  # traced once, with blocks of 4
    np.testing.assert_allclose(auto.history["loss"], plain.history["loss"], rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(auto.controls), jax.tree_util.tree_leaves(plain.controls)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
