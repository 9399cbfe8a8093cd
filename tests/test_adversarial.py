"""Adversarial training (solvers.adversarial): the first layer's adversary gradient is the input
gradient, YOPO with the co-state unfrozen is PGD adversarial training, YOPO with an adversary that
cannot move is gradient descent, the attack ascends and stays in its ball, bad options are refused.

The fast suite runs the vector (zero-padding) cases; the learned convolutional lift's and the
gradient-descent identity compile longer and are marked slow."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
import problems
import solvers
from solvers.adversarial import (PGDTraining, YOPO, adversary_gradient, ball_projection, pgd_attack,
                                 random_start)
from solvers.options import from_json, to_json
from solvers.schedules import Cosine

# A learned (convolutional) lift on 8x8 images and zero padding on vectors, float64, tiny.
CONV = problems.make("digits_image", samples=8, test_samples=0, width=2, layers=3, horizon=1.0, l2=1e-3,
                     smoothness=1e-2).problem
DENSE = problems.make("two_moons", samples=16, test_samples=0, width=3, layers=4, l2=1e-3).problem
PROBLEMS = {"conv": CONV, "dense": DENSE}
EPS = {"conv": 0.8, "dense": 0.3}


def _controls(p):
    return p.init_controls(jax.random.PRNGKey(0))


def _solve(solver, p, iters=2):
    """``(losses, controls)`` after ``iters`` steps of ``solver`` (one compile: the step, jitted)."""
    state, step, losses = solver.init(p, _controls(p), key=jax.random.PRNGKey(1)), jax.jit(solver.step), []
    for _ in range(iters):
        state, info = step(p, state)
        losses.append(float(info["loss"]))
    return np.array(losses), state.controls


def _close(a, b, rtol=1e-9, atol=1e-12):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["dense", pytest.param("conv", marks=pytest.mark.slow)])
def test_the_adversary_gradient_through_the_first_layer_is_the_input_gradient(name):
    """``J_f(x)ᵀ p_k = −∇_x J`` with ``p_k`` the co-state at the first layer's output, for the
    lift alone (``k = 0``) and the lift with one or two ODE steps."""
    p = PROBLEMS[name]
    c = _controls(p)
    x = p.x + 0.1 * jax.random.normal(jax.random.PRNGKey(3), p.x.shape)

    @jax.jit
    def both(x):
        ps = cn.gradient(p.replace_data(x, p.y), c)[3]
        ref = jax.grad(lambda v: cn.objective_value(p.replace_data(v, p.y), c))(x)
        return [adversary_gradient(p, c, x, ps[k], k) for k in (0, 1, 2)], ref

    gs, g_ref = both(x)
    assert float(jnp.max(jnp.abs(g_ref))) > 1e-4  # the identity is not one of zeros
    for g in gs:
        np.testing.assert_allclose(-g, g_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name,norm,n", [("dense", "2", 2), pytest.param("conv", "inf", 1, marks=pytest.mark.slow)])
def test_yopo_with_the_costate_unfrozen_is_pgd_adversarial_training(name, norm, n):
    """YOPO-1-n with ``p_k`` recomputed before every adversary step takes PGD-AT's ``n`` steps."""
    p, eps = PROBLEMS[name], EPS[name]
    common = dict(eps=eps, norm=norm, alpha=eps / 2, batch_size=6, lr=0.05)
    pgd_loss, pgd_controls = _solve(PGDTraining(steps=n, **common), p)
    yopo_loss, yopo_controls = _solve(YOPO(m=1, n=n, frozen=False, **common), p)
    np.testing.assert_allclose(yopo_loss, pgd_loss, rtol=1e-10)
    _close(yopo_controls, pgd_controls)
    assert not np.allclose(pgd_loss[0], pgd_loss[-1])  # it trained


@pytest.mark.slow
def test_yopo_whose_adversary_cannot_move_is_gradient_descent():
    """With ``ε`` at round-off, every pass sees the clean batch: the mean of the ``m`` accumulated
    gradients, the first layer's from its frozen co-state and its regularizers (weight decay,
    smoothness, the lift's), is the full gradient, and YOPO follows gradient descent."""
    gd_loss, gd_controls = _solve(solvers.GradientDescent(lr=0.05), CONV, iters=3)
    yopo_loss, yopo_controls = _solve(YOPO(eps=1e-300, random_start=False, m=2, n=2, lr=0.05), CONV, iters=3)
    np.testing.assert_allclose(yopo_loss, gd_loss, rtol=1e-11)
    _close(yopo_controls, gd_controls, rtol=1e-9)


