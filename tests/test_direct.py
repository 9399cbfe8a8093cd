"""The direct solver (CasADi + IPOPT) against the core.

1. The CasADi model is the core's problem: ``J`` and ``∇J`` equal the JAX ones at random controls
   (float64) for every vector field × integrator × loss, every running cost, every activation;
   the Hamiltonian too.
2. IPOPT's optimum, warm-started from gradient descent, is at least as low; there the co-states
   read off the multipliers equal the adjoint module's, ``∇_θ H_k = 0`` per layer (PMP
   stationarity) and random perturbations of ``θ_k`` do not increase ``H_k``.
3. L1 through the split ``θ = θ⁺ − θ⁻`` satisfies the non-smooth optimality condition
   ``0 ∈ ∇J_smooth + h α₁ ∂‖θ‖₁``.
4. The size guard refuses a large problem before building anything, with a message saying how
   to shrink it; ``solve`` runs the direct solver like any other.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from solvers import casadi_model as cm
from solvers.direct import Direct, _states_costates

# -- 1. the CasADi model equals the core --------------------------------------------------------
_FIELDS = {
    "inner": cn.InnerActivation("tanh"),
    "outer": cn.OuterActivation("softplus"),
    "two_layer": cn.TwoLayer(width=4, activation="sigmoid"),
}
_INTEGRATORS = {"euler": cn.Euler(), "rk4": cn.RK4()}
_ALL_RUNNING = dict(l2=0.1, l1=0.05, smoothness=0.2, tracking=0.3, readout_l2=0.01)


def _tiny(field, integrator, loss_name, S=5, N=2, d=3, seed=0, **weights):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(S, 2))
    loss, y = {
        "logistic": (cn.Logistic(), (np.arange(S) % 2)),
        "cross_entropy": (cn.SoftmaxCrossEntropy(3), np.arange(S) % 3),
        "squared": (cn.SquaredError(2), rng.normal(size=(S, 2))),
    }[loss_name]
    weights.setdefault("readout_l2", 0.0)
    return cn.ControlProblem(field, integrator, N, d, loss, x, y, T=1.3, **weights)


def _assert_model_matches(problem, seed=1):
    controls = problem.init_controls(jax.random.PRNGKey(seed))
    # Eager: one tiny evaluation per structure is cheaper than compiling it.
    with jax.disable_jit():
        (J, _), g = jax.value_and_grad(cn.objective, argnums=1, has_aux=True)(problem, controls)
    m = cm.model(problem)
    Jc, gT, gw = m.objective_function()(m.pack_theta(controls.theta), m.pack_w(controls.w))
    np.testing.assert_allclose(float(Jc), float(J), rtol=1e-12)
    scale = max(np.abs(m.pack_theta(g.theta)).max(), np.abs(m.pack_w(g.w)).max())
    np.testing.assert_allclose(np.asarray(gT), m.pack_theta(g.theta), rtol=1e-10, atol=1e-13 * scale)
    np.testing.assert_allclose(np.asarray(gw).ravel(), m.pack_w(g.w), rtol=1e-10, atol=1e-13 * scale)


@pytest.mark.parametrize("loss", ["logistic", "cross_entropy", "squared"])
@pytest.mark.parametrize("integrator", sorted(_INTEGRATORS))
@pytest.mark.parametrize("field", sorted(_FIELDS))
def test_model_objective_and_gradient_equal_jax(field, integrator, loss):
    """Every field × integrator × loss, with every running cost switched on at once."""
    _assert_model_matches(_tiny(_FIELDS[field], _INTEGRATORS[integrator], loss, **_ALL_RUNNING))


@pytest.mark.parametrize("term", ["none", "l2", "l1", "smoothness", "tracking", "readout_l2"])
def test_model_each_running_cost_alone(term):
    weights = {} if term == "none" else {term: 0.37}
    _assert_model_matches(_tiny(_FIELDS["two_layer"], cn.RK4(), "cross_entropy", **weights))


@pytest.mark.parametrize("act", sorted(cn.ACTIVATIONS))
def test_model_every_activation(act):
    for cls in (cn.InnerActivation, cn.OuterActivation):
        _assert_model_matches(_tiny(cls(act), cn.Euler(), "logistic", l2=0.1))


@pytest.mark.parametrize("field", sorted(_FIELDS))
def test_model_hamiltonian_equals_core(field):
    """``H_k``, ``∇_z H_k`` and ``∇_θ H_k`` of the model equal the core's (RK4, with tracking)."""
    import casadi as ca

    p = _tiny(_FIELDS[field], cn.RK4(), "logistic", l2=0.2, l1=0.1, tracking=0.3)
    c = p.init_controls(jax.random.PRNGKey(2))
    rng = np.random.default_rng(3)
    z, pk = rng.normal(size=(p.S, p.width)), rng.normal(size=(p.S, p.width))
    th = jax.tree_util.tree_map(lambda a: a[1], c.theta)
    with jax.disable_jit():
        H = cn.hamiltonian(p, z, pk, th, c.w)
        gz = cn.grad_z(p, z, pk, th, c.w)
        gth = cn.grad_theta(p, z, pk, th, c.w)
    m = cm.model(p)
    Z, P = ca.MX.sym("z", m.d, m.S), ca.MX.sym("p", m.d, m.S)
    v, wv = ca.MX.sym("theta", m.p), ca.MX.sym("w", m.n_w)
    Hc = m.hamiltonian(Z, P, v, wv)
    F = ca.Function("H", [Z, P, v, wv], [Hc, ca.gradient(Hc, Z), ca.gradient(Hc, v)])
    out = F(z.T, pk.T, m.pack_theta(c.theta)[:, 1], m.pack_w(c.w))
    np.testing.assert_allclose(float(out[0]), float(H), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out[1]).T, gz, rtol=1e-10, atol=1e-13)
    layer_vec = np.concatenate([np.asarray(gth[k]).ravel() for k, _ in m.shapes])
    np.testing.assert_allclose(np.asarray(out[2])[:, 0], layer_vec, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("field, integrator", [("inner", "euler"), ("two_layer", "rk4")])
def test_multiple_shooting_nlp_at_the_warm_start_is_J(field, integrator):
    """IPOPT's objective at iteration 0 (states from the forward pass: feasible) is ``J(θ⁰)``."""
    weights = dict(_ALL_RUNNING, l1=0.0)  # L1's bounds would move the start into the interior
    p = _tiny(_FIELDS[field], _INTEGRATORS[integrator], "cross_entropy", **weights)
    sol = Direct().solve_nlp(p, p.init_controls(jax.random.PRNGKey(4)), max_iters=0)
    h = sol.history
    assert sol.status == "max_iters" and len(h["loss"]) == 1
    np.testing.assert_allclose(h["objective"][0], h["loss"][0], rtol=1e-12)
    assert h["inf_pr"][0] <= 1e-12


def test_one_layer_and_single_shooting_agree():
    """``N = 1``: multiple and single shooting reach the same optimum (a convex-ish small NLP)."""
    p = _tiny(_FIELDS["inner"], cn.Euler(), "logistic", N=1, l2=0.5, readout_l2=0.5)
    c = p.init_controls(jax.random.PRNGKey(0))
    a = Direct(tol=1e-11).solve_nlp(p, c)
    b = Direct(shooting="single", tol=1e-11).solve_nlp(p, c)
    assert a.status == b.status == "converged"
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-9)


