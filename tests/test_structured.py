"""Structure-preserving networks, splitting integrators, the MLP map and architecture classes.

Every structural property is checked numerically on random parameters in float64:
det ∂Ψ/∂z = 1, conserved mass, Lipschitz constant <= 1, re(eig ∂f/∂z) <= 0, bounded energy error
and symplecticity; convergence orders of Lie/Strang splitting; and the gradient identity
(adjoint = jax.grad) for every new dynamics/integrator pair.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
from controlnet.architecture import classify, classify_problem, layer_ranks

KEY = jax.random.PRNGKey(0)


def _theta(field, d, key=KEY, scale=1.0):
    return field.init(key, d, scale)


def _points(S, d, seed=1, scale=1.0):
    return scale * jax.random.normal(jax.random.PRNGKey(seed), (S, d))


def _step_jacobians(integrator, field, theta, z, h):
    """``∂Ψ_h/∂z`` at every row of ``z``, shape ``(S, d, d)``."""
    one = lambda u: integrator.step(field, u[None], theta, h)[0]  # noqa: E731
    return jax.vmap(jax.jacfwd(one))(z)


# -- the MLP map --------------------------------------------------------------------------------
def test_no_residual_is_the_mlp_layer():
    f = cn.InnerActivation("tanh")
    th = _theta(f, 3)
    z = _points(7, 3)
    out = cn.NoResidual().step(f, z, th, 0.37)
    np.testing.assert_allclose(out, np.tanh(z @ th["W"].T + th["b"]), rtol=0, atol=1e-14)


# -- volume preservation ------------------------------------------------------------------------
@pytest.mark.parametrize("integrator", [cn.LieSplitting(), cn.StrangSplitting()])
def test_volume_preserving_step_has_unit_determinant(integrator):
    f = cn.VolumePreserving("tanh")
    dets = []
    for seed in range(5):
        th = _theta(f, 6, jax.random.PRNGKey(seed), scale=2.0)
        J = _step_jacobians(integrator, f, th, _points(20, 6, seed + 10, 2.0), 0.7)
        dets.append(np.linalg.det(np.asarray(J)))
    dets = np.concatenate(dets)
    np.testing.assert_allclose(dets, 1.0, rtol=0, atol=1e-12)
    # Forward Euler on the same field does not preserve volume: the test can tell.
    J = _step_jacobians(cn.Euler(), f, th, _points(20, 6, 3, 2.0), 0.7)
    assert np.max(np.abs(np.linalg.det(np.asarray(J)) - 1.0)) > 1e-2


# -- mass preservation ----------------------------------------------------------------------------
@pytest.mark.parametrize("integrator", [cn.Euler(), cn.RK4()])
def test_mass_preserving_network_conserves_sum(integrator):
    f = cn.MassPreserving("tanh")
    x = np.asarray(_points(25, 4, 2))
    problem = cn.ControlProblem(f, integrator, 10, 4, cn.Logistic(), x,
                                (x[:, 0] > 0).astype(int), T=3.0)
    c = problem.init_controls(KEY, scale=2.0)
    zs = cn.forward(problem, c.theta)
    mass = np.asarray(zs.sum(axis=-1))
    assert np.abs(mass - mass[0]).max() < 1e-12
    assert float(jnp.max(jnp.abs(zs[-1] - zs[0]))) > 0.1  # the states did move


# -- Lipschitz -----------------------------------------------------------------------------------
def test_lipschitz_condition_is_enforced():
    with pytest.raises(ValueError, match="expansive_step"):
        cn.LipschitzNet(contractive_step=0.5, expansive_step=0.2)
    with pytest.raises(ValueError, match="contractive_step in"):
        cn.LipschitzNet(contractive_step=1.5, expansive_step=0.0)
    h_C = 0.5
    best = 1.0 / np.sqrt(1 - h_C + h_C**2) - 1.0
    assert cn.lipschitz_factor(h_C, best) == pytest.approx(1.0, abs=1e-14)
    cn.LipschitzNet(contractive_step=h_C, expansive_step=best * (1 - 1e-12))


@pytest.fixture(scope="module")
def lipschitz_network():
    # Small steps: each layer's true constant is close to 1, so the bound is tested near its edge.
    f = cn.LipschitzNet(contractive_step=0.2, expansive_step=0.09, activation="tanh")
    x = np.asarray(_points(10, 4, 0))
    problem = cn.ControlProblem(f, cn.LieSplitting(), 4, 4, cn.Logistic(), x,
                                (x[:, 0] > 0).astype(int))
    c = problem.init_controls(jax.random.PRNGKey(7), scale=3.0)
    flow = jax.jit(jax.vmap(lambda u: cn.final_state(problem, c.theta, u[None])[0]))
    return problem, c, flow


def test_lipschitz_network_is_one_lipschitz_over_pairs(lipschitz_network):
    _, _, flow = lipschitz_network
    a, b = _points(4000, 4, 11, 2.0), _points(4000, 4, 12, 2.0)
    # Far pairs and near pairs (the local constant is the harder one to keep below 1).
    near = a + 1e-3 * _points(4000, 4, 13)
    ratios = np.concatenate([
        np.linalg.norm(flow(a) - flow(b), axis=1) / np.linalg.norm(a - b, axis=1),
        np.linalg.norm(flow(a) - flow(near), axis=1) / np.linalg.norm(a - near, axis=1),
    ])
    assert ratios.max() <= 1.0 + 1e-12
    assert ratios.max() > 0.5  # a real estimate, not a collapsed map


def test_lipschitz_network_jacobian_norm_at_most_one(lipschitz_network):
    problem, c, _ = lipschitz_network
    flow = lambda u: cn.final_state(problem, c.theta, u[None])[0]  # noqa: E731
    J = jax.vmap(jax.jacfwd(flow))(_points(300, 4, 21, 2.0))
    assert np.linalg.norm(np.asarray(J), ord=2, axis=(1, 2)).max() <= 1.0 + 1e-12


def test_lipschitz_layer_at_the_step_size_limit():
    h_C = 0.5
    f = cn.LipschitzNet(h_C, 1.0 / np.sqrt(1 - h_C + h_C**2) - 1.0 - 1e-12)
    th = _theta(f, 4, scale=3.0)
    J = _step_jacobians(cn.LieSplitting(), f, th, _points(500, 4, 22, 2.0), 123.0)  # h unused
    assert np.linalg.norm(np.asarray(J), ord=2, axis=(1, 2)).max() <= 1.0 + 1e-12


def test_lipschitz_parametrization_is_orthogonal_and_normalized():
    M = jax.random.normal(KEY, (5, 5))
    Q = cn.structured.orthogonal(M)
    np.testing.assert_allclose(Q.T @ Q, np.eye(5), atol=1e-13)
    W = cn.structured.spectral_normalize(10 * M)
    assert np.linalg.norm(np.asarray(W), 2) == pytest.approx(1.0, abs=1e-12)
    small = 0.01 * M
    np.testing.assert_array_equal(cn.structured.spectral_normalize(small), small)


# -- antisymmetric (Haber & Ruthotto) -----------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_antisymmetric_jacobian_eigenvalues(gamma):
    f = cn.Antisymmetric(gamma=gamma)
    th = _theta(f, 5, scale=3.0)
    z = _points(50, 5, 4, 2.0)
    J = jax.vmap(jax.jacfwd(lambda u: f(u, th)))(z)
    re = np.linalg.eigvals(np.asarray(J)).real
    if gamma == 0.0:
        np.testing.assert_allclose(re, 0.0, atol=1e-12)
    else:
        assert re.max() <= 1e-12 and re.min() < -1e-3
    # The unconstrained field σ(Wz + b) with the same W does have unstable directions.
    J = jax.vmap(jax.jacfwd(lambda u: cn.InnerActivation()(u, th)))(z)
    assert np.linalg.eigvals(np.asarray(J)).real.max() > 1e-2


# -- Hamiltonian: symplecticity and energy ------------------------------------------------------
def _omega(n):
    return np.block([[np.zeros((n, n)), np.eye(n)], [-np.eye(n), np.zeros((n, n))]])


@pytest.mark.parametrize("integrator", [cn.LieSplitting(), cn.StrangSplitting()])
def test_hamiltonian_step_is_symplectic(integrator):
    f = cn.Hamiltonian(width=5)
    th = _theta(f, 6, scale=2.0)
    J = np.asarray(_step_jacobians(integrator, f, th, _points(20, 6, 8), 0.5))
    W = _omega(3)
    err = np.abs(np.einsum("sji,jk,skl->sil", J, W, J) - W).max()
    assert err < 1e-12
    J = np.asarray(_step_jacobians(cn.Euler(), f, th, _points(20, 6, 8), 0.5))
    assert np.abs(np.einsum("sji,jk,skl->sil", J, W, J) - W).max() > 1e-2


def test_hamiltonian_vector_field_is_hamiltons_equations():
    f = cn.Hamiltonian(width=4, activation="tanh")
    th = _theta(f, 6)
    z = _points(9, 6, 3)
    gE = jax.vmap(jax.grad(lambda u: f.energy(u, th)))(z)
    dEdx, dEdv = gE[:, :3], gE[:, 3:]
    np.testing.assert_allclose(f(z, th), np.concatenate([dEdv, -dEdx], axis=1), atol=1e-13)


@jax.jit(static_argnames=("integrator", "f", "N"))
def _energy_errors(integrator, f, th, z0, h, N):
    """``max_i |E(z_{k,i}) − E(z_{0,i})|`` for ``k = 1..N``, steps of size ``h``, ``θ`` held fixed."""
    _, zs = jax.lax.scan(lambda z, _: (integrator.step(f, z, th, h),) * 2, z0, None, length=N)
    return jnp.max(jnp.abs(f.energy(zs, th) - f.energy(z0, th)), axis=1)


def test_hamiltonian_energy_error_bounded_and_of_integrator_order():
    f = cn.Hamiltonian(width=6, activation="tanh")
    th = _theta(f, 4, scale=1.5)
    z0 = _points(16, 4, 6)
    N = 400
    # Max energy error over N steps of size h and h/2 (horizons 40 and 20).
    leap = [_energy_errors(cn.StrangSplitting(), f, th, z0, h, N) for h in (0.1, 0.05)]
    lie = [_energy_errors(cn.LieSplitting(), f, th, z0, h, N) for h in (0.1, 0.05)]
    euler = float(_energy_errors(cn.Euler(), f, th, z0, 0.1, N).max())
    assert 3.3 < leap[0].max() / leap[1].max() < 4.7  # O(h²) energy error for leapfrog
    assert 1.6 < lie[0].max() / lie[1].max() < 2.4  # O(h) for symplectic Euler
    # Bounded: the error over the whole horizon 40 is that of its first quarter, no drift.
    assert leap[0].max() < 1.5 * leap[0][: N // 4].max()
    assert euler > 10 * lie[0].max()  # forward Euler drifts


# -- convergence order of the splitting integrators ---------------------------------------------
def test_splitting_convergence_orders():
    f = cn.VolumePreserving("tanh")
    th = _theta(f, 4, scale=1.5)
    z0 = _points(8, 4, 9)
    T = 1.0

    def solve(integrator, N):
        z = z0
        for _ in range(N):
            z = integrator.step(f, z, th, T / N)
        return z

    ref = solve(cn.RK4(), 400)
    for integrator, order in ((cn.LieSplitting(), 1), (cn.StrangSplitting(), 2)):
        errs = [float(jnp.max(jnp.abs(solve(integrator, N) - ref))) for N in (20, 40, 80)]
        slope = -np.polyfit(np.log([20, 40, 80]), np.log(errs), 1)[0]
        assert abs(slope - order) < 0.15, (integrator, errs, slope)


def test_splitting_rejects_fields_without_parts():
    with pytest.raises(TypeError, match="SplitField"):
        cn.StrangSplitting().step(cn.InnerActivation(), jnp.zeros((2, 3)), None, 0.1)
    with pytest.raises(ValueError, match="even state width"):
        cn.VolumePreserving().init(KEY, 3)


# -- gradient identity for every new pair ------------------------------------------------------
# Every new integrator and every new field at least once (each pair costs a compilation).
PAIRS = {
    "mlp": (cn.InnerActivation("tanh"), cn.NoResidual(), 3),
    "antisymmetric": (cn.Antisymmetric(gamma=0.1), cn.Euler(), 3),
    "hamiltonian_strang": (cn.Hamiltonian(width=3, activation="relu"), cn.StrangSplitting(), 4),
    "volume_lie": (cn.VolumePreserving(), cn.LieSplitting(), 4),
    "mass_euler": (cn.MassPreserving(), cn.Euler(), 3),
    "lipschitz_lie": (cn.LipschitzNet(0.5, 0.15), cn.LieSplitting(), 3),
}


@jax.jit
def _both_gradients(problem, controls):
    """``(J, ∇J)`` by the adjoint module and by ``jax.grad`` (one compilation for both)."""
    J, g, _, _ = cn.gradient(problem, controls)
    return (J, g), jax.value_and_grad(lambda c: cn.objective(problem, c)[0])(controls)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_gradient_identity(name):
    field, integrator, width = PAIRS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 2))
    problem = cn.ControlProblem(field, integrator, 3, width, cn.Logistic(), x,
                                (x[:, 0] * x[:, 1] > 0).astype(int), T=2.0, l2=0.1)
    c = problem.init_controls(jax.random.PRNGKey(3))
    (Ja, ga), (Jb, gb) = _both_gradients(problem, c)
    assert float(Ja) == pytest.approx(float(Jb), rel=1e-13)
    flat = lambda t: jnp.concatenate([l.ravel() for l in jax.tree_util.tree_leaves(t)])  # noqa: E731
    a, b = flat(ga), flat(gb)
    assert float(jnp.linalg.norm(a - b)) <= 1e-11 * float(jnp.linalg.norm(b))
    assert float(jnp.linalg.norm(b)) > 1e-3


# -- architecture classes ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "widths, ranks, kind, degenerate",
    [
        ((2, 2, 2, 1), None, "non-augmented", False),
        ((3, 2, 2, 1), None, "non-augmented", False),
        ((2, 3, 3, 1), None, "augmented", False),
        ((2, 3, 2, 1), None, "augmented", False),
        ((2, 1, 3, 1), None, "bottleneck", False),
        ((3, 2, 3, 1), None, "bottleneck", False),
        ((2, 2, 2, 1), (2, 1, 1), "bottleneck", True),  # a rank-1 weight between width-2 layers
        ((2, 3, 3, 1), (2, 2, 1), "bottleneck", True),  # a degenerate layer is always one
        ((2, 2, 2, 1), (1, 2, 1), "bottleneck", True),
    ],
)
def test_classify(widths, ranks, kind, degenerate):
    a = classify(widths, ranks)
    assert (a.kind, a.degenerate) == (kind, degenerate)


def test_classify_rejects_impossible_ranks():
    with pytest.raises(ValueError, match="impossible"):
        classify((2, 3, 1), (3, 1))
    with pytest.raises(ValueError, match="one rank per layer"):
        classify((2, 3, 1), (2,))


def test_classify_problem_resnet_and_degenerate_mlp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 2))
    y = (x[:, 0] > 0).astype(int)
    resnet = cn.ControlProblem(cn.InnerActivation(), cn.Euler(), 3, 3, cn.Logistic(), x, y)
    c = resnet.init_controls(KEY)
    assert classify_problem(resnet, c).kind == "augmented"
    mlp = cn.ControlProblem(cn.InnerActivation(), cn.NoResidual(), 3, 2, cn.Logistic(), x, y)
    c = mlp.init_controls(KEY)
    assert classify_problem(mlp, c).kind == "non-augmented"
    # Make the middle layer's weight rank 1: the MLP now has a bottleneck (a ResNet would not).
    W = c.theta["W"].at[1].set(jnp.outer(jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])))
    c = c._replace(theta={**c.theta, "W": W})
    np.testing.assert_array_equal(layer_ranks(mlp, c.theta), [2, 1, 2])
    a = classify_problem(mlp, c)
    assert (a.kind, a.degenerate) == ("bottleneck", True)
    res = resnet.replace_data(resnet.x, resnet.y)
    c3 = res.init_controls(KEY)
    W3 = c3.theta["W"].at[1].set(jnp.zeros((3, 3)))
    assert classify_problem(res, c3._replace(theta={**c3.theta, "W": W3})).kind == "augmented"
