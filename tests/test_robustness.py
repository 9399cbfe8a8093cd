"""Attacks through the adjoint and certified radii: the input gradient is jax.grad's, the
attacks stay in their balls and raise the loss, and no attack succeeds inside a certified radius."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from controlnet.diagnostics import robustness as rb


def _per_sample_loss_sum(problem, controls, x, y):
    """``S·J`` on the data ``(x, y)``: the sum of the per-sample losses plus terms free of ``x``."""
    q = problem.replace_data(x, y)
    return x.shape[0] * cn.objective_value(q, controls)


@pytest.mark.parametrize("case", ["dense, zero padding", "conv, learned lift, tracking"])
def test_the_input_gradient_from_the_costate_is_jax_grad(case):
    rng = np.random.default_rng(0)
    if case.startswith("dense"):
        p = problems.make("ring", samples=30, layers=5).problem
    else:
        x = rng.normal(size=(6, 2, 7))
        p = cn.ControlProblem(dynamics=cn.Conv(kernel=3), integrator=cn.Euler(), N=3, width=3,
                              loss=cn.SoftmaxCrossEntropy(3), x=x, y=rng.integers(0, 3, 6), T=1.0,
                              tracking=0.1, lift=cn.ConvLift(3))
    c = p.init_controls(jax.random.PRNGKey(1))
    x, y = jnp.asarray(p.x), jnp.asarray(p.y)
    got = rb.input_gradient(p, c, x, y)
    want = jax.grad(_per_sample_loss_sum, argnums=2)(p, c, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # Each row is that sample's own gradient: perturbing sample 0 moves only its loss.
    e = 1e-6 * np.sign(np.asarray(got[0]))
    x1 = x.at[0].add(e)
    dJ = _per_sample_loss_sum(p, c, x1, y) - _per_sample_loss_sum(p, c, x, y)
    np.testing.assert_allclose(dJ, np.sum(np.asarray(got[0]) * e), rtol=1e-4)


def test_the_attacks_stay_in_their_balls_and_raise_the_loss():
    task = problems.make("two_moons", samples=60, test_samples=60, layers=6)
    p = task.problem
    c = solvers.solve(solvers.GradientDescent(optax.adam(2e-2)), p, p.init_controls(jax.random.PRNGKey(0)),
                      max_iters=150, progress=False).controls
    x, y = jnp.asarray(p.x), jnp.asarray(p.y)
    clean = float(_per_sample_loss_sum(p, c, x, y))
    for norm in ("inf", "2"):
        for attack in (rb.fgsm, rb.pgd):
            xa = attack(p, c, x, y, 0.1, norm=norm)
            d = np.asarray(xa - x)
            size = np.abs(d).max(axis=1) if norm == "inf" else np.linalg.norm(d, axis=1)
            assert np.all(size <= 0.1 + 1e-9), (attack.__name__, norm, size.max())
            assert float(_per_sample_loss_sum(p, c, xa, y)) > clean, (attack.__name__, norm)
    # The projected attack is at least as strong as one step.
    assert rb.robust_accuracy(p, c, x, y, 0.2, norm="2") <= float(
        jnp.mean(rb.margins(p, c, rb.fgsm(p, c, x, y, 0.2, norm="2"), y) > 0)) + 1e-12
    with pytest.raises(ValueError, match="norm must be"):
        rb.fgsm(p, c, x, y, 0.1, norm="1")


def test_margins_and_radii_for_several_classes():
    rng = np.random.default_rng(2)
    p = problems.make("digits", samples=40, test_samples=0, layers=2).problem
    c = p.init_controls(jax.random.PRNGKey(0))
    x, y = jnp.asarray(p.x), jnp.asarray(p.y)
    out = np.asarray(rb.outputs(p, c, x))
    m = np.asarray(rb.margins(p, c, x, y))
    for i in range(5):
        others = np.delete(out[i], int(y[i]))
        assert np.isclose(m[i], out[i, int(y[i])] - others.max())
    r = np.asarray(rb.certified_radius(p, c, x, y, 2.0))
    np.testing.assert_allclose(r, np.maximum(m, 0) / (np.sqrt(2) * 2.0))
    assert rng is not None
    with pytest.raises(ValueError, match="certifies networks of LipschitzNet"):
        rb.lipschitz_bound(p, c)


def test_no_attack_succeeds_inside_the_certified_radius():
    """A 1-Lipschitz network on two moons: the bound is above the empirical constant, and every
    sample the projected attack flips at radius ε had a certified radius below ε; the certified
    accuracy never exceeds the attacked one. A certificate that were too generous fails here."""
    task = problems.make("two_moons", samples=200, test_samples=200, dynamics="lipschitz", integrator="lie",
                         width=4, layers=10)
    p = task.problem
    c = solvers.solve(solvers.GradientDescent(optax.adam(2e-2)), p, p.init_controls(jax.random.PRNGKey(0)),
                      max_iters=300, progress=False).controls
    x, y = (jnp.asarray(a) for a in task.test)
    L = float(rb.lipschitz_bound(p, c))
    assert float(rb.empirical_lipschitz(p, c, x)) <= L * (1 + 1e-9)
    radius = np.asarray(rb.certified_radius(p, c, x, y, L))
    clean = np.asarray(rb.margins(p, c, x, y)) > 0
    assert radius.max() > 0.05  # the certificate certifies something
    for eps in (0.05, 0.1, 0.2, 0.4):
        xa = rb.pgd(p, c, x, y, eps, norm="2", steps=40)
        flipped = clean & (np.asarray(rb.margins(p, c, xa, y)) <= 0)
        dist = np.linalg.norm(np.asarray(xa - x), axis=1)
        assert np.all(radius[flipped] <= dist[flipped] + 1e-9), (eps, radius[flipped], dist[flipped])
        assert np.mean(radius >= eps) <= np.mean(np.asarray(rb.margins(p, c, xa, y)) > 0) + 1e-12
    # ℓ∞: the radius is the ℓ2 one over √n (n = 2 inputs), and no ℓ∞ attack flips inside it.
    r_inf = np.asarray(rb.certified_radius(p, c, x, y, L, norm="inf"))
    np.testing.assert_allclose(r_inf, radius / np.sqrt(2), rtol=1e-6)
    for eps in (0.05, 0.1, 0.2):
        xa = rb.pgd(p, c, x, y, eps, norm="inf", steps=40)
        flipped = clean & (np.asarray(rb.margins(p, c, xa, y)) <= 0)
        dist = np.max(np.abs(np.asarray(xa - x)), axis=1)
        assert flipped.any() or eps < 0.1, "the ℓ∞ attack flips samples at these radii"
        assert np.all(r_inf[flipped] <= dist[flipped] + 1e-9), (eps, r_inf[flipped], dist[flipped])


# -- critical points ----------------------------------------------------------------------------
def _square_fit(width, dynamics, iters, **kw):
    p = problems.make("square", samples=100, test_samples=0, width=width, dynamics=dynamics, **kw).problem
    r = solvers.solve(solvers.GradientDescent(optax.adam(2e-2)), p, p.init_controls(jax.random.PRNGKey(0)),
                      max_iters=iters, progress=False)
    return p, r.controls


def test_a_non_augmented_network_has_no_critical_points():
    """Width 1 on 1-D inputs with invertible steps (h|W_k| < 1): the flow map is increasing,
    so F = a·z_N + c has no critical point; Newton from 21 starts finds none."""
    from controlnet.diagnostics import critical_points, output_map

    p, c = _square_fit(1, "inner", 150, layers=10, horizon=1.0)
    assert float(p.h) * float(jnp.max(jnp.abs(c.theta["W"]))) < 1  # every Euler step invertible
    F = output_map(p, c)
    assert critical_points(F, -1.0, 1.0, grid=21) == []
    # ... while F itself is not constant (the search had something to look at).
    assert abs(float(F(jnp.array([1.0]))) - float(F(jnp.array([-1.0])))) > 1e-3


def test_an_augmented_network_fit_to_x_squared_has_one_nondegenerate_minimum():
    from controlnet import plotting
    from controlnet.diagnostics import critical_points, output_map

    p, c = _square_fit(2, "two_layer", 600)
    J = float(cn.objective_value(p, c))
    assert J < 0.01, J  # a fit of x², well below the best monotone fit's 0.028
    F = output_map(p, c)
    points = critical_points(F, -1.0, 1.0, grid=21)
    assert len(points) == 1, points
    cp = points[0]
    assert cp.index == 0 and not cp.degenerate and abs(cp.x[0]) < 0.2 and cp.eigenvalues[0] > 0.1, cp
    fig = plotting.plot_critical_points(F, points, -1.0, 1.0)
    assert fig.axes


# -- the film -----------------------------------------------------------------------------------
def test_the_flow_animation_is_written_whole(tmp_path):
    from controlnet import plotting

    p = problems.make("ring", samples=30, layers=4).problem
    c = p.init_controls(jax.random.PRNGKey(0))
    zs = cn.forward(p, c.theta)
    anim = plotting.animate_flow(zs, p.y, T=float(p.T))
    path = plotting.save_animation(anim, tmp_path / "flow.gif")
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == p.N + 1  # one frame per layer
    assert sorted(f.name for f in tmp_path.iterdir()) == ["flow.gif"]  # no temporary file left
    with pytest.raises(ValueError, match="GIF"):
        plotting.save_animation(anim, tmp_path / "flow.mp4")


def test_the_robustness_study_reports_attacked_and_certified_curves():
    from solvers.robustness_study import robustness_study

    def factory():
        out = {}
        for label, opts in (("resnet", dict(dynamics="inner")), ("lipschitz", dict(dynamics="lipschitz", integrator="lie"))):
            t = problems.make("two_moons", samples=40, test_samples=40, width=4, layers=4, **opts)
            out[label] = (t.problem, t.test)
        return out

    r = robustness_study(factory, solvers.GradientDescent(optax.adam(2e-2)), [0.0, 0.1, 0.3], max_iters=30, steps=10)
    assert set(r) == {"resnet", "lipschitz"} and "certified" not in r["resnet"]
    lip = r["lipschitz"]
    assert lip["attacked"][0] >= lip["attacked"][2]  # a larger ball holds every smaller attack
    assert all(c <= a + 1e-12 for c, a in zip(lip["certified"], lip["attacked"]))
    assert lip["empirical_lipschitz"] <= lip["lipschitz_bound"] * (1 + 1e-9)
    with pytest.raises(ValueError, match="radii must be >= 0"):
        robustness_study(factory, solvers.GradientDescent(optax.adam(2e-2)), [-0.1], max_iters=1)


def test_the_lipschitz_layer_bound_holds_and_the_contractive_constant_is_attained():
    """Jacobian norms of one LipschitzNet layer at random points never exceed
    ``layer_lipschitz``; the contractive step's ``1 − h_C/2`` is reached where every
    pre-activation is negative, so the constant cannot be lowered."""
    d, hC, hE = 4, 0.5, 0.15
    f = cn.LipschitzNet(contractive_step=hC, expansive_step=hE)
    theta = f.init(jax.random.PRNGKey(1), d, scale=2.0)
    contract = lambda z: z + hC * f.part(0, z, theta)  # noqa: E731
    layer = lambda z: (lambda u: u + hE * f.part(1, u, theta))(contract(z))  # noqa: E731
    zs = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (200, d))
    norms = jax.vmap(lambda z: jnp.linalg.norm(jax.jacfwd(layer)(z), ord=2))(zs)
    assert float(jnp.max(norms)) <= f.layer_lipschitz() * (1 + 1e-6)
    A = cn.structured.orthogonal(theta["K"])
    z_neg = jnp.linalg.solve(A, -10.0 - theta["a"])  # A z + a = -10 in every coordinate
    assert float(jnp.linalg.norm(jax.jacfwd(contract)(z_neg), ord=2)) == pytest.approx(1 - hC / 2, rel=1e-6)
    assert f.layer_lipschitz() < cn.lipschitz_factor(hC, hE)
