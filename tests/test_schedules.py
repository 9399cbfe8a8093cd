"""Learning-rate schedules and named optimizers as options: JSON round trips, the same programs as
the optax objects they name, the command line's per-problem E-MSA defaults, and refusals."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import optax
import pytest

import problems
import solvers
import studies
from controlnet_cli import app
from controlnet_cli.solver_options import solver_from_args
from solvers.optimizers import SGD, Adam
from solvers.options import from_json, to_json
from solvers.schedules import Constant, Cosine, fill_steps

P = problems.make("ring", samples=8, test_samples=0, layers=2, horizon=1.0).problem
C0 = P.init_controls(jax.random.PRNGKey(0))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _iterates(make, steps, *numbers):
    """The controls and losses after ``steps`` steps of ``make(*numbers)``, the numbers traced (jit
    arguments) whatever holds them: an optax closure and a named optimizer see the same values."""
    solver = make(*numbers)
    state = solver.init(P, C0, key=jax.random.PRNGKey(0))

    def step(state, _):
        state, info = solver.step(P, state)
        return state, info["loss"]

    state, losses = jax.lax.scan(step, state, None, length=steps)
    return state.controls, losses


def _bitwise(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_a_cosine_schedule_is_optax_cosine_decay():
    for floor in (0.0, 0.1):
        ours, ref = Cosine(steps=5, floor=floor).rate(0.3), optax.cosine_decay_schedule(0.3, 5, alpha=floor)
        assert [float(ours(j)) for j in range(8)] == [float(ref(j)) for j in range(8)]
    assert Constant().rate(0.3) == 0.3


def test_gradient_descent_on_a_cosine_schedule_equals_the_optax_one_bitwise():
    def named(lr, floor):
        return solvers.GradientDescent(Adam(schedule=Cosine(2, floor=floor)), lr=lr)

    def closure(lr, floor):
        return solvers.GradientDescent(optax.adam(optax.cosine_decay_schedule(lr, 2, alpha=floor)))

    reference = _iterates(closure, 3, 0.05, 0.1)
    assert _bitwise(_iterates(named, 3, 0.05, 0.1), reference)
    assert not _bitwise(_iterates(named, 3, 0.05, 0.9)[1][1:], reference[1][1:])  # the floor reached the steps


def test_extended_msa_with_named_optimizers_equals_the_same_optax_objects_bitwise():
    def emsa(inner, readout):
        return solvers.ExtendedMSA(rho=0.5, rho_min=0.1, inner="optax", inner_steps=1, readout="gradient",
                                   inner_optimizer=inner, readout_optimizer=readout)

    named = _iterates(lambda lr: emsa(Adam(lr=lr, schedule=Cosine(2)), SGD(lr=lr, momentum=0.5)), 2, 0.05)
    closure = _iterates(lambda lr: emsa(optax.adam(optax.cosine_decay_schedule(lr, 2)), optax.sgd(lr, momentum=0.5)),
                        2, 0.05)
    assert _bitwise(named, closure)
    assert np.isfinite(np.asarray(named[1])).all()


CONV_EMSA = {"name": "emsa", "rho": 0.1, "rho_min": 1e-3, "inner_steps": 1, "batch_size": 128,
             "inner_optimizer": {"name": "adam", "lr": 5e-3, "schedule": {"name": "cosine", "steps": 1500}},
             "readout_optimizer": {"name": "adam", "lr": 5e-3, "schedule": {"name": "cosine", "steps": 1500}}}


def test_schedules_and_optimizers_round_trip_through_json():
    gd = solvers.GradientDescent(Adam(schedule=Cosine(steps=1500, floor=0.01)), lr=5e-3, batch_size=128)
    emsa = from_json(solvers.SOLVERS, CONV_EMSA)
    for solver in (gd, emsa, solvers.GradientDescent(SGD(momentum=0.9, lr=0.1))):
        text = json.dumps(to_json(solver))
        assert from_json(solvers.SOLVERS, json.loads(text)) == solver
    assert emsa.inner_optimizer == Adam(lr=5e-3, schedule=Cosine(1500)) == emsa.readout_optimizer
    # a run spec's schedule without steps decays over the budget; gd's schedule beside lr is its optimizer's
    spec = {"name": "gd", "lr": 5e-3, "schedule": {"name": "cosine", "floor": 0.01}, "batch_size": 128}
    assert studies.make_solver(spec, 1500) == gd == studies.make_solver({**spec, "schedule": "cosine", "floor": 0.01},
                                                                        1500)
    assert fill_steps({"a": [{"schedule": "cosine"}], "schedule": {"name": "constant"}}, 7) == \
        {"a": [{"schedule": {"name": "cosine", "steps": 7}}], "schedule": {"name": "constant"}}


def _cli_solver(*argv):
    return solver_from_args(app.build_parser().parse_args(["train", "--out", "unused", *argv]))


def test_the_command_line_takes_extended_msa_defaults_per_problem():
    conv = _cli_solver("--problem", "mnist1d", "--solver", "emsa")
    assert conv == from_json(solvers.SOLVERS, CONV_EMSA)  # 1,500 iterations of 128 by default
    short = _cli_solver("--problem", "digits_image", "--solver", "emsa", "--iters", "30", "--rho", "0.3")
    assert short.inner_optimizer.schedule == Cosine(30) and (short.rho, short.rho_min) == (0.3, 1e-3)
    assert _cli_solver("--problem", "ring", "--solver", "emsa") == solvers.ExtendedMSA()  # the toys: its own
    gd = _cli_solver("--problem", "mnist1d")
    assert gd == solvers.GradientDescent(Adam(schedule=Cosine(1500)), lr=5e-3, batch_size=128)


def test_bad_schedules_and_optimizers_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="Cosine steps .* must be a positive integer"):
        Cosine(steps=0)
    with pytest.raises(ValueError, match=r"Cosine floor .* must be in \[0, 1\]"):
        Cosine(steps=3, floor=1.5)
    with pytest.raises(ValueError, match="Adam schedule must be one of"):
        Adam(schedule="linear")
    with pytest.raises(ValueError, match=r"'solver'.*Cosine \('cosine'\) has no option 'flor'"):
        studies.normalize({"problem": {"name": "ring"},
                           "solver": {"name": "gd", "optimizer": {"name": "adam", "schedule": {"name": "cosine",
                                                                                               "flor": 0.1}}}})
    with pytest.raises(ValueError, match=r"'solver'.*unknown schedule"):
        studies.normalize({"problem": {"name": "ring"}, "solver": {"name": "gd", "schedule": "linear"}})
    with pytest.raises(ValueError, match=r"inner_optimizer=Adam\(...\) needs its learning rate"):
        solvers.ExtendedMSA(inner_optimizer=Adam())
    with pytest.raises(ValueError, match="lr is given twice"):
        solvers.GradientDescent(Adam(lr=0.1), lr=0.2)
