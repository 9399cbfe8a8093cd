"""The depth study against solvers whose answer is known in closed form.

An *oracle* solver writes down the controls of a one-dimensional drift ``ż = u(t)`` directly, so
the study's bookkeeping (horizon grid, training error, ``‖θ‖_{L²}``, ``μ``, band fraction, the
log-log slope, train/test split of the regularization sweep) is checked against formulas.
"""

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
from solvers import depth_study as ds


@dataclasses.dataclass(frozen=True)
class Drift(cn.VectorField):
    """``f(z, θ) = u``."""

    def __call__(self, z, theta):
        return jnp.broadcast_to(theta["u"], z.shape)

    def init(self, key, d, scale=1.0):
        return {"u": scale * jax.random.normal(key, (d,))}


class OracleState(NamedTuple):
    controls: cn.Controls


IDENTITY = {"A": jnp.ones((1, 1)), "c": jnp.zeros(1)}


@dataclasses.dataclass(frozen=True)
class TurnpikeOracle:
    """``u_k = a g(t_k)``, ``g(t) = e^{−μt} + e^{−μ(T−t)}``, ``a`` such that ``z_N = L − √(2e₀/T)``:
    from ``z_0 = 0`` to targets ``y = L`` the training error ``½(z_N − L)²`` is exactly ``e₀/T``."""

    mu: float = 0.9
    L: float = 5.0
    e0: float = 0.5
    name: ClassVar[str] = "oracle"

    def init(self, problem, controls, *, key):
        return OracleState(controls)

    def step(self, problem, state):
        T, h = problem.T, problem.h
        t = (jnp.arange(problem.N) + 0.5) * h
        g = jnp.exp(-self.mu * t) + jnp.exp(-self.mu * (T - t))
        a = (self.L - jnp.sqrt(2 * self.e0 / T)) / (h * jnp.sum(g))
        controls = cn.Controls({"u": (a * g)[:, None]}, IDENTITY)
        return OracleState(controls), {"loss": cn.objective(problem, state.controls)[0]}


def oracle_profile(oracle, T, N):
    h = T / N
    t = (np.arange(N) + 0.5) * h
    g = np.exp(-oracle.mu * t) + np.exp(-oracle.mu * (T - t))
    return (oracle.L - np.sqrt(2 * oracle.e0 / T)) / (h * g.sum()) * g


def factory(T, N, tracking):
    x = np.zeros((3, 1))
    y = np.full((3, 1), TurnpikeOracle.L)
    return cn.ControlProblem(Drift(), cn.Euler(), N, 1, cn.SquaredError(1), x, y, T=T, l2=1e-2,
                             tracking=tracking)


def test_horizon_grid():
    assert ds.horizon_grid([1, 2, 4], 0.25) == [(1.0, 4), (2.0, 8), (4.0, 16)]
    assert ds.horizon_grid([1, 2, 4], 0.25, fixed_T=3.0) == [(3.0, 4), (3.0, 8), (3.0, 16)]
    with pytest.raises(ValueError, match="repeated layer counts"):
        ds.horizon_grid([1.0, 1.1], 0.5)
    with pytest.raises(ValueError, match="step"):
        ds.horizon_grid([1.0], 0.0)
    with pytest.raises(ValueError, match="horizons"):
        ds.horizon_grid([1.0, -2.0], 0.5)


def test_loglog_slope_of_a_power_law():
    T = np.array([1.0, 2.0, 4.0, 8.0])
    assert ds.loglog_slope(T, 3.0 * T**-1.0) == pytest.approx(-1.0, abs=1e-12)
    assert ds.loglog_slope(T, 0.2 * T**0.5) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(ds.loglog_slope([1.0], [1.0]))


@pytest.fixture(scope="module")
def oracle_study():
    oracle = TurnpikeOracle()
    seen = []

    def recording_factory(T, N, tracking):
        seen.append(tracking)
        return factory(T, N, tracking)

    out = ds.depth_vs_turnpike(recording_factory, oracle, [1.0, 4.0], tracking=0.5,
                               step=0.25, max_iters=1, eps=0.3)
    return oracle, out, seen


def test_study_measures_the_oracle_exactly(oracle_study):
    oracle, out, seen = oracle_study
    assert seen == [0.0] * 2 + [0.5] * 2
    for name in ("l2", "tracking"):
        study = out[name]
        assert study["mode"] == "fixed_h" and study["slope_against"] == "T"
        assert [(r["T"], r["N"]) for r in study["runs"]] == [(1.0, 4), (4.0, 16)]
        for r in study["runs"]:
            u = oracle_profile(oracle, r["T"], r["N"])
            np.testing.assert_allclose(r["training_error"], oracle.e0 / r["T"], rtol=1e-10)
            np.testing.assert_allclose(r["theta_l2"], np.sqrt(r["h"] * np.sum(u**2)), rtol=1e-12)
            np.testing.assert_allclose(r["theta_norm"], u, rtol=1e-12)
            np.testing.assert_allclose(r["speed"], u, rtol=1e-10)
            np.testing.assert_allclose(r["mu"], oracle.mu, rtol=1e-6)
            assert r["band_fraction"] == np.mean(u <= 0.3)
            # risk at layer k: ½ (z_k − L)² with z_k = h Σ_{j<k} u_j
            z = np.concatenate([[0.0], np.cumsum(r["h"] * u)])
            np.testing.assert_allclose(r["risk"], 0.5 * (z - oracle.L) ** 2, rtol=1e-10)
        assert study["slope"] == pytest.approx(-1.0, abs=1e-9)
    assert out["tracking"]["tracking"] == 0.5


