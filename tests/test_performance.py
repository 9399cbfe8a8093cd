"""The fast paths compute the same mathematics, and iterating never recompiles.

- the layer pull-back the backward scan uses (``J_zΨᵀp − h∇_zL``, ``J_θΨᵀp``, ``−h∇_wL``, plus
  ``−h∇R``) is the gradient of :func:`controlnet.hamiltonian`;
- ``value_and_gradient`` (no co-state trajectory) and its checkpointed form (``block=B``: states
  kept every ``B`` layers, recomputed in the backward pass) equal :func:`controlnet.gradient`
  and ``jax.grad`` of the objective, for every running-cost term, in float64;
- the checkpointed path really keeps less: XLA's temporary buffer of the compiled gradient
  shrinks with ``block ≈ √N`` against the full trajectory, and without blocks it holds the
  states alone (each layer re-linearized from its state in the backward pass);
- a solve traces and compiles its step once, however many iterations it runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import solvers
from controlnet.adjoint import linearize_layer


def _problem(N=12, S=40, **weights):
    key = jax.random.PRNGKey(3)
    x = jax.random.normal(key, (S, 2))
    y = (jnp.sum(x**2, axis=1) > 1.0).astype(jnp.int32)
    return cn.ControlProblem(cn.InnerActivation("tanh"), cn.Euler(), N, 3, cn.Logistic(), x, y,
                             T=2.0, **weights)


TERMS = {
    "l2": dict(l2=1e-2),
    "l1+smoothness": dict(l1=1e-3, smoothness=1e-2),
    "tracking": dict(l2=1e-3, tracking=0.3),
}


def _close(a, b, rtol=1e-11, atol=1e-13):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def test_layer_pull_back_is_the_gradient_of_the_hamiltonian():
    p = _problem(tracking=0.3, l2=1e-2)
    c = p.init_controls(jax.random.PRNGKey(0))
    z = jax.random.normal(jax.random.PRNGKey(1), (p.S, 3))
    q = jax.random.normal(jax.random.PRNGKey(2), (p.S, 3))
    th = jax.tree_util.tree_map(lambda a: a[4], c.theta)

    @jax.jit
    def pulled(z, q):
        gz, gth = linearize_layer(p, z.T, th).vjp(q.T)
        dLz, dLw = jax.grad(p.tracking_cost, argnums=(0, 1))(z, c.w)
        dR = jax.grad(p.running)(th)
        return (gz.T - p.h * dLz, jax.tree_util.tree_map(lambda a, b: a - p.h * b, gth, dR),
                jax.tree_util.tree_map(lambda g: -p.h * g, dLw))

    gz, gth, gw = pulled(z, q)
    dz, dth, dw = jax.jit(jax.grad(cn.hamiltonian, argnums=(1, 3, 4)))(p, z, q, th, c.w)
    _close((gz, gth, gw), (dz, dth, dw), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("terms", sorted(TERMS))
@pytest.mark.parametrize("block", [None, 1, 4])
def test_lean_and_checkpointed_gradient_equal_the_plain_one(terms, block):
    p = _problem(**TERMS[terms])
    c = p.init_controls(jax.random.PRNGKey(0))
    J, g, zs, _ = _gradient(p, c)
    J2, g2, zN = _lean[block](p, c)
    np.testing.assert_allclose(J2, J, rtol=1e-13)
    np.testing.assert_allclose(zN, zs[-1], rtol=1e-13, atol=1e-14)
    _close(g2, g)
    _close(g2, _autodiff(p, c), rtol=1e-9, atol=1e-12)  # and autodiff, independently


@pytest.mark.parametrize("terms", sorted(TERMS))
def test_gradient_from_hamiltonian_is_the_gradient(terms):
    """What MSA and discrete MSA log as ∇J, from the backward pass's Hamiltonian gradients."""
    p = _problem(**TERMS[terms])
    c = p.init_controls(jax.random.PRNGKey(0))
    _, g, zs, _ = _gradient(p, c)
    _, g_theta, g_w = jax.jit(cn.backward)(p, c, zs)
    _close(jax.jit(cn.gradient_from_hamiltonian)(p, c, g_theta, g_w, zs[-1]), g)


_gradient = jax.jit(cn.gradient)
_autodiff = jax.jit(jax.grad(lambda p, c: cn.objective(p, c)[0], argnums=1))
_lean = {b: jax.jit(lambda p, c, b=b: cn.value_and_gradient(p, c, block=b)) for b in [None, 1, 4]}


@pytest.mark.parametrize("block", [0, 5, 13, 2.0])
def test_block_must_divide_N(block):
    p = _problem()
    c = p.init_controls(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="divisor of the number of layers N=12"):
        cn.value_and_gradient(p, c, block=block)


def _temp_bytes(f, p, c):
    """XLA's temporary buffer of ``jit(f)`` compiled for ``(p, c)``."""
    ma = jax.jit(f).lower(p, c).compile().memory_analysis()
    if ma is None:
        pytest.skip("this backend gives no memory analysis")
    return ma.temp_size_in_bytes


def test_checkpointing_keeps_less_memory():
    # 400 layers x 2,000 samples x width 3: the full trajectory is 400*2000*3*8 B ≈ 19 MB.
    p = _problem(N=400, S=2_000, l2=1e-3)
    c = jax.eval_shape(p.init_controls, jax.random.PRNGKey(0))
    trajectory = 401 * 2_000 * 3 * 8
    full = _temp_bytes(lambda p, c: cn.gradient(p, c)[:2], p, c)
    lean = _temp_bytes(lambda p, c: cn.value_and_gradient(p, c, block=20), p, c)
    assert full >= trajectory  # the plain path holds all states
    assert lean < trajectory / 4  # blocks of 20: 20 boundary + 21 block states ≈ trajectory/10
    assert lean < full / 4


