"""The problems of the field: data sets, `problems.make`, and what the architectures can represent.

Fast tests check the data (closed forms, determinism, splits), the problem factory and the CLI,
and two representability facts on small trainings: a 1-D flow cannot beat the best monotone fit
of ``x ↦ x²`` (a lift to 2-D can), and an invertible width-2 ResNet misclassifies some point of
every circle around the ring's inner disk. The long trainings (ring width 2 vs 3, MLP vs ResNet,
digits with gradient descent and E-MSA, Li et al.'s ``sin x``) are marked slow and print their
numbers (run with ``-s``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import controlnet as cn
import problems
import solvers
from problems import datasets

sklearn = pytest.importorskip("sklearn")
from sklearn.isotonic import IsotonicRegression  # noqa: E402


def _monotone_fit_loss(x, y):
    """``min_g mean ½(g(x_i) − y_i)²`` over monotone (increasing or decreasing) ``g``."""
    x, y = np.ravel(x), np.ravel(y)
    best = np.inf
    for increasing in (True, False):
        g = IsotonicRegression(increasing=increasing).fit_transform(x, y)
        best = min(best, float(np.mean(0.5 * (g - y) ** 2)))
    return best


def _train(task, iters, lr=1e-2, solver=None, problem=None, seed=0):
    problem = task.problem if problem is None else problem
    controls = problem.init_controls(jax.random.PRNGKey(seed))
    solver = solver or solvers.GradientDescent(optax.adam(lr))
    return solvers.solve(solver, problem, controls, max_iters=iters, test=task.test, progress=False)


# -- data sets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_generators_are_seeded_and_shaped(name):
    g = datasets.DATASETS[name]
    x1, y1 = g(60, seed=3)
    x2, y2 = g(60, seed=3)
    x3, _ = g(60, seed=4)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.shape[0] == y1.shape[0] == 60 and np.all(np.isfinite(x1))


def test_noisy_ring_flips_the_requested_fraction():
    n, noise = 4000, 0.1
    x, y = datasets.noisy_ring(n, seed=0, label_noise=noise)
    xc, yc = datasets.ring(n, seed=0)
    np.testing.assert_array_equal(x, xc)
    flipped = np.mean(y != yc)
    assert abs(flipped - noise) < 4 * np.sqrt(noise * (1 - noise) / n)
    with pytest.raises(ValueError, match="label_noise"):
        datasets.noisy_ring(10, label_noise=0.6)


def test_two_moons_lie_on_their_half_circles():
    x, y = datasets.two_moons(400, seed=1, noise=0.0)
    u = x + np.array([0.5, 0.25])
    top, bottom = u[y == 0], u[y == 1] - np.array([1.0, 0.5])
    np.testing.assert_allclose(np.linalg.norm(top, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(bottom, axis=1), 1.0, atol=1e-12)
    assert top[:, 1].min() >= -1e-12 and bottom[:, 1].max() <= 1e-12


def test_regression_targets():
    x, y = datasets.square(50, seed=0)
    np.testing.assert_array_equal(y, x**2)
    assert x.shape == (50, 1) and np.abs(x).max() <= 1
    x, y = datasets.sine(50, seed=0)
    np.testing.assert_array_equal(y, np.sin(x))
    assert np.abs(x).max() <= np.pi


def test_best_monotone_fit_of_the_square_is_the_closed_form():
    # Continuum limit: g = 1/4 on [−1, 1/2], g = x² after; mean ½(g − x²)² = 0.028125.
    x = np.linspace(-1.0, 1.0, 20001)
    assert _monotone_fit_loss(x, x**2) == pytest.approx(0.028125, rel=1e-3)


def test_digits_data_and_split():
    x, y = datasets.digits()
    assert x.shape == (1797, 64) and x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    task = problems.make("digits", seed=5)
    xt, yt = np.asarray(task.problem.x), np.asarray(task.problem.y)
    xs, ys = task.test
    assert xt.shape == (1347, 64) and xs.shape == (450, 64)
    # Train and test together are the whole data set, each image once.
    both = np.concatenate([xt, xs])
    key = lambda a: np.lexsort(a.T[::-1])  # noqa: E731
    np.testing.assert_array_equal(both[key(both)], x[key(x)])
    np.testing.assert_array_equal(np.sort(np.concatenate([yt, ys])), np.sort(y))
    with pytest.raises(ValueError, match="training samples"):
        problems.make("digits", samples=1797)
    with pytest.raises(ValueError, match="lower samples or test_samples"):
        problems.make("digits", samples=1500, test_samples=400)


# -- the problem factory and the CLI ------------------------------------------------------------
EXPECTED = {
    "ring": (2, cn.Logistic), "spiral": (2, cn.Logistic), "xor": (2, cn.Logistic),
    "noisy_ring": (2, cn.Logistic), "two_moons": (2, cn.Logistic),
    "square": (1, cn.SquaredError), "sine": (1, cn.SquaredError),
    "digits": (64, cn.SoftmaxCrossEntropy),
    "mnist1d": ((1, 40), cn.SoftmaxCrossEntropy), "digits_image": ((1, 8, 8), cn.SoftmaxCrossEntropy),
    "mnist1d_2stage": ((1, 40), cn.SoftmaxCrossEntropy), "digits_image_2stage": ((1, 8, 8), cn.SoftmaxCrossEntropy),
}
CLASSES = {"digits": 10, "mnist1d": 10, "digits_image": 10, "mnist1d_2stage": 10, "digits_image_2stage": 10}


def _input_shape(x):
    return x.shape[1] if x.ndim == 2 else tuple(x.shape[1:])


@pytest.mark.parametrize("name", problems.PROBLEMS)
def test_make_builds_every_problem(name):
    d_in, loss = EXPECTED[name]
    task = problems.make(name, samples=30 if name not in CLASSES else 100, test_samples=20)
    p = task.problem
    assert _input_shape(p.x) == d_in and isinstance(p.loss, loss)
    assert p.width == problems.DEFAULTS[name]["width"]
    assert _input_shape(task.test[0]) == d_in and task.test[0].shape[0] == 20
    assert p.loss.n_out == CLASSES.get(name, 1)


def test_make_overrides_and_structured_dynamics():
    mlp = problems.make("ring", samples=20, integrator="no_residual").problem
    assert isinstance(mlp.integrator, cn.NoResidual)
    ham = problems.make("ring", samples=20, width=4, dynamics="hamiltonian", hidden=6,
                        integrator="leapfrog").problem
    assert ham.dynamics == cn.Hamiltonian(width=6) and isinstance(ham.integrator, cn.StrangSplitting)
    lip = problems.make("two_moons", samples=20, dynamics="lipschitz", integrator="lie").problem
    assert isinstance(lip.dynamics, cn.LipschitzNet)
    steps = dict(contractive_step=0.5, expansive_step=0.1547, activation="relu")
    lip = problems.make("two_moons", samples=20, dynamics="lipschitz", field_options=steps).problem
    assert lip.dynamics == cn.LipschitzNet(0.5, 0.1547, "relu")
    with pytest.raises(ValueError, match="1-Lipschitz only if"):  # the field's own check still runs
        problems.make("two_moons", samples=20, dynamics="lipschitz", field_options={"expansive_step": 0.5})
    assert problems.make("square", samples=20, width=1).problem.width == 1
    with pytest.raises(ValueError, match="unknown problem"):
        problems.make("mnist")


@pytest.mark.parametrize("name", problems.PROBLEMS)
def test_cli_builds_every_problem(name, tmp_path):
    from controlnet_cli import app as cli

    args = cli.build_parser().parse_args(["train", "--problem", name, "--out", str(tmp_path)])
    task = cli.task_from_args(args)
    d = {"samples": 500, **problems.DEFAULTS[name]}
    assert task.problem.S == d["samples"] and _input_shape(task.problem.x) == EXPECTED[name][0]


# -- representability: x ↦ x² -------------------------------------------------------------------
@pytest.fixture(scope="module")
def square_fits():
    out = {}
    for width in (1, 2):
        task = problems.make("square", samples=100, test_samples=0, width=width, layers=10)
        out[width] = (task, _train(task, 150, lr=2e-2))
    return out


def test_square_not_representable_in_one_dimension(square_fits):
    task, result = square_fits[1]
    p = task.problem
    bound = _monotone_fit_loss(p.x, p.y)
    zN = cn.final_state(p, result.controls.theta)[:, 0]
    order = np.argsort(np.asarray(p.x[:, 0]))
    steps = np.diff(np.asarray(zN)[order])
    # The trained 1-D network is an increasing map, so it cannot beat the best monotone fit.
    assert np.all(steps > 0)
    assert result.info["data_loss"] >= bound * (1 - 1e-9)
    print(f"\nx²: 1-D data loss {result.info['data_loss']:.5f} >= monotone bound {bound:.5f}")


def test_square_fits_when_lifted(square_fits):
    task, result = square_fits[2]
    bound = _monotone_fit_loss(task.problem.x, task.problem.y)
    assert result.info["data_loss"] < 0.2 * bound
    print(f"\nx²: 2-D data loss {result.info['data_loss']:.5f} (monotone bound {bound:.5f})")


# -- topology: the ring in the plane --------------------------------------------------------------
def _circle_scores(problem, controls, radius, n=8192):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = radius * np.stack([np.cos(a), np.sin(a)], axis=1)
    p = problem.replace_data(jnp.asarray(pts), jnp.zeros(n, jnp.int32))
    return np.asarray(cn.readout(cn.final_state(p, controls.theta), controls.w)[:, 0])


def _invertible(problem, controls):
    """Every step ``z ↦ z + h tanh(Wz + b)`` is a homeomorphism of the plane.

    ``det(I + h D W)`` is affine in each diagonal entry of ``D = diag tanh' ∈ (0, 1]²``, so it is
    positive for every ``D`` iff it is at the four vertices ``D ∈ {0, 1}²``; the step is then a
    local diffeomorphism, and proper (``tanh`` is bounded), hence a global one (Hadamard).
    """
    W = np.asarray(controls.theta["W"])
    h = float(problem.h)
    vertices = [np.diag(v) for v in ((0, 0), (0, 1), (1, 0), (1, 1))]
    return all(np.linalg.det(np.eye(2) + h * D @ W).min() > 0 for D in vertices)


def _ring_obstruction(problem, controls):
    """A width-2 invertible ResNet: if an inner point is classified inner (score < 0), every
    circle around the disk meets the region classified inner (it is connected and unbounded)."""
    inner = np.asarray(problem.x)[np.asarray(problem.y) == 0]
    p = problem.replace_data(jnp.asarray(inner), jnp.zeros(len(inner), jnp.int32))
    s_inner = np.asarray(cn.readout(cn.final_state(p, controls.theta), controls.w)[:, 0])
    return (s_inner < 0).any(), [(_circle_scores(problem, controls, r) < 0).mean() for r in (0.8, 0.9, 1.0)]


def test_invertible_width2_resnet_cannot_untie_the_ring():
    task = problems.make("ring", samples=200, test_samples=0, width=2, layers=20, horizon=2.0)
    result = _train(task, 150, lr=2e-2)
    p, c = task.problem, result.controls
    assert _invertible(p, c)
    some_inner_right, fractions = _ring_obstruction(p, c)
    assert some_inner_right and result.info["accuracy"] > 0.6
    assert all(f > 0 for f in fractions), fractions
    print(f"\nring width 2 (150 its): train acc {result.info['accuracy']:.3f}; fraction of the "
          f"circles r = 0.8, 0.9, 1.0 classified inner: {np.round(fractions, 4)}")


# -- long trainings (numbers printed) -----------------------------------------------------------
def _dense_ring(n=20000, seed=123):
    return datasets.ring(n, seed=seed)


@pytest.mark.slow
def test_ring_width2_vs_width3():
    dense = _dense_ring()
    acc = {}
    for width in (2, 3):
        # h = 0.1: small enough that the trained width-2 steps stay invertible (checked).
        task = problems.make("ring", width=width, layers=50, horizon=5.0)
        r = _train(task, 500)
        m = solvers.evaluate(task.problem, r.controls, test=dense)
        acc[width] = (r.info["accuracy"], m["test_accuracy"])
        if width == 2:
            assert _invertible(task.problem, r.controls)
            some_inner_right, fractions = _ring_obstruction(task.problem, r.controls)
            assert some_inner_right and all(f > 0 for f in fractions), fractions
            print(f"\nring width 2: fraction of circles r=0.8/0.9/1.0 classified inner {fractions}")
    print(f"ring (train acc, dense acc on 20000 points): width 2 {acc[2]}, width 3 {acc[3]}")
    assert acc[2][1] < 1.0
    assert acc[3][0] >= 0.99 and acc[3][1] >= 0.99


@pytest.mark.slow
def test_mlp_vs_resnet_equal_depth():
    acc = {}
    for layers in (5, 20):
        for integrator in ("euler", "no_residual"):
            task = problems.make("ring", integrator=integrator, layers=layers)
            r = _train(task, 500)
            acc[layers, integrator] = (round(r.info["accuracy"], 3), round(r.info["test_accuracy"], 3))
        print(f"\nring, width 3, {layers} layers (train, test acc): ResNet {acc[layers, 'euler']}, "
              f"MLP {acc[layers, 'no_residual']}")
    assert acc[20, "euler"][1] >= 0.99
    assert acc[20, "euler"][1] >= acc[20, "no_residual"][1]


@pytest.mark.slow
def test_digits_gradient_descent():
    task = problems.make("digits")
    r = _train(task, 200)
    print(f"\ndigits GD (Adam 1e-2, 200 its): train {r.info['accuracy']:.4f}, test {r.info['test_accuracy']:.4f}")
    assert r.info["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_digits_extended_msa():
    msa = pytest.importorskip("solvers.msa")
    task = problems.make("digits")
    r = _train(task, 50, solver=msa.ExtendedMSA())
    print(f"\ndigits E-MSA (50 its): train {r.info['accuracy']:.4f}, test {r.info['test_accuracy']:.4f}")
    assert r.info["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_sine_regression_li_et_al():
    task = problems.make("sine")
    r = _train(task, 500)
    print(f"\nsin x: train data loss {r.info['data_loss']:.2e}, test {r.info['test_loss']:.2e}")
    # Against the variance of sin x on [−π, π] (½·½ = 0.25 for the half squared error).
    assert r.info["test_loss"] < 0.01 * 0.25
