"""Ready-made control problems on the data sets, with defaults that train well.

A :class:`Task` is a training problem (a :class:`controlnet.ControlProblem` on the training
data) plus a held-out test split drawn from the same distribution with another seed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import controlnet as cn

from . import datasets

__all__ = ["Task", "make", "PROBLEMS", "DEFAULTS"]


class Task(NamedTuple):
    """A named problem with its test split ``(x_test, y_test)`` (or ``None``)."""

    name: str
    problem: cn.ControlProblem
    test: Any = None


#: Per problem: data set, state width, layers, horizon, vector field and its settings.
DEFAULTS = {
    "ring": dict(width=3, layers=20, horizon=5.0, dynamics="inner", hidden=16, l2=1e-3),
    "spiral": dict(width=2, layers=40, horizon=10.0, dynamics="two_layer", hidden=16, l2=1e-4),
    "xor": dict(width=2, layers=20, horizon=5.0, dynamics="two_layer", hidden=8, l2=1e-3),
}
PROBLEMS = tuple(DEFAULTS)


def _dynamics(name, hidden, activation):
    if name not in cn.DYNAMICS:
        raise ValueError(f"unknown dynamics {name!r}; choose one of {sorted(cn.DYNAMICS)}")
    cls = cn.DYNAMICS[name]
    return cls(width=hidden, activation=activation) if cls is cn.TwoLayer else cls(activation=activation)


def make(
    name: str = "ring",
    *,
    samples: int = 500,
    test_samples: int | None = None,
    seed: int = 0,
    width: int | None = None,
    layers: int | None = None,
    horizon: float | None = None,
    dynamics: str | None = None,
    hidden: int | None = None,
    activation: str = "tanh",
    integrator: str = "euler",
    l2: float | None = None,
    l1: float = 0.0,
    smoothness: float = 0.0,
    tracking: float = 0.0,
    readout_l2: float = 1e-3,
) -> Task:
    """The problem ``name`` (one of :data:`PROBLEMS`); ``None`` options take :data:`DEFAULTS`."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(DEFAULTS)}")
    if integrator not in cn.INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(cn.INTEGRATORS)}")
    d = DEFAULTS[name]
    opt = lambda v, k: d[k] if v is None else v  # noqa: E731
    generate = datasets.DATASETS[name]
    x, y = generate(samples, seed=seed)
    n_test = samples if test_samples is None else test_samples
    test = generate(n_test, seed=seed + 10_000) if n_test else None
    problem = cn.ControlProblem(
        dynamics=_dynamics(opt(dynamics, "dynamics"), opt(hidden, "hidden"), activation),
        integrator=cn.INTEGRATORS[integrator](),
        N=opt(layers, "layers"),
        width=opt(width, "width"),
        loss=cn.Logistic(),
        x=x,
        y=y,
        T=opt(horizon, "horizon"),
        l2=opt(l2, "l2"),
        l1=l1,
        smoothness=smoothness,
        tracking=tracking,
        readout_l2=readout_l2,
    )
    return Task(name, problem, test)
