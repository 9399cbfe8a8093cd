"""Proximal gradient (ISTA) for the L¹ cost: the smooth gradient, exact zeros, and the optimality
conditions of the composite problem at its fixed point (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from solvers.proximal import ProximalGradient, smooth_gradient, soft_threshold



def _pair(l1=0.01):
    """The same small ring problem with and without the L¹ term."""
    kw = dict(samples=40, layers=4, horizon=2.0, readout_l2=0.01, test_samples=0)
    return problems.make("ring", l1=l1, **kw).problem, problems.make("ring", **kw).problem


def test_soft_threshold():
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 2.5])
    np.testing.assert_array_equal(soft_threshold(x, 1.0), [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5])


@pytest.mark.parametrize("zeros", [False, True])
def test_smooth_gradient_is_the_gradient_without_the_l1_term(zeros):
    p1, p0 = _pair()
    c = p1.init_controls(jax.random.PRNGKey(1))
    if zeros:  # JAX differentiates |x| at 0 as +1: the removed part must follow it
        c = cn.Controls({"W": c.theta["W"].at[:, 0].set(0.0), "b": c.theta["b"].at[1:].set(0.0)}, c.w)
    _, g1, _ = cn.value_and_gradient(p1, c)
    g0 = jax.grad(lambda cc: cn.objective(p0, cc)[0])(c)
    for a, b in zip(jax.tree_util.tree_leaves(smooth_gradient(p1, c, g1)), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_pgd_reaches_a_stationary_point_with_exact_zeros():
    p1, p0 = _pair()
    h_alpha = float(p1.h) * float(p1.l1)
    c0 = p1.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(ProximalGradient(), p1, c0, max_iters=20000, tol=1e-9, progress=False)
    assert r.status == "converged", r.info
    loss = r.history["loss"]
    assert np.all(np.diff(loss) <= 1e-12 * np.abs(loss[:-1]))  # backtracking: J never rises
    x = r.controls
    # 0 ∈ ∇J_s + h α₁ ∂‖θ‖₁, with ∇J_s by plain autodiff of the problem without L¹.
    g = jax.grad(lambda cc: cn.objective(p0, cc)[0])(x)
    th, gt = jax.tree_util.tree_leaves(x.theta), jax.tree_util.tree_leaves(g.theta)
    zero = np.concatenate([np.ravel(np.asarray(a) == 0) for a in th])
    x_, g_ = (np.concatenate([np.ravel(np.asarray(a)) for a in t]) for t in (th, gt))
    assert zero.mean() > 0.2  # many weights exactly zero ...
    assert np.all(np.abs(g_[zero]) <= h_alpha + 1e-8)  # ... where the data's pull is below h α₁
    np.testing.assert_allclose(g_[~zero], -h_alpha * np.sign(x_[~zero]), atol=1e-8)
    for leaf in jax.tree_util.tree_leaves(g.w):
        np.testing.assert_allclose(leaf, 0.0, atol=1e-8)
    assert np.all(r.history["lr"] > 0)
    # The loss went down and the result is a classifier, not the zero network.
    assert r.history["loss"][-1] < r.history["loss"][0] and r.info["accuracy"] > 0.9
    # A subgradient method on the same problem leaves no weight at exactly zero.
    adam = solvers.solve(solvers.GradientDescent(optax.adam(1e-2)), p1, c0, max_iters=300, progress=False)
    assert not any(np.any(np.asarray(a) == 0) for a in jax.tree_util.tree_leaves(adam.controls.theta))


@pytest.mark.parametrize("lr", [0, -1.0, float("nan"), float("inf"), True, "0.1"])
def test_bad_options(lr):
    with pytest.raises(ValueError, match="lr must be a positive number"):
        ProximalGradient(lr=lr)
    with pytest.raises(ValueError, match="grow must be a number >= 1"):
        ProximalGradient(grow=0.5)


def test_l1_stopping_time_is_observed_with_tracking():
    """Ring with tracking and L¹ (T = 8, 20 layers): ‖θ(t)‖ decays along the horizon and the
    last layers are exactly zero, so the L¹ stopping time is reached before T (a subgradient
    method never reaches it: its weights are never exactly zero)."""
    from controlnet.diagnostics.regularization import stopping_time

    task = problems.make("ring", samples=200, layers=20, horizon=8.0, l1=0.01, readout_l2=0.01,
                         tracking=0.1)
    p = task.problem
    r = solvers.solve(ProximalGradient(), p, p.init_controls(jax.random.PRNGKey(0)), max_iters=4000,
                      progress=False)
    assert r.info["accuracy"] == 1.0
    th = r.controls.theta
    norms = np.sqrt(sum(np.sum(np.asarray(a) ** 2, axis=tuple(range(1, np.ndim(a)))) for a in
                        jax.tree_util.tree_leaves(th)))
    assert norms[-1] == 0.0 and norms[0] > 1.0
    assert stopping_time(th, float(p.h), tol=0.0) < float(p.T)
