"""Exact per-layer maximization of MSA's augmented Hamiltonian (CasADi + IPOPT)."""

import jax
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from solvers import msa, msa_exact


@pytest.fixture(scope="module")
def layer_problem():
    task = problems.make("ring", samples=40, layers=5, test_samples=0, tracking=0.1, smoothness=0.05)
    p = task.problem
    c = p.init_controls(jax.random.PRNGKey(0))
    zs = cn.forward(p, c.theta)
    return p, c, msa.layer_data(p, c, zs, cn.costates(p, c, zs))


def test_casadi_layer_objective_is_the_inner_objective(layer_problem):
    """Same H̃_k − C_k as the JAX inner objective, up to the constant it drops (float64)."""
    p, c, data = layer_problem
    th = jax.tree_util.tree_map(lambda a: a + 0.1 * np.sin(np.arange(a.size).reshape(a.shape)), c.theta)
    cas = msa_exact.layer_objective(p, data, th, 3.0) - msa_exact.layer_objective(p, data, c.theta, 3.0)
    jx = np.asarray(msa.inner_objective(p, data, th, 3.0, "autodiff")
                    - msa.inner_objective(p, data, c.theta, 3.0, "autodiff"))
    np.testing.assert_allclose(cas, jx, rtol=1e-10, atol=1e-13)


def test_exact_maximizer_is_stationary_and_beats_the_inner_steps(layer_problem):
    p, c, data = layer_problem
    exact = jax.jit(msa_exact.maximize_exactly)(p, data, 3.0)
    steps = msa.maximize_hamiltonians(p, data, 3.0, optax.sgd(0.5 / (3.0 * p.h**2)), 10)
    v_exact = np.asarray(msa.inner_objective(p, data, exact, 3.0))
    v_steps = np.asarray(msa.inner_objective(p, data, steps, 3.0))
    v_start = np.asarray(msa.inner_objective(p, data, data.theta, 3.0))
    assert np.all(v_exact >= v_steps - 1e-12) and np.all(v_exact > v_start)
    g = msa.inner_gradient(p, data, exact, 3.0)
    assert max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(g)) < 1e-8


def test_emsa_with_exact_layers_decreases_J(layer_problem):
    p, c, _ = layer_problem
    r = solvers.solve(msa.ExtendedMSA(inner="ipopt"), p, c, max_iters=8)
    loss = r.history["loss"]
    assert r.status == "max_iters" and np.all(np.diff(loss) <= 1e-12) and loss[-1] < 0.7 * loss[0]


def test_exact_layers_refuse_l1():
    p = problems.make("ring", samples=20, layers=2, test_samples=0, l1=1e-3).problem
    c = p.init_controls(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="smooth running cost"):
        solvers.solve(msa.ExtendedMSA(inner="ipopt"), p, c, max_iters=1)
    with pytest.raises(ValueError, match="inner must be"):
        msa.ExtendedMSA(inner="exact")