@pytest.mark.parametrize("terms", list(TERMS))
def test_flow_and_backward_equals_forward_then_backward(terms):
    # One forward pass kept for the pull-back, the read-out chosen after it (MSA's Newton
    # step): the same states, co-states and Hamiltonian gradients as cn.forward + cn.backward.
    p = _problem(**TERMS[terms])
    c = p.init_controls(jax.random.PRNGKey(1))
    w = jax.tree_util.tree_map(lambda a: a + 0.3, c.w)  # not the w of any earlier pass

    @jax.jit
    def run(p, theta, w):
        zs, pull = cn.flow_and_backward(p, theta)
        return zs, pull(w)

    zs, (ps, g_theta, g_w) = run(p, c.theta, w)
    zs_ref = cn.forward(p, c.theta)
    ref = cn.backward(p, cn.Controls(c.theta, w), zs_ref)
    _close(zs, zs_ref)
    _close((ps, g_theta, g_w), ref)
    assert float(jnp.max(jnp.abs(ps[0]))) > 0  # the recursion reached the first layer


@pytest.mark.parametrize("terms", [dict(l2=1e-3), dict(l2=1e-3, tracking=0.3)], ids=["l2", "tracking"])
def test_fast_gradient_keeps_only_the_states(terms):
    # Each layer is re-linearized from its state in the backward pass (jax.checkpoint): the
    # compiled gradient holds one trajectory of states, not the field's residuals as well
    # (without the checkpoint: 3.0x the trajectory, 5.0x with tracking).
    p = _problem(N=400, S=2_000, **terms)
    c = jax.eval_shape(p.init_controls, jax.random.PRNGKey(0))
    trajectory = 401 * 2_000 * 3 * 8
    assert _temp_bytes(lambda p, c: cn.value_and_gradient(p, c)[:2], p, c) < 1.5 * trajectory


def _counting(base, **kw):
    traces = []

    class Counting(base):
        def step(self, problem, state):
            traces.append(1)  # runs only while jax traces the step
            return super().step(problem, state)

    return Counting(**kw), traces


def test_solve_traces_the_step_once_and_reuses_it_for_new_numbers():
    p = _problem(l2=1e-3)
    c = p.init_controls(jax.random.PRNGKey(0))
    solver, traces = _counting(solvers.GradientDescent, optimizer=optax.adam(1e-2))
    r = solvers.solve(solver, p, c, max_iters=25)
    assert r.info["iterations"] == 25 and len(traces) == 1
    # Other data, horizon and weights of the same structure: the same compiled step.
    p2 = cn.ControlProblem(p.dynamics, p.integrator, p.N, p.width, p.loss, np.asarray(p.x) * 0.5,
                           np.asarray(p.y), T=3.0, l2=2e-3)
    solvers.solve(solver, p2, c, max_iters=5)
    assert len(traces) == 1
    # Numbers given as numpy scalars (strongly typed) are stored like Python floats: same step.
    p3 = cn.ControlProblem(p.dynamics, p.integrator, p.N, p.width, p.loss, np.asarray(p.x),
                           np.asarray(p.y), T=np.float64(2.5), l2=np.float32(1e-3))
    solvers.solve(solver, p3, c, max_iters=2)
    assert len(traces) == 1
    # A target, a tolerance, other call sizes: arguments of the same compiled loop.
    solvers.solve(solver, p, c, max_iters=9, target_loss=0.1, tol=1e-9, steps_per_call=4)
    assert len(traces) == 1


def _solvers():
    out = {"gd": (solvers.GradientDescent, dict(optimizer=optax.adam(1e-2)))}
    try:
        from solvers.msa import ExtendedMSA
    except ImportError:
        return out
    out["emsa"] = (ExtendedMSA, {})
    return out


@pytest.mark.parametrize("name", sorted(_solvers()))
def test_step_fed_its_own_output_never_retraces(name):
    # The state a step returns must have the types it came in with (no dtype or weak-type
    # drift), or a jitted loop would recompile at every iteration.
    base, kw = _solvers()[name]
    solver, traces = _counting(base, **kw)
    p = _problem(l2=1e-3)
    state = solver.init(p, p.init_controls(jax.random.PRNGKey(0)), key=jax.random.PRNGKey(1))
    step = jax.jit(solver.step)
    for _ in range(6):
        state, info = step(p, state)
    assert len(traces) == 1
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", sorted(_solvers()))
def test_the_driver_logs_what_the_step_returns(name):
    # The driver packs every logged number into one array per iteration and unpacks it by name:
    # its history must be the step's own info, key by key, iteration by iteration.
    base, kw = _solvers()[name]
    solver = base(**kw)
    p = _problem(l2=1e-3, tracking=0.2)
    c = p.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(solver, p, c, max_iters=4, key=jax.random.PRNGKey(1))
    state = solver.init(p, c, key=jax.random.PRNGKey(1))
    step = jax.jit(solver.step)
    for i in range(4):
        state, info = step(p, state)
        assert set(r.history) == set(info) | {"time"}
        for k, v in info.items():
            np.testing.assert_allclose(r.history[k][i], float(v), rtol=1e-6, err_msg=k)
