"""MSA, extended MSA and discrete-weight MSA: the mathematics of every piece, then training."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from solvers import msa
from solvers.discrete import DiscreteMSA, quantize
from solvers.minibatch import minibatch

tmap = jax.tree_util.tree_map


def _perturb(theta, key, size):
    leaves, tdef = jax.tree_util.tree_flatten(theta)
    keys = jax.random.split(key, len(leaves))
    return tdef.unflatten([x + size * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@jax.jit
def _trajectory(p, c):
    zs = cn.forward(p, c.theta)
    ps = cn.backward(p, c, zs)[0]
    return zs, ps, msa.layer_data(p, c, zs, ps)


def _setup(dynamics="inner", tracking=0.0, smoothness=0.0, l1=0.0, activation="tanh", samples=30, layers=5, seed=1):
    p = problems.make("ring", samples=samples, width=3, layers=layers, dynamics=dynamics, hidden=4,
                      tracking=tracking, smoothness=smoothness, l1=l1, l2=1e-2, activation=activation).problem
    c = p.init_controls(jax.random.PRNGKey(seed))
    return (p, c) + _trajectory(p, c)


@pytest.mark.parametrize("dynamics,tracking,smoothness", [("inner", 0.0, 0.0), ("two_layer", 0.3, 0.2)])
def test_inner_objective_is_the_augmented_hamiltonian(dynamics, tracking, smoothness):
    """inner_objective = H_k(θ) − H_k(θ^j) − (ρ/2)(penalties) − C_k(θ) − hR(θ^j), each piece
    built independently from cn.hamiltonian, problem.step and cn.grad_z in the (S, d) layout."""
    p, c, zs, ps, data = _setup(dynamics, tracking, smoothness)
    rho = 2.5
    th = _perturb(c.theta, jax.random.PRNGKey(5), 0.3)
    S = p.S

    def per_layer(z, zn, pk, pn, t, t0):
        dH = cn.hamiltonian(p, z, pn, t, c.w) - cn.hamiltonian(p, z, pn, t0, c.w)
        r1 = zn - p.step(z, t)
        r2 = S * (pk - cn.grad_z(p, z, pn, t, c.w))  # per-sample co-states p̃ = S p
        return dH - 0.5 * rho * (jnp.sum(r1**2) + jnp.sum(r2**2)) / S - p.h * p.running(t0)

    want = jax.jit(jax.vmap(per_layer))(zs[:-1], zs[1:], ps[:-1], ps[1:], th, c.theta)
    if smoothness:
        # Jacobi shares: Σ_k C_k(θ_k) with frozen neighbours has the gradient of the coupling.
        C = jax.jit(msa.jacobi_coupling)(p, th, c.theta)
        g_C = jax.jit(jax.grad(lambda p, t: jnp.sum(msa.jacobi_coupling(p, t, c.theta)), argnums=1))(p, c.theta)
        g_coupling = jax.jit(jax.grad(lambda p, t: p.coupling(t), argnums=1))(p, c.theta)
        for a, b in zip(jax.tree_util.tree_leaves(g_C), jax.tree_util.tree_leaves(g_coupling)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        want = want - C
    # The autodiff definition here; the closed forms equal it (next test).
    got = jax.jit(msa.inner_objective, static_argnums=4)(p, data, th, rho, "autodiff")
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # Both residuals vanish at θ^j (the trajectory and co-states of iterate j).
    for method in ("closed_form", "autodiff"):
        r1, r2 = jax.jit(msa.residuals, static_argnums=3)(p, data, c.theta, method)
        assert float(jnp.max(jnp.abs(r1))) < 1e-13 and float(jnp.max(jnp.abs(r2))) < 1e-12


@pytest.mark.parametrize("dynamics,tracking,smoothness,activation", [
    ("inner", 0.0, 0.0, "tanh"), ("inner", 0.3, 0.2, "softplus"), ("outer", 0.3, 0.2, "tanh"),
    ("two_layer", 0.3, 0.2, "sigmoid")])
def test_closed_form_inner_gradient_matches_autodiff(dynamics, tracking, smoothness, activation):
    p, c, zs, ps, data = _setup(dynamics, tracking, smoothness, l1=0.01, activation=activation)
    assert msa.has_closed_form(p)
    th = _perturb(c.theta, jax.random.PRNGKey(6), 0.3)
    vg = jax.jit(msa.inner_value_and_grad, static_argnums=4)
    va, ga = vg(p, data, th, 3.0, "autodiff")
    vc, gc = vg(p, data, th, 3.0, "closed_form")
    np.testing.assert_allclose(vc, va, rtol=1e-12, atol=1e-14)
    for k in ga:
        np.testing.assert_allclose(gc[k], ga[k], rtol=1e-10, atol=1e-13)


def test_inner_gradient_at_the_iterate_is_minus_grad_J():
    """The penalties are stationary at θ^j, so ∇H̃ = ∇_θH − ∇C = −∇_θJ: E-MSA's first inner
    gradient step is a gradient-descent step on J."""
    p, c, zs, ps, data = _setup("inner", 0.3, 0.2)
    _, gJ, _, _ = jax.jit(cn.gradient)(p, c)
    g = jax.jit(msa.inner_gradient)(p, data, c.theta, 7.0)
    for k in g:
        np.testing.assert_allclose(g[k], -gJ.theta[k], rtol=1e-10, atol=1e-14)


def test_inner_maximization_never_decreases_any_layer():
    p, c, zs, ps, data = _setup("two_layer", 0.0, 0.2)
    obj = jax.jit(msa.inner_objective)
    v0 = obj(p, data, c.theta, 1.0)
    for opt in (optax.adam(0.5), optax.sgd(50.0)):  # both far too large: the safeguard must hold
        th = jax.jit(lambda p, d: msa.maximize_hamiltonians(p, d, 1.0, opt, 8))(p, data)
        v = obj(p, data, th, 1.0)
        assert np.all(np.asarray(v) >= np.asarray(v0) - 1e-14)
        assert float(jnp.sum(v - v0)) > 0


def _flat_hessian(p, data, rho, method="autodiff"):
    """Independent: ``jax.hessian`` of ``Σ_k`` inner objective over *all* layers' parameters,
    ``(N P, N P)``; separable, so block-diagonal."""
    flat, unravel = jax.flatten_util.ravel_pytree(data.theta)

    def total(v):
        return jnp.sum(msa.inner_objective(p, data, unravel(v), rho, method))

    return jax.jit(jax.hessian(total))(flat)


def _to_layers(theta, flat_all):
    """All layers' parameters in ``ravel_pytree`` order of the whole tree → ``(N, P)`` rows in
    the order of one layer's ``ravel_pytree`` (what ``inner_hessian`` uses)."""
    _, unravel = jax.flatten_util.ravel_pytree(theta)
    return msa.per_layer(unravel(flat_all))[0]