def test_pack_unpack_round_trip():
    p = _tiny(_FIELDS["two_layer"], cn.Euler(), "squared")
    c = p.init_controls(jax.random.PRNGKey(0))
    m = cm.model(p)
    back = m.unpack_theta(m.pack_theta(c.theta))
    for k in c.theta:
        np.testing.assert_array_equal(back[k], np.asarray(c.theta[k]))
    zs = np.asarray(cn.forward(p, c.theta))
    X = zs.transpose(2, 0, 1).reshape(p.width, -1)  # [Z_0 … Z_N] side by side
    np.testing.assert_array_equal(m.states(X), zs)


def test_unknown_field_is_refused_with_a_hint():
    class Custom(cn.InnerActivation):  # another formula, the parent's translation inherited
        def __call__(self, z, theta):
            return 2.0 * super().__call__(z, theta)

    m = cm.model(_tiny(Custom(), cn.Euler(), "logistic"))
    with pytest.raises(ValueError, match=r"Custom redefines __call__ .* method casadi\(self, Z, theta, ca\)"):
        m.objective_function()

    class Bare(cn.VectorField):  # no translation at all: the field is named, not the integrator
        def __call__(self, z, theta):
            return jnp.sin(z @ theta["W"].T)

        def init(self, key, d, scale=1.0):
            return {"W": jax.random.normal(key, (d, d))}

    for integrator in (cn.Euler(), cn.RK4()):
        m = cm.model(_tiny(Bare(), integrator, "logistic"))
        with pytest.raises(ValueError, match="vector field Bare has no CasADi translation") as info:
            m.objective_function()
        assert "integrator" not in str(info.value)


