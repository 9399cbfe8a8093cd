"""Learning-rate schedules as options: ``η_j = lr · s(j)`` for the optimizer step count ``j``.

A schedule is a strategy object of the family :class:`RateSchedule` (found by its ``name``, so
it has a JSON form, :func:`solvers.options.to_json`), held by a named optimizer
(:class:`solvers.optimizers.Adam`, :class:`~solvers.optimizers.SGD`) and applied to the
learning rate the optimizer is given::

    GradientDescent(Adam(schedule=Cosine(steps=1500)), lr=5e-3)
    {"name": "gd", "lr": 0.005, "optimizer": {"name": "adam", "schedule": {"name": "cosine", "steps": 1500}}}

``rate(lr)`` is what optax takes as a learning rate: the number itself (:class:`Constant`) or a
function of the step count (:class:`Cosine`). The numbers of a schedule are pytree leaves (a
sweep over ``floor`` compiles once), its length ``steps`` is structure.

A run spec or the command line may leave ``steps`` out: :func:`fill_steps` sets it to the run's
iteration budget, before the solver is built.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import optax

from controlnet.pytrees import pytree_dataclass, static_field

from .options import Family, checked_number

__all__ = ["RateSchedule", "Constant", "Cosine", "fill_steps"]


class RateSchedule(Family):
    """A learning-rate schedule: ``rate(lr)`` is the number or the step-count function optax takes.

    ``lr`` may be a traced value (a solver's learning rate is a leaf), so ``rate`` uses it in
    arithmetic only.
    """

    def rate(self, lr):
        raise NotImplementedError


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Constant(RateSchedule):
    """``η_j = lr`` for every step."""

    name: ClassVar[str] = "constant"

    def rate(self, lr):
        return lr


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Cosine(RateSchedule):
    """Cosine decay (Loshchilov & Hutter 2017) from ``lr`` to ``floor · lr`` over ``steps`` steps,
    then constant::

        η_j = lr · ((1 − floor) · ½ (1 + cos(π · min(j, steps) / steps)) + floor)

    which is ``optax.cosine_decay_schedule(lr, steps, alpha=floor)``.

    Args:
        steps: the steps to decay over (a positive integer; structure).
        floor: the end of the decay as a fraction of ``lr``, in ``[0, 1]`` (a leaf; default 0).
    """

    steps: int | None = static_field(default=None)
    floor: float = 0.0
    name: ClassVar[str] = "cosine"

    def __post_init__(self):
        s = self.steps
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"Cosine steps (the steps to decay over) must be a positive integer, got {s!r}; "
                             f"e.g. Cosine(steps=1500), or leave it out of a run spec for the run's max_iters")
        object.__setattr__(self, "steps", int(s))
        floor = checked_number("Cosine", "floor", self.floor, strict=False)  # a traced one passes as it is
        if isinstance(floor, float) and floor > 1.0:
            raise ValueError(f"Cosine floor (the end of the decay, a fraction of lr) must be in [0, 1], got {floor!r}")
        object.__setattr__(self, "floor", floor)

    def rate(self, lr):
        return optax.cosine_decay_schedule(lr, self.steps, alpha=self.floor)


def fill_steps(options, steps: int):
    """A copy of the JSON mapping ``options`` (a solver, an optimizer) in which every
    ``"schedule"`` that is a name or a mapping without ``steps`` decays over ``steps`` (the run's
    iterations): ``"cosine"`` becomes ``{"name": "cosine", "steps": steps}``. Everything else is
    left as it is (the solver's own checks judge it)."""
    if isinstance(options, list):
        return [fill_steps(v, steps) for v in options]
    if not isinstance(options, dict):
        return options
    out = {k: fill_steps(v, steps) for k, v in options.items()}
    schedule = out.get("schedule")
    if isinstance(schedule, str):
        schedule = {"name": schedule}
    if isinstance(schedule, dict) and "steps" not in schedule:
        cls = RateSchedule.registry.get(schedule.get("name"))
        if cls is not None and "steps" in {f.name for f in dataclasses.fields(cls)}:
            out["schedule"] = {**schedule, "steps": int(steps)}
    return out