@pytest.mark.parametrize("dynamics,tracking,smoothness,activation,rho", [
    ("inner", 0.0, 0.0, "tanh", 3.0), ("inner", 0.3, 0.2, "softplus", 3.0), ("inner", 0.3, 0.2, "tanh", 0.0),
    ("outer", 0.3, 0.2, "tanh", 3.0), ("outer", 0.0, 0.0, "sigmoid", 1.0), ("two_layer", 0.3, 0.2, "tanh", 2.0)])
def test_inner_hessian_at_the_iterate_matches_autodiff(dynamics, tracking, smoothness, activation, rho):
    """``inner_hessian`` (closed form for σ(Wz+b), Hessian-vector products otherwise) equals
    ``jax.hessian`` of the inner objective over every layer's parameters, whose off-diagonal
    layer blocks vanish (the Jacobi split makes the layers separable)."""
    p, c, zs, ps, data = _setup(dynamics, tracking, smoothness, activation=activation)
    full = np.asarray(_flat_hessian(p, data, rho))
    N = p.N
    P = full.shape[0] // N
    # Reorder the full Hessian to layer rows: apply the layer map to every basis vector.
    E = jax.vmap(lambda e: _to_layers(data.theta, e).reshape(-1))(jnp.eye(N * P))  # (NP, NP): e_i → layer order
    full = np.asarray(E).T @ full @ np.asarray(E)
    blocks = full.reshape(N, P, N, P)
    want = np.stack([blocks[k, :, k, :] for k in range(N)])
    off = blocks.copy()
    for k in range(N):
        off[k, :, k, :] = 0.0
    assert np.max(np.abs(off)) < 1e-13 * np.max(np.abs(want))
    for method in ("closed_form", "autodiff"):
        got = jax.jit(msa.inner_hessian, static_argnums=3)(p, data, rho, method)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13 * np.max(np.abs(want)))
    assert np.max(np.abs(want)) > 0