def test_a_field_brings_its_own_casadi_translation():
    """A field defined here, with a ``casadi`` method, gets the direct solver with no change in
    solvers/: its model equals the core to round-off."""

    class Sine(cn.VectorField):
        def __call__(self, z, theta):
            return jnp.sin(z @ theta["W"].T + theta["b"])

        def init(self, key, d, scale=1.0):
            return {"W": scale * jax.random.normal(key, (d, d)) / d, "b": jnp.zeros(d)}

        def casadi(self, Z, theta, ca):
            return ca.sin(ca.mtimes(theta["W"], Z) + ca.repmat(theta["b"], 1, Z.shape[1]))

    _assert_model_matches(_tiny(Sine(), cn.RK4(), "cross_entropy", l2=0.1, tracking=0.2))


def test_import_solvers_leaves_casadi_unloaded():
    import subprocess
    import sys

    code = "import sys, solvers, solvers.direct, solvers.casadi_model; print('casadi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# -- 2. the reference optimum and the PMP there --------------------------------------------------
_J = jax.jit(lambda p, c: cn.objective(p, c)[0])


@pytest.fixture(scope="module")
def ring():
    """Ring, 100 points, 10 layers: GD (Adam, 300 steps), then IPOPT warm-started from it."""
    task = problems.make("ring", samples=100, layers=10, test_samples=0)
    p = task.problem
    gd = solvers.solve(solvers.GradientDescent(optax.adam(1e-2)), p, p.init_controls(jax.random.PRNGKey(0)),
                       max_iters=300, progress=False)
    sol = Direct(tol=1e-10).solve_nlp(p, gd.controls)
    return p, gd, sol


def test_ipopt_converges_at_least_as_low_as_gd(ring):
    p, gd, sol = ring
    assert sol.status == "converged", sol.ipopt_status
    J_gd = float(_J(p, gd.controls))
    J = float(_J(p, sol.controls))
    assert J <= J_gd
    # The NLP's objective on its own states is J of the network: the dynamics hold.
    np.testing.assert_allclose(sol.objective, J, rtol=1e-10)
    np.testing.assert_allclose(sol.states, _states_costates(p, sol.controls)[0], atol=1e-9)


def test_costates_from_multipliers_equal_the_adjoint(ring):
    p, _, sol = ring
    ps = np.asarray(_states_costates(p, sol.controls)[1])
    scale = np.abs(ps).max()
    np.testing.assert_allclose(sol.costates, ps, rtol=1e-7, atol=1e-9 * scale)
    # p_N = −(1/S)∇ℓ_i: the terminal co-state is tiny per sample, so compare it on its own scale.
    np.testing.assert_allclose(sol.costates[-1], ps[-1], atol=1e-9 * np.abs(ps[-1]).max())


@jax.jit
def _layer_grads(p, controls, zs, ps):
    g = jax.vmap(lambda z, q, th: cn.grad_theta(p, z, q, th, controls.w))(zs[:-1], ps[1:], controls.theta)
    return jnp.stack([jnp.abs(v.reshape(p.N, -1)).max(axis=1) for v in g.values()]).max(axis=0)


def test_pmp_stationarity_per_layer(ring):
    """``∇_θ H_k(z_k*, p_{k+1}*, θ_k*) = 0`` for every layer (no coupling term in this problem)."""
    p, gd, sol = ring
    at_opt = np.asarray(_layer_grads(p, sol.controls, *_states_costates(p, sol.controls)))
    at_gd = np.asarray(_layer_grads(p, gd.controls, *_states_costates(p, gd.controls)))
    assert at_opt.shape == (p.N,)
    assert np.all(at_opt <= 1e-7 * at_gd.max()), (at_opt, at_gd)


def test_random_perturbations_do_not_increase_the_hamiltonian(ring):
    """``H_k(θ_k* + εδ) ≤ H_k(θ_k*)`` for random ``δ`` (unit norm per layer), every layer.

    A discrete problem need not satisfy the maximum condition in *every* direction (on this ring
    the Hessian of ``H_k`` in ``θ`` has small positive eigenvalues in the first layers); random
    directions are what this checks.
    """
    p, _, sol = ring
    c = sol.controls
    zs, ps = _states_costates(p, c)
    layer_H = jax.jit(cn.layer_hamiltonians)
    H0 = layer_H(p, zs, ps, c.theta, c.w)
    key = jax.random.PRNGKey(7)
    for eps in (1e-1, 1e-2, 1e-3):
        for _ in range(5):
            key, sub = jax.random.split(key)
            leaves, tree = jax.tree_util.tree_flatten(c.theta)
            keys = jax.random.split(sub, len(leaves))
            d = [jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)]
            norm = jnp.sqrt(sum(jnp.sum(x.reshape(p.N, -1) ** 2, axis=1) for x in d))
            d = [x / norm.reshape((-1,) + (1,) * (x.ndim - 1)) for x in d]
            theta = jax.tree_util.tree_unflatten(tree, [l + eps * x for l, x in zip(leaves, d)])
            H = layer_H(p, zs, ps, theta, c.w)
            assert np.all(H <= H0 + 1e-15), (eps, np.asarray(H - H0))