@pytest.mark.parametrize("norm", ["2", pytest.param("inf", marks=pytest.mark.slow)])
def test_the_attack_raises_the_loss_and_stays_in_the_ball(norm):
    p, eps = DENSE, 0.3
    c = _controls(p)
    x, y = p.x, p.y
    eta = random_start(jax.random.PRNGKey(4), x, eps, norm)
    xa = jax.jit(lambda eta: pgd_attack(p, c, x, y, eta, eps=eps, step=eps / 4, steps=5, norm=norm))(eta)
    flat = lambda v: np.asarray(v).reshape(len(v), -1)  # noqa: E731
    size = np.abs(flat(xa - x)).max(axis=1) if norm == "inf" else np.linalg.norm(flat(xa - x), axis=1)
    start = np.abs(flat(eta)).max(axis=1) if norm == "inf" else np.linalg.norm(flat(eta), axis=1)
    assert np.all(size <= eps * (1 + 1e-12)) and np.all(start <= eps * (1 + 1e-12))
    assert np.mean(size >= 0.99 * eps) >= 0.75  # most samples are pushed to the ball's boundary

    def losses(v):
        return p.loss(p.readout(cn.final_state(p, c.theta, p.replace_data(v, y).z0(c.lift)), c.w), y)

    before, after, started = losses(x), losses(xa), losses(x + eta)
    assert float(jnp.mean(after)) > float(jnp.mean(started)) > 0 and float(jnp.mean(after)) > float(jnp.mean(before))
    assert np.mean(np.asarray(after) > np.asarray(before)) >= 0.9


def test_projection_onto_the_ball():
    d = jnp.array([[3.0, -4.0], [0.1, 0.2]])
    np.testing.assert_allclose(ball_projection(d, 1.0, "2"), [[0.6, -0.8], [0.1, 0.2]])
    np.testing.assert_allclose(ball_projection(d, 0.15, "inf"), [[0.15, -0.15], [0.1, 0.15]])


def test_options_round_trip_and_registry():
    for solver in (YOPO(eps=0.2, norm="2", m=3, n=4, first_steps=2, lr=1e-3,
                        optimizer=solvers.Adam(schedule=Cosine(50)), batch_size=32),
                   PGDTraining(eps=0.1, steps=10, alpha=0.02, optimizer=solvers.SGD(momentum=0.9))):
        assert from_json(solvers.SOLVERS, json.loads(json.dumps(to_json(solver)))) == solver
        assert solvers.SOLVERS[solver.name] is type(solver)
    assert jax.tree_util.tree_structure(YOPO(eps=0.1)) == jax.tree_util.tree_structure(YOPO(eps=0.3))


BAD = {
    "eps 0": (lambda: YOPO(eps=0.0), "eps"),
    "nan step": (lambda: PGDTraining(alpha=float("nan")), "alpha"),
    "norm 1": (lambda: PGDTraining(norm="1"), "'inf' or '2'"),
    "m 0": (lambda: YOPO(m=0), "m must be an integer >= 1"),
    "n 1.5": (lambda: YOPO(n=1.5), "n must be an integer >= 1"),
    "steps 0": (lambda: PGDTraining(steps=0), "steps must be"),
    "frozen str": (lambda: YOPO(frozen="no"), "frozen must be True or False"),
    "optax": (lambda: YOPO(optimizer=__import__("optax").adam(1e-3)), "named optimizer"),
    "batch 0": (lambda: YOPO(batch_size=0), "batch_size"),
    "two rates": (lambda: YOPO(optimizer=solvers.Adam(lr=1e-3)), "takes its learning rate as lr"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_options_are_refused_when_built(case):
    make, fragment = BAD[case]
    with pytest.raises((ValueError, TypeError), match=fragment):
        make()


def test_yopo_refuses_problems_it_cannot_split_before_any_compile():
    """``init`` refuses them; :func:`solvers.solve` calls it before it compiles anything."""
    with pytest.raises(ValueError, match="first_steps=5 exceeds"):
        YOPO(first_steps=5).init(DENSE, _controls(DENSE), key=jax.random.PRNGKey(0))
    tracked = cn.ControlProblem(cn.InnerActivation(), cn.Euler(), N=2, width=2, loss=cn.Logistic(), x=DENSE.x,
                                y=DENSE.y, tracking=0.1)
    with pytest.raises(ValueError, match="tracking=0"):
        YOPO().init(tracked, _controls(tracked), key=jax.random.PRNGKey(0))