def test_fixed_T_sweeps_N_only():
    # At a fixed horizon the oracle's error e₀/T does not depend on N: slope 0 against N.
    oracle = TurnpikeOracle()
    study = ds.depth_study(factory, oracle, [1.0, 4.0], step=0.25, fixed_T=3.0, max_iters=1)
    assert study["mode"] == "fixed_T" and study["slope_against"] == "N"
    assert [(r["T"], r["N"]) for r in study["runs"]] == [(3.0, 4), (3.0, 16)]
    np.testing.assert_allclose([r["training_error"] for r in study["runs"]], oracle.e0 / 3.0, rtol=1e-10)
    assert study["slope"] == pytest.approx(0.0, abs=1e-9)


def test_depth_vs_turnpike_without_tracking_runs_only_l2():
    out = ds.depth_vs_turnpike(factory, TurnpikeOracle(), [1.0], tracking=0.0, step=0.25, max_iters=1)
    assert set(out) == {"l2"}
    with pytest.raises(ValueError, match="tracking"):
        ds.depth_vs_turnpike(factory, TurnpikeOracle(), [1.0], tracking=-1.0)


@dataclasses.dataclass(frozen=True)
class RidgeOracle:
    """The exact minimizer of ``½ mean (x_i + T u − y_i)² + T α/2 u²`` (constant ``u`` is optimal
    by convexity and symmetry of the layers): ``u = (ȳ − x̄)/(T + α)``, read-out the identity."""

    name: ClassVar[str] = "ridge"

    def init(self, problem, controls, *, key):
        return OracleState(controls)

    def step(self, problem, state):
        u = (jnp.mean(problem.y) - jnp.mean(problem.x)) / (problem.T + problem.l2)
        controls = cn.Controls({"u": jnp.full((problem.N, 1), u)}, IDENTITY)
        return OracleState(controls), {"loss": cn.objective(problem, state.controls)[0]}


def test_regularization_sweep_trains_on_train_and_scores_on_test():
    rng = np.random.default_rng(0)
    x, x_test = rng.normal(size=(40, 1)), rng.normal(size=(30, 1))
    y = x + 1.0 + 0.5 * rng.normal(size=(40, 1))  # noisy targets
    y_test = x_test + 1.0 + 0.5 * rng.normal(size=(30, 1))
    T = 2.0
    base = cn.ControlProblem(Drift(), cn.Euler(), 4, 1, cn.SquaredError(1), x[:5], y[:5], T=T, l2=1.0)
    weights = [0.0, 0.5, 4.0]
    out = ds.regularization_sweep(base, RidgeOracle(), weights, (x, y, x_test, y_test), max_iters=1)
    assert out["kind"] == "l2" and [r["weight"] for r in out["runs"]] == weights
    for r, alpha in zip(out["runs"], weights):
        u = (y.mean() - x.mean()) / (T + alpha)
        np.testing.assert_allclose(r["train_loss"], 0.5 * np.mean((x + T * u - y) ** 2), rtol=1e-12)
        np.testing.assert_allclose(r["test_loss"], 0.5 * np.mean((x_test + T * u - y_test) ** 2), rtol=1e-12)
        np.testing.assert_allclose(r["theta_l2"], np.sqrt(T) * abs(u), rtol=1e-12)
        assert r["theta_dt_l2"] == 0.0 and r["stopping_time"] == T
    with pytest.raises(ValueError, match="kind"):
        ds.regularization_sweep(base, RidgeOracle(), weights, (x, y, x_test, y_test), kind="l3")
    with pytest.raises(ValueError, match="x_test"):
        ds.regularization_sweep(base, RidgeOracle(), weights, (x, y))


