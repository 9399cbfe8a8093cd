"""The solver layer: the protocol ``solve`` dispatches on, numbers as leaves (one compile per
structure), errors before any work, and divergence by trend keeping the best iterate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import monitoring

import controlnet as cn
import problems
import solvers
from controlnet.pytrees import pytree_dataclass
from solvers.divergence import DivergenceWatch
from solvers.options import from_json, to_json
from solvers.protocol import OneShotSolver, StepSolver, solver_kind

TASK = problems.make("ring", samples=40, test_samples=20, layers=5, horizon=2.0)
P = TASK.problem
C0 = P.init_controls(jax.random.PRNGKey(0))

_COMPILES = []
monitoring.register_event_duration_secs_listener(
    lambda name, *a, **k: _COMPILES.append(name) if name.endswith("backend_compile_duration") else None)


def _compiles(f):
    """``(f(), number of XLA compiles f caused)``."""
    n = len(_COMPILES)
    out = f()
    return out, len(_COMPILES) - n


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


# -- numbers as leaves ------------------------------------------------------------------------------
def test_solves_differing_only_in_the_learning_rate_compile_once():
    run = lambda solver: solvers.solve(solver, P, C0, max_iters=6, progress=False)  # noqa: E731
    first = run(solvers.GradientDescent(lr=1e-2))  # compiles, unless an earlier test did
    other, n_other = _compiles(lambda: run(solvers.GradientDescent(lr=3e-2)))
    same, n_same = _compiles(lambda: run(solvers.GradientDescent(solvers.Adam(), lr=1e-2)))
    assert n_other == 0 and n_same == 0
    assert not np.array_equal(first.history["loss"][1:], other.history["loss"][1:])  # lr reached the step
    assert np.array_equal(first.history["loss"], same.history["loss"]) and _leaves_equal(first.controls, same.controls)
    # A new optax closure is new structure: it compiles (the counter sees compiles). Its constant
    # learning rate is folded into the program, the leaf is multiplied at run time: the same
    # iterates to round-off (measured: 1 ulp after these 6 steps, 2e-14 relative after 200).
    closure, n_closure = _compiles(lambda: run(solvers.GradientDescent(optax.adam(1e-2))))
    assert n_closure >= 1 and closure.info["compile_time"] > 0
    np.testing.assert_allclose(closure.history["loss"], first.history["loss"], rtol=1e-14, atol=0)
    for a, b in zip(jax.tree_util.tree_leaves(closure.controls), jax.tree_util.tree_leaves(first.controls)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_extended_msa_solves_differing_only_in_rho_compile_once():
    """ρ and the inner learning rate are leaves of the solver the driver passes to its loop."""
    run = lambda solver: solvers.solve(solver, P, C0, max_iters=4, progress=False)  # noqa: E731
    first = run(solvers.ExtendedMSA(rho=5.0, inner="optax"))  # compiles, unless an earlier test did
    other, n = _compiles(lambda: run(solvers.ExtendedMSA(rho=6.0, inner="optax", inner_lr=0.3)))
    assert n == 0
    assert other.history["rho"][0] == 6.0 and first.history["rho"][0] == 5.0
    assert not np.array_equal(first.history["loss"][1:], other.history["loss"][1:])  # ρ reached the step


def test_proximal_gradient_steps_compile_once():
    run = lambda lr, grow: solvers.solve(solvers.ProximalGradient(lr=lr, grow=grow), P, C0,  # noqa: E731
                                         max_iters=4, progress=False)
    a, _ = _compiles(lambda: run(1.0, 1.25))
    b, n = _compiles(lambda: run(0.25, 1.0))
    assert n == 0 and not np.array_equal(a.history["lr"], b.history["lr"])
    assert b.history["lr"][0] <= 0.25


def test_sgd_momentum_is_a_leaf_and_none_is_another_structure():
    run = lambda opt: solvers.solve(solvers.GradientDescent(opt, lr=0.1), P, C0, max_iters=3,  # noqa: E731
                                    progress=False)
    run(solvers.SGD(momentum=0.5))
    _, n = _compiles(lambda: run(solvers.SGD(momentum=0.9)))
    assert n == 0
    plain = run(solvers.SGD())  # no momentum: optax.sgd's plain step (to round-off, as for Adam)
    ref = solvers.solve(solvers.GradientDescent(optax.sgd(0.1)), P, C0, max_iters=3, progress=False)
    np.testing.assert_allclose(plain.history["loss"], ref.history["loss"], rtol=1e-14, atol=0)
    assert jax.tree_util.tree_structure(solvers.SGD()) != jax.tree_util.tree_structure(solvers.SGD(momentum=0.5))


def test_gradient_descent_is_a_value():
    assert solvers.GradientDescent() == solvers.GradientDescent()
    assert hash(solvers.GradientDescent()) == hash(solvers.GradientDescent(solvers.Adam(), lr=1e-2))
    assert solvers.GradientDescent(lr=0.1) != solvers.GradientDescent(lr=0.2)
    assert solvers.ProximalGradient() == solvers.ProximalGradient()
    s1, s2 = (jax.tree_util.tree_structure(solvers.GradientDescent(lr=v)) for v in (0.1, 0.2))
    assert s1 == s2
    # A raw optax transformation is structure, compared by identity.
    adam = optax.adam(1e-2)
    assert solvers.GradientDescent(adam) == solvers.GradientDescent(adam) != solvers.GradientDescent(optax.adam(1e-2))
    assert jax.tree_util.tree_leaves(solvers.GradientDescent(adam)) == []


def test_options_round_trip_through_json():
    gd = solvers.GradientDescent(solvers.SGD(momentum=0.9, nesterov=True), lr=0.05, batch_size=np.int64(8))
    spec = to_json(gd)
    assert spec["batch_size"] == 8 and type(gd.batch_size) is int
    assert from_json(solvers.SOLVERS, json.loads(json.dumps(spec))) == gd
    assert from_json(solvers.SOLVERS, {"name": "gd", "optimizer": "sgd", "lr": 0.1}) == \
        solvers.GradientDescent(solvers.SGD(), lr=0.1)
    pg = solvers.ProximalGradient(lr=0.5, grow=1.1)
    assert from_json(solvers.SOLVERS, to_json(pg)) == pg


BAD_OPTIONS = {
    "lr 0": (lambda: solvers.GradientDescent(lr=0.0), ValueError, "lr must be a finite number > 0"),
    "lr negative": (lambda: solvers.GradientDescent(lr=-1e-3), ValueError, "lr must be a finite number > 0"),
    "lr NaN": (lambda: solvers.GradientDescent(lr=math.nan), ValueError, "lr must be a finite number > 0"),
    "lr string": (lambda: solvers.GradientDescent(lr="0.1"), ValueError, "lr must be a finite number > 0"),
    "lr with a transformation": (lambda: solvers.GradientDescent(optax.adam(1e-2), lr=0.1), ValueError,
                                 "an optax transformation carries its own learning rate"),
    "not an optimizer": (lambda: solvers.GradientDescent("adam"), TypeError, "optimizer must be Adam(), SGD"),
    "Adam b1 1": (lambda: solvers.Adam(b1=1.0), ValueError, "Adam b1 must be a finite number >= 0.0 and < 1.0"),
    "nesterov without momentum": (lambda: solvers.SGD(nesterov=True), ValueError, "needs a momentum"),
    "divergence factor 1": (lambda: solvers.Budget(divergence_factor=1.0), ValueError,
                            "divergence_factor must be a finite number > 1"),
    "divergence patience 0": (lambda: solvers.Budget(divergence_patience=0), ValueError,
                              "divergence_patience must be an integer >= 1"),
    "batch_size 0": (lambda: solvers.GradientDescent(batch_size=np.int64(0)), ValueError, "batch_size must be"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_options_are_refused_when_built(case):
    make, error, fragment = BAD_OPTIONS[case]
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make()


# -- the protocol --------------------------------------------------------------------------------
def test_the_kinds_of_solver():
    assert solver_kind(solvers.GradientDescent()) is StepSolver
    assert solver_kind(solvers.ProximalGradient()) is StepSolver
    assert isinstance(solvers.GradientDescent(), StepSolver)
    assert solver_kind(solvers.SOLVERS["direct"]()) is OneShotSolver


NOT_SOLVERS = {
    "an optax optimizer": (optax.adam(1e-2), "pass a solver, e.g. GradientDescent(optax.adam(1e-2))"),
    "a solver class": (solvers.GradientDescent, "got the class GradientDescent; pass GradientDescent(...)"),
    "a string": ("gd", "got str without name, init, step"),
}


@pytest.mark.parametrize("case", list(NOT_SOLVERS))
def test_solve_refuses_what_is_not_a_solver_before_any_work(case):
    thing, fragment = NOT_SOLVERS[case]
    n = len(_COMPILES)
    with pytest.raises(TypeError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        solvers.solve(thing, P, C0, max_iters=2, progress=False)
    assert len(_COMPILES) == n


class _CountState(NamedTuple):
    controls: cn.Controls
    k: jax.Array


@pytree_dataclass
class _Labelled:
    """A pytree solver with a string field not declared static: refused with the fix."""

    label: str = "x"
    name: ClassVar[str] = "labelled"

    def init(self, problem, controls, *, key):
        return _CountState(controls, jnp.asarray(0))

    def step(self, problem, state):
        return state, {"loss": jnp.asarray(1.0)}


def test_a_solver_field_that_is_no_number_must_be_static():
    n = len(_COMPILES)
    with pytest.raises(TypeError, match=r"field\.label holds a str.*static_field"):
        solvers.solve(_Labelled(), P, C0, max_iters=2, progress=False)
    assert len(_COMPILES) == n


def test_import_solvers_exposes_the_studies():
    code = "import solvers; print(solvers.compare.compare.__name__, solvers.depth_study.depth_study.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["compare", "depth_study"]


def test_import_solvers_leaves_casadi_out():
    code = "import sys, solvers; print('casadi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "import solvers loaded casadi"


# -- errors up front -------------------------------------------------------------------------------
X_TEST, Y_TEST = TASK.test
BAD_SOLVES = {
    "test as a dict": (dict(test={"x": X_TEST, "y": Y_TEST}), TypeError, "pass test=(x, y)"),
    "test of three arrays": (dict(test=(X_TEST, Y_TEST, Y_TEST)), TypeError, "pass test=(x, y)"),
    "test with 3 features": (dict(test=(np.ones((5, 3)), Y_TEST[:5])), ValueError,
                             "test x has shape (5, 3), but the training samples have shape (2,)"),
    "checkpoint in a missing directory": (dict(checkpoint="/nonexistent-dir/x/run.ckpt"), ValueError,
                                          "directory '/nonexistent-dir/x' does not exist"),
    "target_loss NaN": (dict(target_loss=math.nan), ValueError, "target_loss must be a number (not NaN)"),
    "max_seconds NaN": (dict(max_seconds=math.nan), ValueError, "max_seconds must be positive"),
}


@pytest.mark.parametrize("case", list(BAD_SOLVES))
def test_bad_solve_arguments_are_refused_before_any_compile(case, tmp_path):
    kwargs, error, fragment = BAD_SOLVES[case]
    kwargs = {"max_iters": 3, **kwargs}
    n = len(_COMPILES)
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        solvers.solve(solvers.GradientDescent(lr=0.123), P, C0, progress=False, **kwargs)
    assert len(_COMPILES) == n
    assert not (tmp_path / "run.ckpt").exists()


def test_evaluate_checks_the_test_split_first():
    with pytest.raises(TypeError, match=r"pass test=\(x, y\)"):
        solvers.evaluate(P, C0, test={"x": X_TEST})
    with pytest.raises(ValueError, match="training samples have shape"):
        solvers.evaluate(P, C0, test=(X_TEST[:, :1], Y_TEST))


def test_infinite_max_seconds_is_no_limit():
    assert solvers.Budget(max_seconds=math.inf) == solvers.Budget()
    r = solvers.solve(solvers.GradientDescent(), P, C0, max_iters=3, max_seconds=math.inf, progress=False)
    assert r.status == "max_iters" and len(r.history["loss"]) == 3


# -- divergence by trend ---------------------------------------------------------------------------
def _loss(controls):
    return float(jax.jit(lambda c: cn.objective(P, c)[0])(controls))


@pytest.mark.filterwarnings("ignore:.*diverged at iteration:RuntimeWarning")
def test_a_learning_rate_far_too_large_diverges_and_keeps_the_best_iterate():
    with pytest.warns(RuntimeWarning, match="diverged at iteration .* keeping iterate 0, the lowest loss"):
        r = solvers.solve(solvers.GradientDescent(lr=1e3), P, C0, max_iters=300, progress=False)
    h = r.history["loss"]
    assert r.status == "diverged" and np.all(np.isfinite(h))
    assert r.info["diverged_at"] == len(h) - 1 < 300
    assert h[-20:].min() > 10 * h.min() and h.max() > 100 * h[0]  # what the default budget refuses
    assert r.info["kept_iteration"] == int(np.argmin(h))
    assert _loss(r.controls) == pytest.approx(h.min(), rel=1e-12) == r.info["loss"]
    # Turned off, the same run goes on to its budget with every number finite.
    off = solvers.solve(solvers.GradientDescent(lr=1e3), P, C0, progress=False,
                        budget=solvers.Budget(60, divergence_factor=None))
    assert off.status == "max_iters" and np.all(np.isfinite(off.history["loss"]))
    np.testing.assert_array_equal(off.history["loss"][: len(h)], h)


class _ValleyState(NamedTuple):
    controls: cn.Controls
    k: jax.Array


@pytree_dataclass
class _Valley:
    """Logs ``J_k = (k − 5)⁴ + 1`` (down to 1 at ``k = 5``, then up) and scales the controls by
    ``(k + 2)/(k + 1)``, so iterate ``k`` is ``(k + 1) C0``: which iterate was kept is visible."""

    name: ClassVar[str] = "valley"

    def init(self, problem, controls, *, key):
        return _ValleyState(controls, jnp.asarray(0))

    def step(self, problem, state):
        k = state.k.astype(jnp.result_type(float))
        nxt = jax.tree_util.tree_map(lambda c: c * ((k + 2) / (k + 1)), state.controls)
        return _ValleyState(nxt, state.k + 1), {"loss": (k - 5) ** 4 + 1}


VALLEY = solvers.Budget(40, divergence_factor=10.0, divergence_patience=3)


def _expected(kept):
    return jax.tree_util.tree_map(lambda c: c * (kept + 1.0), C0)


@pytest.mark.filterwarnings("ignore:.*diverged at iteration:RuntimeWarning")
@pytest.mark.parametrize("per_call", [1, 3, None])
def test_divergence_by_trend_keeps_the_best_iterate_however_the_calls_split(per_call):
    # J: 626, 257, 82, 17, 2, 1, 2, 17, 82, 257, 626, 1297, ...: above 10 x 1 and above the first,
    # 626, from k = 11 on (k = 7..10 are above the first bound only), so patience 3 ends at 13.
    r = solvers.solve(_Valley(), P, C0, budget=VALLEY, progress=False, steps_per_call=per_call)
    assert r.status == "diverged" and r.info["diverged_at"] == 13 and len(r.history["loss"]) == 14
    assert r.info["kept_iteration"] == 5
    for a, b in zip(jax.tree_util.tree_leaves(r.controls), jax.tree_util.tree_leaves(_expected(5))):
        np.testing.assert_allclose(a, b, rtol=1e-14)


@pytest.mark.filterwarnings("ignore:.*diverged at iteration:RuntimeWarning")
@pytest.mark.parametrize("stop, kept", [(4, 5), (8, 8)])
def test_a_resumed_run_diverges_where_the_whole_run_does(stop, kept, tmp_path):
    whole = solvers.solve(_Valley(), P, C0, budget=VALLEY, progress=False)
    ck = tmp_path / "valley.ckpt"
    solvers.solve(_Valley(), P, C0, budget=solvers.Budget(stop, divergence_factor=10.0, divergence_patience=3),
                  checkpoint=ck, progress=False)
    rest = solvers.solve(_Valley(), P, C0, budget=VALLEY, resume=ck, progress=False)
    assert rest.info["diverged_at"] == whole.info["diverged_at"] == 13
    np.testing.assert_array_equal(rest.history["loss"], whole.history["loss"])
    # The best iterate before the resume (5) is not kept by a run resumed after it: the best since.
    assert rest.info["kept_iteration"] == kept
    for a, b in zip(jax.tree_util.tree_leaves(rest.controls), jax.tree_util.tree_leaves(_expected(kept))):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_the_watch_needs_both_bounds_and_a_streak():
    w = DivergenceWatch(10.0, 2)
    # Near a best of almost zero, a loss 10x the best but below the first is no divergence.
    assert not any(w.see(v) for v in [1.0, 1e-9, 1e-7, 1e-7, 1e-7, 0.5])
    assert not w.see(2.0) and w.see(3.0)
    w = DivergenceWatch(10.0, 3)
    assert [w.see(v) for v in [1.0, 0.1, 5.0, 0.5, 5.0, 5.0, 5.0]] == [False] * 6 + [True]  # streaks reset
    assert not any(DivergenceWatch(None, 1).see(v) for v in [1.0, 1e9, 1e18])


@pytest.mark.filterwarnings("ignore:.*diverged at iteration:RuntimeWarning")
def test_a_non_finite_loss_still_keeps_the_last_finite_iterate_and_names_it():
    # Before the trend can see it: the step overflows float64 within a few iterations.
    r = solvers.solve(solvers.GradientDescent(optax.sgd(1e50)), P, C0, max_iters=100, progress=False)
    j = r.info["diverged_at"]
    assert r.status == "diverged" and len(r.history["loss"]) == j < 20
    assert r.info["kept_iteration"] == j - 1
    assert _loss(r.controls) == pytest.approx(r.history["loss"][-1], rel=1e-12)
    # A run that ends on its budget returns its last iterate, and says which.
    ok = solvers.solve(solvers.GradientDescent(), P, C0, max_iters=4, progress=False)
    assert ok.info["kept_iteration"] == 4 and ok.info["diverged_at"] is None