def test_one_newton_step_maximizes_a_quadratic_hamiltonian():
    """``Wσ(z)+b`` is linear in ``θ``, so ``H̃_k − C_k`` is a concave quadratic for ``ρ`` large
    enough: one Newton step on all samples lands on its maximum, where its gradient vanishes."""
    p, c, zs, ps, data = _setup("outer", 0.3, 0.2)
    rho = 4.0
    H = jax.jit(msa.inner_hessian)(p, data, rho)
    assert float(jnp.max(jnp.linalg.eigvalsh(H))) < 0  # concave: the step is Newton's own
    opt = msa.newton_preconditioner(H, data.theta)
    th = jax.jit(lambda p, d: msa.maximize_hamiltonians(p, d, rho, opt, 1))(p, data)
    g0 = jax.jit(msa.inner_gradient)(p, data, data.theta, rho)
    g1 = jax.jit(msa.inner_gradient)(p, data, th, rho)
    n0, n1 = solvers.gd.tree_norm(g0), solvers.gd.tree_norm(g1)
    assert float(n0) > 1e-3 and float(n1) < 1e-11 * float(n0)
    # The same maximum as ascending to convergence (Adam with a decaying step, which settles on the
    # maximum instead of circling it at the step's scale).
    far = jax.jit(lambda p, d: msa.maximize_hamiltonians(p, d, rho, optax.adam(optax.cosine_decay_schedule(0.02, 3000)), 3000))(p, data)
    for a, b in zip(jax.tree_util.tree_leaves(th), jax.tree_util.tree_leaves(far)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_newton_preconditioner_is_newton_where_concave_and_ascends_elsewhere():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    concave = -(A @ A.T + 0.5 * np.eye(4))                 # −∇² positive definite
    saddle = np.diag([-2.0, -1.0, 0.5, 3.0]) + 0.1 * (A + A.T)  # −∇² indefinite
    H = jnp.asarray(np.stack([concave, saddle]))
    theta = {"x": jnp.zeros((2, 4))}
    g = jnp.asarray(rng.normal(size=(2, 4)))
    step = msa.newton_preconditioner(H, theta).update({"x": -g}, None)[0]["x"]  # optax passes −∇
    np.testing.assert_allclose(step[0], np.linalg.solve(-concave, g[0]), rtol=1e-10)
    M = -saddle
    mu = max(np.max(np.sum(np.abs(M), 1) - 2 * np.abs(np.diag(M)) + np.abs(np.diag(M)) - np.diag(M)), 0.0)
    mu += 1e-6 * np.max(np.abs(np.diag(M)))
    assert np.min(np.linalg.eigvalsh(M)) < 0 < np.min(np.linalg.eigvalsh(M + mu * np.eye(4)))
    np.testing.assert_allclose(step[1], np.linalg.solve(M + mu * np.eye(4), g[1]), rtol=1e-8)
    assert float(step[1] @ g[1]) > 0  # an ascent direction


def test_auto_inner_is_newton_only_where_its_hessian_has_a_closed_form():
    inner = problems.make("ring", samples=20, layers=2, dynamics="inner").problem
    two = problems.make("ring", samples=20, layers=2, dynamics="two_layer").problem
    assert msa.inner_method(msa.ExtendedMSA(), inner) == "newton"
    assert msa.inner_method(msa.ExtendedMSA(), two) == "optax"
    outer = problems.make("ring", samples=20, layers=2, dynamics="outer").problem
    assert msa.inner_method(msa.ExtendedMSA(), outer) == "newton"
    assert msa.inner_method(msa.ExtendedMSA(inner_optimizer=optax.adam(0.1)), inner) == "optax"
    assert msa.inner_method(msa.ExtendedMSA(inner_gradient="autodiff"), inner) == "optax"
    assert msa.inner_method(msa.ExtendedMSA(inner="optax"), inner) == "optax"
    assert msa.inner_method(msa.MSA(), inner) == "optax"
    # A P x P Hessian per layer: auto keeps to small layers (width 5: P = 30; width 6: P = 42),
    # and inner="newton" refuses huge ones before any work.
    assert msa.layer_params(inner) == 12
    w5 = problems.make("ring", samples=20, layers=2, width=5).problem
    w6 = problems.make("ring", samples=20, layers=2, width=6).problem
    assert msa.inner_method(msa.ExtendedMSA(), w5) == "newton"
    assert msa.inner_method(msa.ExtendedMSA(), w6) == "optax"
    wide = problems.make("ring", samples=20, layers=2, width=32).problem  # P = 32 · 33 = 1056
    with pytest.raises(ValueError, match="P = 1056 parameters"):
        solvers.solve(msa.ExtendedMSA(inner="newton"), wide, wide.init_controls(jax.random.PRNGKey(0)),
                      max_iters=1)


def test_subsample_takes_every_kth_sample_from_a_random_offset():
    p, c, zs, ps, data = _setup(samples=30)
    assert msa.subsample(data, jax.random.PRNGKey(0), None) is data
    assert msa.subsample(data, jax.random.PRNGKey(0), 16) is data  # n >= S/2: every sample
    offsets = set()
    for seed in range(12):
        sub = jax.jit(msa.subsample, static_argnums=2)(data, jax.random.PRNGKey(seed), 8)  # every 3rd
        r = int(np.flatnonzero(np.all(np.asarray(data.z[..., :3]) == np.asarray(sub.z[..., :1]), axis=(0, 1)))[0])
        offsets.add(r)
        for a, b in zip(sub[:4], data[:4]):
            np.testing.assert_array_equal(a, b[..., r::3][..., :10])
        for a, b in zip(jax.tree_util.tree_leaves(sub.theta), jax.tree_util.tree_leaves(data.theta)):
            np.testing.assert_array_equal(a, b)
    assert offsets == {0, 1, 2}


def test_newton_emsa_is_monotone_and_beats_gradient_inner_steps(small_ring):
    """Same starts and iterations: the Newton inner step ends lower than three safeguarded
    gradient steps, and the adaptive ``ρ`` keeps ``J`` monotone."""
    p = small_ring
    for seed in (0, 1):
        c = p.init_controls(jax.random.PRNGKey(seed))
        newton = solvers.solve(msa.ExtendedMSA(inner="newton"), p, c, max_iters=15, progress=False)
        optax_ = solvers.solve(msa.ExtendedMSA(inner="optax"), p, c, max_iters=15, progress=False)
        loss = newton.history["loss"]
        assert np.all(np.diff(loss) <= 1e-12 * (1 + loss[:-1])), loss
        assert newton.info["loss"] < optax_.info["loss"] < loss[0]


def test_readout_newton_is_exact_ridge_least_squares():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 2))
    y = np.stack([x[:, 0] - 2 * x[:, 1] + 0.1, x[:, 0] * x[:, 1]], axis=1)
    p = cn.ControlProblem(cn.InnerActivation(), cn.Euler(), 3, 3, cn.SquaredError(2), x, y,
                          readout_l2=0.05)
    c = p.init_controls(jax.random.PRNGKey(0))
    zs = cn.forward(p, c.theta)
    w = jax.jit(msa.readout_newton)(p, zs, c.w)
    # Normal equations of (1/S) Σ ½‖A z + c − y‖² + (α/2)(‖A‖² + ‖c‖²).
    Z = np.concatenate([np.asarray(zs[-1]), np.ones((40, 1))], axis=1)
    M = Z.T @ Z / 40 + 0.05 * np.eye(4)
    X = np.linalg.solve(M, Z.T @ y / 40)
    np.testing.assert_allclose(np.asarray(w["A"]), X[:3].T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(w["c"]), X[3], rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def small_ring():
    return problems.make("ring", samples=60, width=3, layers=6, horizon=3.0, l2=1e-2).problem


def test_logged_dH_and_residuals_and_minibatch(small_ring):
    p = small_ring
    c = p.init_controls(jax.random.PRNGKey(3))
    solver = msa.ExtendedMSA(rho=3.0, batch_size=25, adaptive=False)
    state = solver.init(p, c, key=jax.random.PRNGKey(9))
    new, info = jax.jit(solver.step)(p, state)
    # The minibatch is the one gd.minibatch draws from the same split of the key.
    b = minibatch(p, jax.random.split(state.key)[1], 25)

    @jax.jit
    def reference(b, c, th):
        J, zs = cn.objective(b, c)
        cw = cn.Controls(c.theta, msa.readout_newton(b, zs, c.w))  # Newton read-out comes first
        ps = cn.backward(b, cw, zs)[0]
        dH = cn.layer_hamiltonians(b, zs, ps, th, cw.w) - cn.layer_hamiltonians(b, zs, ps, c.theta, cw.w)
        r1 = zs[1:] - jax.vmap(b.step)(zs[:-1], th)
        r2 = 25 * (ps[:-1] - jax.vmap(lambda z, pn, t: cn.grad_z(b, z, pn, t, cw.w))(zs[:-1], ps[1:], th))
        return J, jnp.sum(dH), jnp.sum(r1**2) / 25, jnp.sum(r2**2) / 25

    J, dH, res1, res2 = reference(b, c, new.controls.theta)
    np.testing.assert_allclose(info["loss"], J, rtol=1e-12)
    np.testing.assert_allclose(info["dH"], dH, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(info["state_residual"], res1, rtol=1e-9)
    np.testing.assert_allclose(info["costate_residual"], res2, rtol=1e-9)
    assert float(info["state_residual"]) > 0


def test_one_sgd_inner_step_with_gradient_readout_is_gradient_descent(small_ring):
    p = small_ring
    c = p.init_controls(jax.random.PRNGKey(4))
    eta = 0.3
    s = msa.ExtendedMSA(rho=1.0, inner_steps=1, inner_optimizer=optax.sgd(eta), adaptive=False,
                        readout="gradient", readout_optimizer=optax.sgd(eta))
    new, info = jax.jit(s.step)(p, s.init(p, c, key=jax.random.PRNGKey(0)))
    J, g, _, _ = jax.jit(cn.gradient)(p, c)
    want = tmap(lambda a, b: a - eta * b, c, g)
    for a, b in zip(jax.tree_util.tree_leaves(new.controls), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(info["grad_norm"], solvers.gd.tree_norm(g), rtol=1e-10)


def test_adaptive_rho_never_increases_J_and_schedule_is_followed(small_ring):
    p = small_ring
    c = p.init_controls(jax.random.PRNGKey(5))
    r = solvers.solve(msa.ExtendedMSA(rho=0.5, inner_lr=5.0, inner="optax"), p, c, max_iters=25)
    loss = r.history["loss"]
    assert np.all(np.diff(loss) <= 1e-12 * (1 + loss[:-1])), loss
    assert r.history["accepted"].min() == 0  # this aggressive start must be rejected at least once
    rho = r.history["rho"]
    acc = r.history["accepted"][:-1] > 0
    np.testing.assert_allclose(rho[1:][~acc], 2 * rho[:-1][~acc])
    np.testing.assert_allclose(rho[1:][acc], np.maximum(0.9 * rho[:-1][acc], 1.0))
    sched = optax.linear_schedule(8.0, 2.0, 4)
    r = solvers.solve(msa.ExtendedMSA(rho=sched), p, c, max_iters=6)
    np.testing.assert_allclose(r.history["rho"], [float(sched(j)) for j in range(6)], rtol=1e-12)


@pytest.fixture(scope="module")
def converged():
    """E-MSA run to a PMP point on a small ring problem (float64)."""
    p = problems.make("ring", samples=60, width=3, layers=6, horizon=3.0, l2=0.1, readout_l2=0.1).problem
    c = p.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(msa.ExtendedMSA(rho=2.0), p, c, max_iters=300, tol=1e-7)
    assert r.status == "converged", r.status
    return p, r


def test_emsa_converges_to_a_maximum_of_every_layer_hamiltonian(converged):
    p, r = converged
    c = r.controls
    zs = cn.forward(p, c.theta)
    ps, g, _ = jax.jit(cn.backward)(p, c, zs)
    per_layer = sum(jnp.sum(x.reshape(p.N, -1) ** 2, axis=1) for x in jax.tree_util.tree_leaves(g))
    assert float(jnp.max(jnp.sqrt(per_layer))) < 1e-6, per_layer
    H = jax.jit(cn.layer_hamiltonians)(p, zs, ps, c.theta, c.w)

    @jax.jit
    def perturbed(p, zs, ps, key, size):
        """H_k at 20 random perturbations of θ_k alone, for every k: shape (N, 20)."""
        def layer(z, pn, th, kk):
            deltas = jax.vmap(lambda k2: _perturb(th, k2, size))(jax.random.split(kk, 20))
            return jax.vmap(lambda t: cn.hamiltonian(p, z, pn, t, c.w))(deltas)
        return jax.vmap(layer)(zs[:-1], ps[1:], c.theta, jax.random.split(key, p.N))

    for i, size in enumerate((1e-3, 1e-2, 1e-1, 1.0)):
        Hk = perturbed(p, zs, ps, jax.random.PRNGKey(i), size)
        assert np.all(np.asarray(Hk) < np.asarray(H)[:, None]), size


def test_emsa_decreases_J_where_basic_msa_fails(small_ring):
    """Same inner optimizer and budget; only the penalties differ (ρ = 0 versus ρ > 0)."""
    p = small_ring
    c = p.init_controls(jax.random.PRNGKey(2))
    opt = optax.adam(0.3)
    basic = solvers.solve(msa.MSA(inner_optimizer=opt, inner_steps=20), p, c, max_iters=40)
    ext = solvers.solve(msa.ExtendedMSA(rho=5.0, inner_optimizer=opt, inner_steps=20), p, c, max_iters=40)
    J0 = basic.history["loss"][0]
    assert ext.history["loss"][-1] < 0.5 * J0
    assert basic.diverged or basic.history["loss"][-10:].min() > J0, basic.history["loss"]


def test_ring_fast_emsa_reaches_99_percent():
    task = problems.make("ring", samples=120, width=3, layers=10)
    c = task.problem.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(msa.ExtendedMSA(), task.problem, c, max_iters=60)
    assert r.info["accuracy"] >= 0.99, r.info


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ring", "spiral"])
def test_emsa_reaches_99_percent(name):
    task = problems.make(name, samples=500)
    c = task.problem.init_controls(jax.random.PRNGKey(0))
    r = solvers.solve(msa.ExtendedMSA(), task.problem, c, max_iters=300, test=task.test)
    assert r.info["accuracy"] >= 0.99, r.info
    assert r.history["loss"][-1] < 0.2 * r.history["loss"][0]


def test_bad_options_raise():
    with pytest.raises(ValueError, match="rho"):
        msa.ExtendedMSA(rho=0.0)
    with pytest.raises(ValueError, match="inner_steps"):
        msa.MSA(inner_steps=0)
    with pytest.raises(ValueError, match="readout"):
        msa.ExtendedMSA(readout="lstsq")
    with pytest.raises(ValueError, match="hessian_samples"):
        msa.ExtendedMSA(inner="newton", hessian_samples=0)
    with pytest.raises(ValueError, match="inner_optimizer is the optimizer of inner='optax'"):
        msa.ExtendedMSA(inner="newton", inner_optimizer=optax.adam(0.1))
    with pytest.raises(ValueError, match="inner must be 'auto', 'optax'.*'newton'"):
        msa.ExtendedMSA(inner="bfgs")
    with pytest.raises(ValueError, match="kind"):
        DiscreteMSA(kind="quaternary")
    assert solvers.make_solver("emsa", rho=3.0).rho == 3.0
    assert isinstance(solvers.make_solver("msa"), msa.MSA)


# -- discrete weights ---------------------------------------------------------------------------
def test_quantize_is_the_elementwise_argmax():
    rng = np.random.default_rng(0)
    M = rng.normal(size=500)
    s = 0.7
    for kind, levels in (("binary", (-1, 1)), ("ternary", (-1, 0, 1))):
        prev = s * rng.choice(levels, 500).astype(float)
        for lam, rho in ((0.0, 0.0), (0.3, 0.0), (0.2, 1.5)):
            got = np.asarray(quantize(jnp.asarray(M), jnp.asarray(prev), s, kind, lam, rho))
            cand = s * np.array(levels, float)
            val = M[:, None] * cand - lam * np.abs(cand) - 0.5 * rho * (cand - prev[:, None]) ** 2
            np.testing.assert_allclose(val[np.arange(500), [list(cand).index(g) for g in got]],
                                       val.max(axis=1), rtol=0, atol=1e-12)
    # Li & Hao's rules in closed form.
    zero = jnp.zeros(500)
    np.testing.assert_array_equal(quantize(jnp.asarray(M), zero, s, "binary"), s * np.sign(M))
    np.testing.assert_array_equal(quantize(jnp.asarray(M), zero, s, "ternary", 0.3),
                                  s * np.sign(M) * (np.abs(M) > 0.3 * 1.0))
    # Error control: a binary weight flips only when |M| > ρ s.
    prev = s * np.sign(rng.normal(size=500))
    got = np.asarray(quantize(jnp.asarray(M), jnp.asarray(prev), s, "binary", rho=0.5))
    flipped = got != prev
    np.testing.assert_array_equal(flipped, (np.sign(M) != np.sign(prev)) & (np.abs(M) > 0.5 * s))


def test_discrete_msa_step_is_the_sign_rule_on_the_hamiltonian_gradient(small_ring):
    p = small_ring
    c = p.init_controls(jax.random.PRNGKey(6))
    s = DiscreteMSA(lr=0.7)
    st = s.init(p, c, key=jax.random.PRNGKey(0))
    lvl = 1 / np.sqrt(3)
    np.testing.assert_array_equal(st.controls.theta["W"], lvl * np.sign(c.theta["W"]))
    new, info = jax.jit(s.step)(p, st)
    _, g, _, _ = jax.jit(cn.gradient)(p, st.controls)  # ∇_θH_k = −∇_θJ
    M = c.theta["W"] - 0.7 * g.theta["W"]
    np.testing.assert_array_equal(new.controls.theta["W"], lvl * np.sign(M))
    np.testing.assert_allclose(new.controls.theta["b"], st.controls.theta["b"] - 0.5 * g.theta["b"], rtol=1e-12)
    np.testing.assert_allclose(info["flips"], np.mean(new.controls.theta["W"] != st.controls.theta["W"]))


def test_discrete_msa_trains_binary_and_ternary_weights():
    task = problems.make("ring", samples=200, layers=20)
    p = task.problem
    c = p.init_controls(jax.random.PRNGKey(0))
    for s in (DiscreteMSA(), DiscreteMSA(kind="ternary", threshold=0.01)):
        r = solvers.solve(s, p, c, max_iters=150)
        levels = set(np.unique(np.asarray(r.controls.theta["W"])).round(12))
        allowed = {-0.57735026919, 0.57735026919} | ({0.0} if s.kind == "ternary" else set())
        assert levels <= {round(v, 12) for v in allowed} | allowed, levels
        assert r.history["loss"].min() < 0.6 * r.history["loss"][0], (s.kind, r.history["loss"])
