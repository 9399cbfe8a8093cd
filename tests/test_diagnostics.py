"""Every diagnostic against a case whose answer is known in closed form (float64)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
from controlnet import diagnostics as dg
from controlnet.costs import smoothness


def linear_problem(W, b=None, *, N=4, T=1.0, x=None, y=None, integrator=None, **weights):
    """``f(z, θ) = W z + b`` (outer field with the identity), same ``W, b`` at every layer."""
    W = np.asarray(W, float)
    d = W.shape[0]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, d)) if x is None else np.asarray(x, float)
    y = rng.normal(size=(x.shape[0], d)) if y is None else y
    problem = cn.ControlProblem(cn.OuterActivation("identity"), integrator or cn.Euler(), N, d,
                                cn.SquaredError(d), x, y, T=T, **weights)
    b = np.zeros(d) if b is None else np.asarray(b, float)
    theta = {"W": jnp.broadcast_to(W, (N, d, d)), "b": jnp.broadcast_to(b, (N, d))}
    w = {"A": jnp.eye(d), "c": jnp.zeros(d)}
    return problem, cn.Controls(theta, w)


# -- turnpike ----------------------------------------------------------------------------------
def test_control_norms_and_flow_speed_of_a_constant_drift():
    # W = 0, b = v: every state moves by h v per layer, so the speed is ‖v‖ and ‖θ_k‖ = ‖v‖.
    v = np.array([0.3, -1.2, 0.4])
    problem, c = linear_problem(np.zeros((3, 3)), v, N=5, T=2.0)
    zs = cn.forward(problem, c.theta)
    np.testing.assert_allclose(dg.control_norms(c.theta), np.full(5, np.linalg.norm(v)), rtol=1e-13)
    np.testing.assert_allclose(dg.flow_speed(zs, problem.h), np.full(5, np.linalg.norm(v)), rtol=1e-12)
    # risk at layer k: mean ½‖x_i + k h v − y_i‖² with the identity read-out
    k = np.arange(6)[:, None, None]
    expected = 0.5 * np.mean(np.sum((problem.x + k * problem.h * v - problem.y) ** 2, -1), -1)
    np.testing.assert_allclose(dg.layer_risk(problem, zs, c.w), expected, rtol=1e-12)


def test_zero_control_has_zero_norm_speed_and_constant_risk():
    problem, c = linear_problem(np.zeros((2, 2)), N=6)
    zs = cn.forward(problem, c.theta)
    prof = dg.turnpike_profile(problem, c, zs)
    assert np.all(np.asarray(prof["theta_norm"]) == 0) and np.all(np.asarray(prof["speed"]) == 0)
    np.testing.assert_allclose(prof["risk"], float(problem.data_loss(problem.z0(), c.w)), rtol=1e-14)
    np.testing.assert_allclose(prof["t"], (np.arange(6) + 0.5) / 6, rtol=1e-14)


@dataclasses.dataclass(frozen=True)
class Relaxation(cn.VectorField):
    """``f(z, θ) = u + a − z``: the steady state is ``z̄ = u + a`` whatever the sample."""

    a: tuple = (0.5, -1.0)

    def __call__(self, z, theta):
        return theta["u"] + jnp.asarray(self.a) - z

    def init(self, key, d, scale=1.0):
        return {"u": scale * jax.random.normal(key, (d,))}


def test_steady_state_matches_the_closed_form():
    # min α/2‖u‖² + γ (1/S) Σ ½‖z̄_i − y_i‖² s.t. z̄_i = u + a  ⇒  u = γ(ȳ − a)/(α + γ)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 2)), rng.normal(size=(9, 2))
    alpha, gamma = 0.7, 2.0
    problem = cn.ControlProblem(Relaxation(), cn.Euler(), 5, 2, cn.SquaredError(2), x, y, T=3.0,
                                l2=alpha, tracking=gamma)
    w = {"A": jnp.eye(2), "c": jnp.zeros(2)}
    a = np.asarray(Relaxation().a)
    u = gamma * (y.mean(0) - a) / (alpha + gamma)
    st = dg.steady_state(problem, w, jnp.asarray(x), {"u": jnp.zeros(2)})
    np.testing.assert_allclose(st.theta["u"], u, atol=1e-7)
    np.testing.assert_allclose(st.z, np.broadcast_to(u + a, (9, 2)), atol=1e-7)
    assert float(st.residual) < 1e-7
    cost = alpha / 2 * u @ u + gamma * 0.5 * np.mean(np.sum((u + a - y) ** 2, -1))
    np.testing.assert_allclose(float(st.cost), cost, rtol=1e-9)
    # Started at the steady state with the steady control, the flow never leaves it.
    theta = {"u": jnp.broadcast_to(st.theta["u"], (5, 2))}
    zs = cn.forward(problem, theta, z0=st.z)
    dist = dg.steady_distance(theta, zs, st)
    assert np.max(np.asarray(dist["control"])) == 0
    assert np.max(np.asarray(dist["state"])) < 1e-12


def test_steady_control_of_a_linear_field_is_zero():
    # f = W z + b vanishes for θ = 0; with the identity read-out and squared tracking the
    # steady problem is solved by θ̄ = 0, z̄_i = y_i at zero cost.
    problem, c = linear_problem(np.eye(2), N=3, l2=0.5, tracking=1.0)
    rng = np.random.default_rng(2)
    th0 = {"W": jnp.asarray(0.3 * rng.normal(size=(2, 2))), "b": jnp.asarray(0.3 * rng.normal(size=2))}
    st = dg.steady_state(problem, c.w, problem.z0(), th0)
    assert float(st.cost) < 1e-10
    np.testing.assert_allclose(st.z, problem.y, atol=1e-5)
    assert max(float(jnp.max(jnp.abs(v))) for v in st.theta.values()) < 1e-5


@pytest.mark.parametrize("mu", [1.3, 0.05])
def test_fit_recovers_an_exact_exponential_profile(mu):
    T, C = 10.0, 0.7
    t = (np.arange(40) + 0.5) * T / 40
    v = C * (np.exp(-mu * t) + np.exp(-mu * (T - t)))
    fit = dg.fit_turnpike(t, v, T)
    np.testing.assert_allclose(fit.mu, mu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([fit.C0, fit.CT], C, rtol=1e-5)
    assert fit.r2 > 1 - 1e-10 and fit.rel_rms < 1e-6
    free = dg.fit_turnpike(t, v, T, amplitudes="free")
    np.testing.assert_allclose([free.mu, free.C0, free.CT], [mu, C, C], rtol=1e-6)


@pytest.mark.parametrize("C0, CT", [(2.0, 0.1), (1.5, 0.0)])
def test_free_amplitudes_recover_an_asymmetric_and_a_one_sided_profile(C0, CT):
    T, mu = 8.0, 0.8
    t = (np.arange(32) + 0.5) * T / 32
    v = C0 * np.exp(-mu * t) + CT * np.exp(-mu * (T - t))
    fit = dg.fit_turnpike(t, v, T, amplitudes="free")
    np.testing.assert_allclose([fit.mu, fit.C0], [mu, C0], rtol=1e-6)
    np.testing.assert_allclose(fit.CT, CT, rtol=1e-6, atol=1e-9)
    assert fit.r2 > 1 - 1e-10
    # the equal-amplitude form cannot follow a one-sided profile
    assert CT > 0 or dg.fit_turnpike(t, v, T).r2 < 0.9


def test_fit_of_a_flat_profile_is_mu_zero_and_a_bump_fits_badly():
    T = 4.0
    t = (np.arange(20) + 0.5) * T / 20
    fit = dg.fit_turnpike(t, np.full(20, 2.5), T)
    assert fit.mu == 0.0 and fit.C0 == pytest.approx(1.25, rel=1e-14) and fit.r2 == 1.0
    bump = np.exp(-((t - T / 2) ** 2))  # largest mid-horizon: the opposite of a turnpike
    assert dg.fit_turnpike(t, bump, T).r2 < 0.1


def test_fit_quality_drops_for_a_profile_that_is_not_exponential():
    T = 10.0
    t = (np.arange(40) + 0.5) * T / 40
    v = 1.0 + np.sin(3 * t) ** 2  # oscillates; no two-sided exponential explains it
    assert dg.fit_turnpike(t, v, T).r2 < 0.5


def test_fit_rejects_too_few_positive_values():
    with pytest.raises(ValueError, match="at least 3 positive"):
        dg.fit_turnpike(np.arange(4.0), np.array([1.0, 0.0, 0.0, -1.0]), 4.0)


def test_band_fraction_of_a_one_sided_exponential():
    # v = C e^{−μ t_k} ≤ ε  ⇔  t_k ≥ log(C/ε)/μ: the count of such grid points is known.
    N, T, C, mu, eps = 50, 5.0, 2.0, 1.7, 0.1
    t = (np.arange(N) + 0.5) * T / N
    v = C * np.exp(-mu * t)
    k0 = math.ceil(np.log(C / eps) / mu / (T / N) - 0.5)
    assert dg.band_fraction(v, eps) == pytest.approx((N - k0) / N, abs=1e-15)
    assert dg.band_fraction(v, 0.0) == 0.0 and dg.band_fraction(v, C) == 1.0
    with pytest.raises(ValueError, match="eps"):
        dg.band_fraction(v, -1.0)


# -- regularization ----------------------------------------------------------------------------
def test_norms_of_a_constant_control():
    N, T = 8, 2.0
    W = np.array([[1.0, -2.0], [0.5, 0.0]])
    b = np.array([3.0, -1.0])
    _, c = linear_problem(W, b, N=N, T=T)
    h = T / N
    norm2 = np.sqrt(np.sum(W**2) + np.sum(b**2))
    np.testing.assert_allclose(dg.l2_norm(c.theta, h), np.sqrt(T) * norm2, rtol=1e-14)
    np.testing.assert_allclose(dg.l1_norm(c.theta, h), T * (np.abs(W).sum() + np.abs(b).sum()), rtol=1e-14)
    assert float(dg.time_derivative_norm(c.theta, h)) == 0.0


def test_time_derivative_of_a_linear_ramp():
    # θ(t_k) = θ₀ + t_k s  ⇒  ‖∂_tθ‖² = (N−1) h ‖s‖², and ½‖∂_tθ‖² is the smoothness cost.
    N, T = 9, 3.0
    h = T / N
    s = {"W": np.array([[1.0, 2.0], [0.0, -1.0]]), "b": np.array([0.5, 0.25])}
    theta = {k: jnp.asarray(1.0 + np.arange(N).reshape((N,) + (1,) * v.ndim) * h * v) for k, v in s.items()}
    s2 = sum(np.sum(v**2) for v in s.values())
    np.testing.assert_allclose(dg.time_derivative_norm(theta, h) ** 2, (N - 1) * h * s2, rtol=1e-12)
    np.testing.assert_allclose(0.5 * dg.time_derivative_norm(theta, h) ** 2, smoothness(theta, h), rtol=1e-12)


def test_stopping_time():
    N, T = 10, 5.0
    h = T / N
    active = np.zeros(N)
    active[:4] = 1.0
    active[1] = 0.0  # an inactive layer before the last active one does not stop the control
    theta = {"W": jnp.asarray(active[:, None, None] * np.ones((N, 2, 2))), "b": jnp.zeros((N, 2))}
    assert dg.stopping_time(theta, h) == pytest.approx(4 * h)
    zero = jax.tree_util.tree_map(jnp.zeros_like, theta)
    assert dg.stopping_time(zero, h) == 0.0
    ones = jax.tree_util.tree_map(jnp.ones_like, theta)
    assert dg.stopping_time(ones, h) == pytest.approx(T)
    summary = dg.regularization_summary(theta, h)
    assert summary["stopping_time"] == pytest.approx(4 * h)
    np.testing.assert_allclose(summary["l1"], h * 3 * 4, rtol=1e-14)


# -- stability ---------------------------------------------------------------------------------
def test_lipschitz_of_a_scaled_identity_and_of_a_diagonal():
    for W, L in [(-0.8 * np.eye(3), 0.8), (np.diag([3.0, -1.0, 0.5]), 3.0)]:
        problem, c = linear_problem(W, N=4, T=1.0)
        np.testing.assert_allclose(dg.lipschitz_bound(problem.dynamics, c.theta), L, rtol=1e-12)
        np.testing.assert_allclose(dg.jacobian_norms(problem, c.theta), L, rtol=1e-12)
        inv = dg.invertibility(problem, c.theta)
        np.testing.assert_allclose(inv["h_lip_bound"], problem.h * L, rtol=1e-12)
        assert bool(np.all(inv["invertible"])) == (problem.h * L < 1)


def test_tanh_jacobian_at_the_origin_is_W_and_two_layer_bound():
    # z = 0, b = 0 stays at 0 under σ(Wz + b), where ∂_z f = σ'(0) W = W.
    rng = np.random.default_rng(3)
    W = rng.normal(size=(3, 3))
    p = cn.ControlProblem(cn.InnerActivation("tanh"), cn.Euler(), 3, 3, cn.SquaredError(3),
                          np.zeros((4, 3)), np.zeros((4, 3)))
    theta = {"W": jnp.broadcast_to(W, (3, 3, 3)), "b": jnp.zeros((3, 3))}
    np.testing.assert_allclose(dg.jacobian_norms(p, theta), np.linalg.norm(W, 2), rtol=1e-12)
    np.testing.assert_allclose(dg.lipschitz_bound(p.dynamics, theta), np.linalg.norm(W, 2), rtol=1e-12)
    A, B = np.diag([2.0, 1.0, 0.5, 0.1]), np.diag([0.5, 3.0, 1.0])  # (m=4, d=3) and (d=3, m=4)
    A, Bm = A[:, :3], np.hstack([B, np.zeros((3, 1))])
    two = cn.TwoLayer(width=4, activation="sigmoid")
    th2 = {"A": jnp.asarray(A)[None], "a": jnp.zeros((1, 4)), "B": jnp.asarray(Bm)[None]}
    np.testing.assert_allclose(dg.lipschitz_bound(two, th2), 0.25 * 3.0 * 2.0, rtol=1e-12)
    with pytest.raises(ValueError, match="jacobian_norms"):
        dg.lipschitz_bound(Relaxation(), {"u": jnp.zeros((1, 2))})


class BoundedRelaxation(Relaxation):
    """:class:`Relaxation` with its own weight bound: ``Lip(u + a − z) = 1`` exactly."""

    def lipschitz_bound(self, theta, space=None):
        return jnp.ones((), theta["u"].dtype)


def test_a_field_offers_its_own_lipschitz_bound():
    """A field defined here gets the stability diagnostics' bound through its method, with no
    change in the diagnostics; the local constant along the data equals it (``∂_z f = −I``)."""
    p = cn.ControlProblem(BoundedRelaxation(), cn.Euler(), 4, 2, cn.SquaredError(2), np.ones((3, 2)),
                          np.zeros((3, 2)), T=2.0)
    theta = p.init_controls(jax.random.PRNGKey(0)).theta
    np.testing.assert_array_equal(dg.lipschitz_bound(p.dynamics, theta), np.ones(4))
    inv = dg.invertibility(p, theta)
    np.testing.assert_allclose(inv["h_lip_bound"], 0.5 * np.ones(4), rtol=1e-15)
    np.testing.assert_allclose(inv["h_lip_local"], inv["h_lip_bound"], rtol=1e-12)
    assert bool(np.all(inv["invertible"]))
    assert "h_lip_bound" not in dg.invertibility(dataclasses.replace(p, dynamics=Relaxation()), theta)


@pytest.mark.parametrize("h_T, stable", [(2.0, True), (4.0, False)])
def test_eigenvalues_of_a_linear_field_and_euler_stability(h_T, stable):
    # eig([[−1, 2], [0, −3]]) = {−1, −3}; max|1 + hλ| = max(|1 − h|, |1 − 3h|).
    W = np.array([[-1.0, 2.0], [0.0, -3.0]])
    problem, c = linear_problem(W, N=4, T=h_T)
    lam = dg.jacobian_eigenvalues(problem, c.theta)
    assert lam.shape == (4, 7, 2)
    np.testing.assert_allclose(np.sort(np.asarray(lam).real, axis=-1), np.broadcast_to([-3.0, -1.0], (4, 7, 2)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(lam).imag, 0.0, atol=1e-12)
    ok, amp = dg.euler_stable(lam, problem.h)
    h = problem.h
    np.testing.assert_allclose(amp, max(abs(1 - h), abs(1 - 3 * h)), rtol=1e-12)
    assert bool(np.all(ok)) == stable


def test_a_rotation_is_never_euler_stable():
    w = 2.0
    problem, c = linear_problem(np.array([[0.0, -w], [w, 0.0]]), N=5, T=0.1)
    lam = dg.jacobian_eigenvalues(problem, c.theta)
    np.testing.assert_allclose(np.sort(np.asarray(lam).imag, axis=-1), np.broadcast_to([-w, w], (5, 7, 2)), atol=1e-12)
    ok, amp = dg.euler_stable(lam, problem.h)
    np.testing.assert_allclose(amp, np.sqrt(1 + (problem.h * w) ** 2), rtol=1e-12)
    assert not np.any(np.asarray(ok))


@pytest.mark.parametrize("a", [0.7, -0.4])
def test_flow_lipschitz_of_a_scaled_identity(a):
    # Euler on ż = a z: z_N = (1 + ha)^N z_0 exactly; the bound is (1 + h|a|)^N.
    N, T = 6, 1.5
    problem, c = linear_problem(a * np.eye(2), N=N, T=T)
    h = T / N
    out = dg.flow_lipschitz(problem, c.theta)
    np.testing.assert_allclose(out["local"], abs(1 + h * a) ** N, rtol=1e-12)
    np.testing.assert_allclose(out["bound"], (1 + h * abs(a)) ** N, rtol=1e-12)


def test_flow_lipschitz_of_a_non_normal_system_with_rk4():
    # RK4 on ż = W z: one step is P = Σ_{j≤4} (hW)^j/j!, the flow map is P^N.
    W = np.array([[-1.0, 4.0], [0.0, -2.0]])
    N, T = 5, 1.0
    problem, c = linear_problem(W, N=N, T=T, integrator=cn.RK4())
    hW = T / N * W
    P = sum(np.linalg.matrix_power(hW, j) / math.factorial(j) for j in range(5))
    out = dg.flow_lipschitz(problem, c.theta)
    np.testing.assert_allclose(out["local"], np.linalg.norm(np.linalg.matrix_power(P, N), 2), rtol=1e-12)
    L = np.linalg.norm(W, 2) * T / N
    np.testing.assert_allclose(out["bound"], sum(L**j / math.factorial(j) for j in range(5)) ** N, rtol=1e-12)
    assert float(out["local"]) <= float(out["bound"])


# -- landscape ---------------------------------------------------------------------------------
def test_directions_are_orthogonal_and_normalized_per_layer():
    rng = np.random.default_rng(4)
    theta = {"W": jnp.asarray(rng.normal(size=(5, 3, 3))), "b": jnp.asarray(rng.normal(size=(5, 3)))}
    theta["W"] = theta["W"].at[2].set(0.0)
    theta["b"] = theta["b"].at[2].set(0.0)
    d1, d2 = dg.random_directions(jax.random.PRNGKey(0), theta)
    norms = np.array(dg.control_norms(theta))
    norms[2] = 1.0  # a zero layer gets unit directions
    np.testing.assert_allclose(dg.control_norms(d1), norms, rtol=1e-12)
    np.testing.assert_allclose(dg.control_norms(d2), norms, rtol=1e-12)
    inner = sum(np.sum(np.asarray(d1[k] * d2[k]).reshape(5, -1), axis=1) for k in theta)
    np.testing.assert_allclose(inner, 0.0, atol=1e-12)


def test_landscape_of_a_pure_l2_cost_is_the_quadratic_it_must_be():
    # With read-out A = 0 the data loss does not depend on θ, so
    # J(θ + aδ₁ + bδ₂) = J(0) + h α/2 Σ_k ‖θ_k + aδ₁_k + bδ₂_k‖², expanded with ⟨δ₁_k, δ₂_k⟩ = 0
    # and ‖δ_{j,k}‖ = ‖θ_k‖.
    alpha = 0.3
    rng = np.random.default_rng(5)
    problem, c = linear_problem(rng.normal(size=(2, 2)), rng.normal(size=2), N=4, T=2.0, l2=alpha)
    w = {"A": jnp.zeros((2, 2)), "c": jnp.asarray([0.1, -0.2])}
    theta = jax.tree_util.tree_map(lambda v: v * jnp.arange(1.0, 5.0).reshape((4,) + (1,) * (v.ndim - 1)), c.theta)
    controls = cn.Controls(theta, w)
    d1, d2 = dg.random_directions(jax.random.PRNGKey(1), theta)
    a = np.linspace(-1, 1, 5)
    b = np.linspace(-0.5, 1.5, 4)
    grid = np.asarray(dg.landscape(problem, controls, d1, d2, a, b))
    J0 = float(jax.jit(cn.objective)(problem, cn.Controls(jax.tree_util.tree_map(jnp.zeros_like, theta), w))[0])
    dot = lambda u, v: sum(np.sum(np.asarray(u[k]) * np.asarray(v[k])) for k in u)  # noqa: E731
    n2, p1, p2 = dot(theta, theta), dot(theta, d1), dot(theta, d2)
    A, B = np.meshgrid(a, b, indexing="ij")
    expected = J0 + problem.h * alpha / 2 * (n2 * (1 + A**2 + B**2) + 2 * A * p1 + 2 * B * p2)
    np.testing.assert_allclose(grid, expected, rtol=1e-12)


# -- pictures ----------------------------------------------------------------------------------
def test_flow_grid_picture_moves_the_grid_by_the_flow():
    # ż = a z with Euler: the grid at layer k is the input grid scaled by (1 + ha)^k.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controlnet import plotting

    a, N, T = 0.5, 4, 2.0
    problem, c = linear_problem(a * np.eye(2), N=N, T=T)
    fig = plotting.plot_flow_grid(problem, c, layers=[0, 2, 4], lines=3, points=5)
    axes = fig.axes
    base = np.concatenate([np.stack(line.get_data(), 1) for line in axes[0].lines])
    for ax, k in zip(axes[1:], [2, 4]):
        moved = np.concatenate([np.stack(line.get_data(), 1) for line in ax.lines])
        np.testing.assert_allclose(moved, (1 + T / N * a) ** k * base, rtol=1e-12)
    plt.close(fig)


def test_eigenvalue_picture_shows_h_lambda():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controlnet import plotting

    problem, c = linear_problem(np.array([[-1.0, 2.0], [0.0, -3.0]]), N=3, T=1.5)
    lam = dg.jacobian_eigenvalues(problem, c.theta)
    fig = plotting.plot_eigenvalues(lam, problem.h)
    pts = fig.axes[0].collections[-1].get_offsets()
    hl = problem.h * np.asarray(lam).reshape(-1)
    np.testing.assert_allclose(np.sort(pts[:, 0]), np.sort(hl.real), atol=1e-12)
    plt.close(fig)