def test_cli_turnpike_writes_the_sweep_it_was_asked_for(tmp_path):
    import json

    from controlnet_cli import main

    out = tmp_path / "tp"
    code = main(["turnpike", "--problem", "ring", "--samples", "20", "--horizons", "0.5,1", "--step", "0.25",
                 "--fixed-T", "--horizon", "2", "--tracking", "0", "--iters", "2", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"config", "l2"}
    s = summary["l2"]
    assert s["mode"] == "fixed_T" and s["slope_against"] == "N"
    assert [(r["T"], r["N"]) for r in s["runs"]] == [(2.0, 2), (2.0, 4)]
    for r in s["runs"]:
        assert len(r["theta_norm"]) == r["N"] and len(r["risk"]) == r["N"] + 1
    assert (out / "error.png").is_file() and (out / "theta_norm_l2.png").is_file()
    assert main(["turnpike", "--out", str(out), "--layers", "3"]) == 2


def test_warm_start_extends_with_the_steady_control_and_resamples_in_time():
    # Drift ż = u: padding with u = 0 holds the old end state; resampling a piecewise-constant
    # u(t) on a finer grid of the same horizon keeps z(T) = ∫u dt.
    rng = np.random.default_rng(3)
    u = rng.normal(size=(4, 1))
    c = cn.Controls({"u": jnp.asarray(u)}, IDENTITY)
    old, longer = factory(1.0, 4, 0.0), factory(2.0, 8, 0.0)
    padded = ds.warm_start_controls(c, 8, "fixed_h")
    zs_old = np.asarray(cn.forward(old, c.theta))
    zs_new = np.asarray(cn.forward(longer, padded.theta))
    np.testing.assert_allclose(zs_new[:5], zs_old, rtol=1e-14)
    np.testing.assert_allclose(zs_new[5:], np.broadcast_to(zs_old[-1], zs_new[5:].shape), rtol=1e-14)
    finer = ds.warm_start_controls(c, 12, "fixed_T")
    np.testing.assert_allclose(np.asarray(finer.theta["u"])[:, 0], np.repeat(u[:, 0], 3), rtol=0)
    zN = cn.forward(factory(1.0, 12, 0.0), finer.theta)[-1]
    np.testing.assert_allclose(zN, zs_old[-1], rtol=1e-13)
    with pytest.raises(ValueError, match="fewer"):
        ds.warm_start_controls(c, 2, "fixed_h")


def test_warm_started_sweep_starts_from_the_previous_solution():
    # A solver that does nothing: with warm start every run returns the first run's controls
    # padded with zeros, so all runs share the first run's end state.
    @dataclasses.dataclass(frozen=True)
    class Idle:
        name: ClassVar[str] = "idle"

        def init(self, problem, controls, *, key):
            return OracleState(controls)

        def step(self, problem, state):
            return state, {"loss": cn.objective(problem, state.controls)[0]}

    study = ds.depth_study(factory, Idle(), [2.0, 1.0, 4.0], step=0.5, max_iters=1, warm_start=True,
                           init_scale=1.0)
    runs = study["runs"]
    assert [r["N"] for r in runs] == [2, 4, 8] and [r["warm_start"] for r in runs] == [False, True, True]
    np.testing.assert_allclose([r["training_error"] for r in runs], runs[0]["training_error"], rtol=1e-12)
    np.testing.assert_allclose(runs[2]["theta_norm"][:2], runs[0]["theta_norm"], rtol=1e-14)
    assert np.all(np.asarray(runs[2]["theta_norm"][2:]) == 0)


# -- the study's claims on the ring (slow: ten trainings each) -----------------------------------
def _ring_study(loss, tracking, warm_start, iters=12000):
    import optax

    import problems
    import solvers

    def ring(T, N, gamma):
        p = problems.make("ring", samples=200, layers=N, horizon=T, tracking=gamma, test_samples=0).problem
        if loss == "squared":
            p = dataclasses.replace(p, loss=cn.SquaredError(1), y=np.asarray(p.y, float)[:, None])
        return p

    solver = solvers.make_solver("gd", optimizer=optax.adam(optax.cosine_decay_schedule(1e-2, iters, alpha=0.01)))
    return ds.depth_study(ring, solver, [1.0, 2.0, 4.0, 8.0, 16.0], step=0.25, tracking=tracking,
                          max_iters=iters, eps=0.1, warm_start=warm_start)


@pytest.mark.slow
def test_ring_with_l2_training_error_decreases_with_the_horizon():
    # Esteve et al.: with an L² running cost the optimal training error is O(1/T).
    study = _ring_study("logistic", 0.0, warm_start=False)
    errors = [r["training_error"] for r in study["runs"]]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert study["slope"] < -0.5, study["slope"]


@pytest.mark.slow
def test_ring_with_tracking_has_a_turnpike():
    # With tracking (squared loss, whose minimum is attained at finite states) the control and
    # the flow switch off after an initial arc: small mid-horizon, a positive fitted rate, and
    # a band that fills more of the horizon as T grows.
    study = _ring_study("squared", 1.0, warm_start=True)
    runs = study["runs"]
    big = runs[-1]
    assert big["theta_norm_mid"] < 0.1 * max(big["theta_norm"]), big["theta_norm_mid"]
    assert big["speed_mid"] < 0.1 * max(big["speed"]), big["speed_mid"]
    assert all(r["mu_free"] > 0 for r in runs[2:]), [r["mu_free"] for r in runs]
    bands = [r["band_fraction"] for r in runs]
    assert all(b >= a for a, b in zip(bands[1:], bands[2:])) and bands[-1] > bands[1], bands