def test_single_shooting_reaches_the_same_optimum(ring):
    p, gd, sol = ring
    single = Direct(shooting="single", tol=1e-10).solve_nlp(p, gd.controls)
    assert single.status == "converged" and single.costates is None
    np.testing.assert_allclose(float(_J(p, single.controls)),
                               float(_J(p, sol.controls)), rtol=1e-8)


# -- 3. L1 by the split θ = θ⁺ − θ⁻ --------------------------------------------------------------
def test_l1_split_satisfies_the_nonsmooth_optimality_condition():
    """At the solution, with ``g = ∇_θ J`` of the problem without L1 and ``c = h α₁``:
    ``g = −c sign θ`` where ``θ ≠ 0`` and ``|g| ≤ c`` where ``θ = 0``; some weights are 0."""
    a1 = 2e-2
    p = problems.make("ring", samples=40, layers=4, test_samples=0, l1=a1).problem
    sol = Direct(tol=1e-10).solve_nlp(p, p.init_controls(jax.random.PRNGKey(0)))
    assert sol.status == "converged", sol.ipopt_status
    smooth = problems.make("ring", samples=40, layers=4, test_samples=0, l1=0.0).problem
    _, g, _, _ = jax.jit(cn.gradient)(smooth, sol.controls)
    c = float(p.h) * a1
    theta = np.concatenate([np.asarray(v).ravel() for v in sol.controls.theta.values()])
    grad = np.concatenate([np.asarray(g.theta[k]).ravel() for k in sol.controls.theta])
    zero = np.abs(theta) < 1e-6
    assert zero.any() and (~zero).any()
    np.testing.assert_allclose(grad[~zero], -c * np.sign(theta[~zero]), atol=1e-6 * c)
    assert np.all(np.abs(grad[zero]) <= c * (1 + 1e-6))


# -- 4. the size guard and the solve contract -----------------------------------------------------
def test_size_guard_refuses_a_large_problem_before_building():
    p = problems.make("ring", samples=5000, layers=50, test_samples=0).problem
    with pytest.raises(ValueError, match="too big") as e:
        Direct().check_size(p)
    msg = str(e.value)
    assert "fewer samples (now 5000" in msg and "fewer layers (now 50)" in msg
    assert "shooting='single'" in msg and "max_variables" in msg
    with pytest.raises(ValueError, match="too big"):
        solvers.solve(Direct(), p, p.init_controls(jax.random.PRNGKey(0)), max_iters=5)
    # The estimate is exact for what it can count exactly: variables and constraints.
    small = problems.make("ring", samples=20, layers=3, test_samples=0).problem
    s = Direct().size(small)
    assert s["variables"] == 3 * 12 + 3 * 20 * 3 + 4 and s["constraints"] == 3 * 20 * 3


def test_solve_runs_direct_like_any_solver(tmp_path):
    task = problems.make("ring", samples=30, layers=4)
    p = task.problem
    c0 = p.init_controls(jax.random.PRNGKey(1))
    res = solvers.solve(solvers.make_solver("direct"), p, c0, max_iters=200, test=task.test)
    assert isinstance(res, cn.Result) and res.status == "converged"
    assert res.info["ipopt_status"] == "Solve_Succeeded" and res.info["ipopt_iterations"] >= 1
    assert res.info["ipopt_time"] > 0 and "test_accuracy" in res.info
    h = res.history
    assert len(h["loss"]) == res.info["ipopt_iterations"] + 1
    assert {len(v) for v in h.values()} == {len(h["loss"])}
    # The first entry is the incoming iterate, the final summary the returned one.
    np.testing.assert_allclose(h["loss"][0], float(_J(p, c0)), rtol=1e-12)
    np.testing.assert_allclose(res.info["loss"], float(_J(p, res.controls)), rtol=1e-12)
    res.save(tmp_path / "r")
    back = cn.Result.load(tmp_path / "r")
    assert back.status == res.status and back.info["ipopt_status"] == "Solve_Succeeded"
    # Budgets: an iteration cap and a target loss stop IPOPT through its callback.
    capped = solvers.solve(Direct(), p, c0, max_iters=2)
    assert capped.status == "max_iters" and capped.info["ipopt_iterations"] == 2
    target = 0.5 * (h["loss"][0] + res.info["loss"])
    hit = solvers.solve(Direct(), p, c0, max_iters=200, target_loss=target)
    assert hit.status == "target" and hit.history["loss"][-1] <= target < hit.history["loss"][-2]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="shooting"):
        Direct(shooting="triple")
    with pytest.raises(ValueError, match="hessian"):
        Direct(hessian="bfgs")
