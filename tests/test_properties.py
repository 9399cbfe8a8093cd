"""Property tests (hypothesis) of the core identities over random small problems, in float64.

For random data, horizons, cost weights and controls on a few fixed structures (vector field,
integrator, depth, widths, loss, which cost terms are present):

- gradient identity: the adjoint gradient ``cn.gradient`` equals ``jax.grad`` of ``J``;
- adjoint consistency: ``p_k = −∂J/∂δ_k``, the sensitivity of ``J`` to a perturbation ``δ_k``
  added to the state at layer ``k`` (``z_k → z_k + δ_k``), for every ``k`` at once;
- Hamiltonian gradient identity: ``∇_{θ_k}J = −∇_θH_k(z_k, p_{k+1}, θ_k) + ∇_{θ_k}(coupling)`` and
  ``∇_w J = ∇_wΦ(z_N, w) − Σ_k ∇_w H_k``.

Structures are few and fixed so that one compiled function per structure serves every example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import controlnet as cn

S = 5  # samples

STRUCTURES = [
    # (dynamics, integrator, N, d_in, width, loss, cost terms present); each compiles once.
    (cn.InnerActivation("tanh"), cn.Euler(), 3, 2, 3, cn.Logistic(),
     ("l2", "l1", "smoothness", "tracking", "readout_l2")),
    (cn.OuterActivation("softplus"), cn.Euler(), 2, 2, 2, cn.SoftmaxCrossEntropy(3), ("l2",)),
    (cn.TwoLayer(4, "sigmoid"), cn.RK4(), 2, 1, 2, cn.SquaredError(2),
     ("smoothness", "tracking", "readout_l2")),
]
WEIGHTS = ("l2", "l1", "smoothness", "tracking", "readout_l2")


@st.composite
def problems_and_controls(draw):
    dyn, integ, N, d_in, width, loss, terms = draw(st.sampled_from(STRUCTURES))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(S, d_in)) * draw(st.floats(0.1, 3.0))
    if isinstance(loss, cn.SquaredError):
        y = rng.normal(size=(S, loss.dim))
    else:
        y = rng.integers(0, loss.n_out if loss.n_out > 1 else 2, size=S)
    weights = {w: (draw(st.floats(1e-3, 1.0)) if w in terms else 0.0) for w in WEIGHTS}
    T = draw(st.floats(0.1, 3.0))
    problem = cn.ControlProblem(dyn, integ, N, width, loss, x, y, T=T, **weights)
    # Random controls of the problem's shapes, drawn in numpy (no compile per structure).
    scale = draw(st.floats(0.2, 2.0))
    shapes = jax.eval_shape(problem.init_controls, jax.random.PRNGKey(0))
    controls = jax.tree_util.tree_map(lambda a: scale * rng.normal(size=a.shape) / np.sqrt(width), shapes)
    return problem, controls


def _J(problem, controls):
    return cn.objective(problem, controls)[0]


def _perturbed_J(problem, controls, deltas):
    """``J`` with ``δ_k`` added to the state at layer ``k``: the definition of the co-state."""

    def layer(z, inputs):
        th, d = inputs
        z_next = problem.step(z, th) + d
        return z_next, z_next

    z0 = problem.z0() + deltas[0]
    _, zs = jax.lax.scan(layer, z0, (controls.theta, deltas[1:]))
    zs = jnp.concatenate([z0[None], zs])
    w = controls.w
    run = sum(problem.running(jax.tree_util.tree_map(lambda a: a[k], controls.theta))
              for k in range(problem.N))
    track = sum(problem.tracking_cost(zs[k], w) for k in range(problem.N))
    return problem.terminal(zs[-1], w) + problem.h * (run + track) + problem.coupling(controls.theta)


@jax.jit
def everything(problem, controls):
    """All quantities the properties compare, in one compiled function per structure."""
    J_adj, g_adj, zs, ps = cn.gradient(problem, controls)
    J_auto, g_auto = jax.value_and_grad(_J, argnums=1)(problem, controls)
    deltas = jnp.zeros_like(zs)
    J_pert, dJ_ddelta = jax.value_and_grad(_perturbed_J, argnums=2)(problem, controls, deltas)
    gH_theta = jax.vmap(lambda z, p, th: cn.grad_theta(problem, z, p, th, controls.w))(
        zs[:-1], ps[1:], controls.theta)
    gH_w = jax.vmap(lambda z, p, th: jax.grad(cn.hamiltonian, argnums=4)(problem, z, p, th, controls.w))(
        zs[:-1], ps[1:], controls.theta)
    d_coupling = jax.grad(problem.coupling)(controls.theta)
    dPhi_dw = jax.grad(problem.terminal, argnums=1)(zs[-1], controls.w)
    return dict(J_adj=J_adj, g_adj=g_adj, J_auto=J_auto, g_auto=g_auto, ps=ps, J_pert=J_pert,
                dJ_ddelta=dJ_ddelta, gH_theta=gH_theta, gH_w=gH_w, d_coupling=d_coupling,
                dPhi_dw=dPhi_dw)


def assert_trees_close(a, b, rtol=1e-10, atol=1e-12):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


COMMON = settings(max_examples=25, deadline=None)


@COMMON
@given(problems_and_controls())
def test_adjoint_gradient_equals_autodiff(pc):
    out = everything(*pc)
    np.testing.assert_allclose(out["J_adj"], out["J_auto"], rtol=1e-13)
    assert_trees_close(out["g_adj"], out["g_auto"])


@COMMON
@given(problems_and_controls())
def test_costates_are_state_sensitivities(pc):
    out = everything(*pc)
    np.testing.assert_allclose(out["J_pert"], out["J_auto"], rtol=1e-13)
    # p_k = −∂J/∂δ_k for k = 0..N (batch-summed co-states: no 1/S rescaling).
    np.testing.assert_allclose(out["ps"], -out["dJ_ddelta"], rtol=1e-10, atol=1e-13)


@COMMON
@given(problems_and_controls())
def test_gradient_is_minus_hamiltonian_gradient(pc):
    problem, controls = pc
    out = everything(problem, controls)
    expect_theta = jax.tree_util.tree_map(lambda gh, dc: -gh + dc, out["gH_theta"], out["d_coupling"])
    assert_trees_close(out["g_auto"].theta, expect_theta)
    expect_w = jax.tree_util.tree_map(lambda dphi, gh: dphi - gh.sum(0), out["dPhi_dw"], out["gH_w"])
    assert_trees_close(out["g_auto"].w, expect_w)
