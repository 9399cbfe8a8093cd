"""The core's mathematics: adjoint gradient = jax.grad = finite differences, the Hamiltonian
gradient identity, co-state equation, and integrator convergence orders (all float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn

FIELDS = {
    "inner": cn.InnerActivation("tanh"),
    "outer": cn.OuterActivation("softplus"),
    "two_layer": cn.TwoLayer(width=4, activation="tanh"),
}
INTEGRATORS = {"euler": cn.Euler(), "rk4": cn.RK4()}
COSTS = {
    "none": {},
    "l2": {"l2": 0.3},
    "l1": {"l1": 0.05},
    "smoothness": {"smoothness": 0.2},
    "tracking": {"tracking": 0.4},
    "all": {"l2": 0.3, "l1": 0.05, "smoothness": 0.2, "tracking": 0.4},
}


def _data(S=12, d_in=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((S, d_in))
    y = (np.linalg.norm(x, axis=1) > 1.0).astype(np.int64)
    return x, y


def _problem(field, integrator, costs, loss=None, y=None, N=4, width=3, T=1.5):
    x, y0 = _data()
    return cn.ControlProblem(field, integrator, N, width, loss or cn.Logistic(), x,
                             y0 if y is None else y, T=T, readout_l2=0.01, **costs)


@jax.jit
def _adjoint(problem, controls):
    J, g, _, _ = cn.gradient(problem, controls)
    return J, g


@jax.jit
def _autodiff(problem, controls):
    return jax.value_and_grad(lambda c: cn.objective(problem, c)[0])(controls)


@jax.jit
def _J(problem, controls):
    return cn.objective(problem, controls)[0]


def _rel(a, b):
    a, b = jnp.concatenate([l.ravel() for l in jax.tree_util.tree_leaves(a)]), \
        jnp.concatenate([l.ravel() for l in jax.tree_util.tree_leaves(b)])
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _check_gradient(problem, seed=1):
    controls = problem.init_controls(jax.random.PRNGKey(seed))
    J1, g_adj = _adjoint(problem, controls)
    J2, g_ad = _autodiff(problem, controls)
    assert abs(float(J1) - float(J2)) <= 1e-12 * abs(float(J2))
    assert _rel(g_adj, g_ad) < 1e-10

    # Central finite differences along a random direction.
    leaves, tree = jax.tree_util.tree_flatten(controls)
    keys = jax.random.split(jax.random.PRNGKey(seed + 7), len(leaves))
    v = jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])
    eps = 1e-5
    shift = lambda s: jax.tree_util.tree_map(lambda c, d: c + s * d, controls, v)  # noqa: E731
    fd = (float(_J(problem, shift(eps))) - float(_J(problem, shift(-eps)))) / (2 * eps)
    dd = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree_util.tree_leaves(g_adj), jax.tree_util.tree_leaves(v)))
    assert abs(fd - dd) <= 1e-6 * max(1.0, abs(dd)), (fd, dd)


# Every field x integrator with every running cost at once, and every cost alone: a compile per
# case is the price, so the factorial product of single costs is not repeated.
@pytest.mark.parametrize("field,integrator", list(itertools.product(FIELDS, INTEGRATORS)))
def test_adjoint_gradient_equals_autodiff_and_finite_differences(field, integrator):
    _check_gradient(_problem(FIELDS[field], INTEGRATORS[integrator], COSTS["all"]))


@pytest.mark.parametrize("cost", [c for c in COSTS if c != "all"])
def test_adjoint_gradient_for_each_running_cost(cost):
    _check_gradient(_problem(FIELDS["two_layer"], cn.RK4(), COSTS[cost]))


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy", "squared"])
def test_adjoint_gradient_for_every_loss(loss):
    x, y = _data()
    if loss == "logistic":
        L, labels = cn.Logistic(), y
    elif loss == "cross_entropy":
        L, labels = cn.SoftmaxCrossEntropy(3), (np.arange(len(y)) % 3)
    else:
        L, labels = cn.SquaredError(2), np.sin(x)
    _check_gradient(_problem(FIELDS["two_layer"], cn.RK4(), COSTS["all"], loss=L, y=labels))


@pytest.mark.parametrize("cost", ["none", "l2", "tracking"])
def test_gradient_identity_per_layer(cost):
    """∇_{θ_k} J = −∇_θ H_k(z_k, p_{k+1}, θ_k) for every layer (no coupling terms)."""
    problem = _problem(FIELDS["inner"], cn.Euler(), COSTS[cost], N=6)
    controls = problem.init_controls(jax.random.PRNGKey(3))
    _, g = _autodiff(problem, controls)
    g_H = _layer_grads(problem, controls)
    assert _rel(jax.tree_util.tree_map(lambda a: -a, g_H), g.theta) < 1e-10


@jax.jit
def _layer_grads(problem, controls):
    """∇_θ H_k(z_k, p_{k+1}, θ_k) for all k, straight from the hamiltonian module."""
    zs = cn.forward(problem, controls.theta)
    ps = cn.costates(problem, controls, zs)
    return jax.vmap(lambda z, p, th: cn.grad_theta(problem, z, p, th, controls.w))(zs[:-1], ps[1:], controls.theta)


def test_costate_equation_and_terminal_condition():
    """p_N = −∇_z Φ(z_N) and p_k = ∇_z H_k(z_k, p_{k+1}, θ_k); p_k = ∂J/∂z_k (a perturbation check)."""
    problem = _problem(FIELDS["two_layer"], cn.RK4(), COSTS["tracking"], N=5)
    controls = problem.init_controls(jax.random.PRNGKey(4))
    zs = cn.forward(problem, controls.theta)
    ps = cn.costates(problem, controls, zs)
    pN = -jax.grad(problem.terminal)(zs[-1], controls.w)
    np.testing.assert_allclose(ps[-1], pN, rtol=1e-12, atol=1e-14)
    step = jax.jit(jax.vmap(lambda z, p, th: cn.grad_z(problem, z, p, th, controls.w)))
    np.testing.assert_allclose(ps[:-1], step(zs[:-1], ps[1:], controls.theta), rtol=1e-12, atol=1e-14)

    # p_k = −∇V_k(z_k), V_k the cost-to-go from layer k: V_k(z) = Φ(z_N) + h Σ_{j>=k} L(z_j).
    k = 2
    theta_tail = jax.tree_util.tree_map(lambda a: a[k:], controls.theta)

    def cost_to_go(z):
        tail = cn.forward(problem, theta_tail, z0=z)
        track = sum(problem.tracking_cost(tail[j], controls.w) for j in range(problem.N - k))
        return problem.terminal(tail[-1], controls.w) + problem.h * track

    np.testing.assert_allclose(ps[k], -jax.jit(jax.grad(cost_to_go))(zs[k]), rtol=1e-10, atol=1e-14)


def test_euler_is_a_resnet_block():
    """Euler with σ(Wz+b) is exactly z + h σ(Wz + b)."""
    problem = _problem(FIELDS["inner"], cn.Euler(), {}, N=3, T=0.9)
    controls = problem.init_controls(jax.random.PRNGKey(5))
    zs = cn.forward(problem, controls.theta)
    z = np.asarray(problem.z0())
    for k in range(3):
        W, b = (np.asarray(controls.theta[n][k]) for n in ("W", "b"))
        z = z + 0.3 * np.tanh(z @ W.T + b)
        np.testing.assert_allclose(zs[k + 1], z, rtol=1e-13)


@pytest.mark.parametrize("name,order", [("euler", 1), ("rk4", 4)])
def test_integrator_convergence_order(name, order):
    """On ż = W z + b (identity activation) the error at T behaves like h^order (fitted slope)."""
    rng = np.random.default_rng(0)
    d, T = 3, 1.0
    W = rng.standard_normal((d, d)) / np.sqrt(d)
    b = rng.standard_normal(d)
    z0 = rng.standard_normal((5, d))
    E = jax.scipy.linalg.expm(W * T)
    exact = z0 @ E.T + (np.linalg.solve(W, (E - np.eye(d)) @ b))[None]
    Ns = [4, 8, 16, 32, 64] if order == 1 else [4, 8, 16, 32]
    errs = []
    for N in Ns:
        problem = cn.ControlProblem(cn.InnerActivation("identity"), cn.INTEGRATORS[name](), N, d,
                                    cn.SquaredError(d), z0, np.zeros_like(z0), T=T)
        theta = {"W": jnp.broadcast_to(W, (N, d, d)), "b": jnp.broadcast_to(b, (N, d))}
        errs.append(float(jnp.max(jnp.abs(cn.final_state(problem, theta) - exact))))
    slope = np.polyfit(np.log(T / np.array(Ns)), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.15, (slope, errs)


def test_lift_pads_with_zeros_and_readout_is_affine():
    x = np.arange(6.0).reshape(3, 2)
    z = cn.lift(jnp.asarray(x), 4)
    np.testing.assert_array_equal(z[:, :2], x)
    np.testing.assert_array_equal(z[:, 2:], 0.0)
    w = {"A": jnp.array([[1.0, 2.0, 0.0, -1.0]]), "c": jnp.array([0.5])}
    np.testing.assert_allclose(cn.readout(z, w)[:, 0], x[:, 0] + 2 * x[:, 1] + 0.5)


def test_losses_are_overflow_safe_and_correct():
    s = jnp.array([[-800.0], [0.0], [800.0]])
    y = jnp.array([1, 0, 0])
    got = cn.Logistic()(s, y)
    np.testing.assert_allclose(got, [800.0, np.log(2.0), 800.0])
    out = jnp.array([[1000.0, 0.0, -1000.0]])
    np.testing.assert_allclose(cn.SoftmaxCrossEntropy(3)(out, jnp.array([1])), [1000.0])
    np.testing.assert_allclose(cn.SquaredError(2)(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])), [2.5])


def test_objective_matches_its_formula():
    """J by hand with numpy for a tiny Euler problem with every cost term."""
    costs = {"l2": 0.3, "l1": 0.05, "smoothness": 0.2, "tracking": 0.4}
    problem = _problem(FIELDS["inner"], cn.Euler(), costs, N=3)
    c = problem.init_controls(jax.random.PRNGKey(6))
    h = 1.5 / 3
    W, b = np.asarray(c.theta["W"]), np.asarray(c.theta["b"])
    A, cc = np.asarray(c.w["A"]), np.asarray(c.w["c"])
    y = np.asarray(problem.y)

    def loss(z):
        s = z @ A[0] + cc[0]
        return np.mean(np.logaddexp(0, s) - y * s)

    z = np.asarray(problem.z0())
    J = 0.0
    for k in range(3):
        th = np.concatenate([W[k].ravel(), b[k]])
        J += h * (0.3 / 2 * th @ th + 0.05 * np.abs(th).sum() + 0.4 * loss(z))
        z = z + h * np.tanh(z @ W[k].T + b[k])
    J += loss(z) + 0.01 / 2 * (A**2).sum() + 0.2 / (2 * h) * (np.sum(np.diff(W, axis=0) ** 2) + np.sum(np.diff(b, axis=0) ** 2))
    assert abs(float(_J(problem, c)) - J) < 1e-12 * abs(J)


def test_zero_weight_terms_cost_nothing_and_are_static():
    p0 = _problem(FIELDS["inner"], cn.Euler(), {})
    assert p0.terms == frozenset({"readout_l2"})
    p1 = _problem(FIELDS["inner"], cn.Euler(), COSTS["all"])
    assert p1.terms == frozenset({"l2", "l1", "smoothness", "tracking", "readout_l2"})
    # A problem flattened and rebuilt inside jit keeps its structure.
    leaves, tree = jax.tree_util.tree_flatten(p1)
    assert jax.tree_util.tree_unflatten(tree, leaves).terms == p1.terms


def test_the_horizon_leaf_is_the_step_and_its_gradient_is_dJ_dT_times_N():
    """``h = T/N`` is the leaf the program reads: ``∂J/∂h = N ∂J/∂T`` (central differences in
    ``T`` through the constructor), ``T`` is re-derived as ``N h`` from the leaves, and
    ``dataclasses.replace(T=...)`` moves ``h``."""
    import dataclasses

    costs = {"l2": 0.3, "smoothness": 0.2, "tracking": 0.4}
    p = _problem(FIELDS["inner"], cn.Euler(), costs, N=5, T=1.5)
    c = p.init_controls(jax.random.PRNGKey(2))
    assert float(p.h) == 1.5 / 5 and float(p.T) == 1.5
    leaves, tree = jax.tree_util.tree_flatten(p)
    assert sum(leaf is p.h for leaf in leaves) == 1 and not any(leaf is p.T for leaf in leaves)
    assert float(jax.tree_util.tree_unflatten(tree, leaves).T) == 5 * float(p.h)
    assert float(dataclasses.replace(p, T=2.0).h) == 2.0 / 5

    with_h = lambda h: jax.tree_util.tree_unflatten(tree, [h if leaf is p.h else leaf for leaf in leaves])  # noqa: E731
    dJ_dh = jax.grad(lambda h: cn.objective_value(with_h(h), c))(p.h)
    eps = 1e-6
    J = lambda T: float(_J(dataclasses.replace(p, T=T), c))  # noqa: E731
    dJ_dT = (J(1.5 + eps) - J(1.5 - eps)) / (2 * eps)
    assert abs(float(dJ_dh) / 5 - dJ_dT) < 1e-7 * max(1.0, abs(dJ_dT))
    assert abs(dJ_dT) > 1e-3  # the check has something to compare


@pytest.mark.parametrize("field", list(FIELDS))
def test_scan_layout_field_equals_the_per_sample_formula(field):
    """``f.scan_call(zᵀ) = f(z)ᵀ``: the scans' (d, S) layout computes the same field."""
    f = FIELDS[field]
    theta = f.init(jax.random.PRNGKey(0), 3)
    z = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
    np.testing.assert_allclose(f.scan_call(z.T, theta), f(z, theta).T, rtol=1e-14, atol=1e-15)
    # The default (a vmap of __call__) agrees too.
    np.testing.assert_allclose(cn.VectorField.scan_call(f, z.T, theta), f(z, theta).T, rtol=1e-14, atol=1e-15)
