"""Optimizers as options: named optax optimizers whose numbers are leaves and that have a JSON form.

A member of the family :class:`Optimizer` (:class:`Adam`, :class:`SGD`) builds its optax
transformation from a learning rate: ``build(lr)`` is ``optax.adam(schedule.rate(lr), ...)``,
the schedule a :class:`solvers.schedules.RateSchedule` (constant by default). The learning rate
comes from the solver (gradient descent's ``lr``) or from the optimizer itself
(``Adam(lr=5e-3)``); an optimizer that carries its learning rate is a complete optax
transformation (``init``, ``update``), which is how the MSA solvers take theirs::

    GradientDescent(Adam(schedule=Cosine(1500)), lr=5e-3)
    ExtendedMSA(inner_optimizer=Adam(lr=5e-3, schedule=Cosine(1500)), ...)

Any ``optax.GradientTransformation`` is accepted too, wrapped in :class:`Transformation`
(:func:`as_optimizer`): structure, compared by identity, with no JSON form.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import optax

from controlnet.pytrees import pytree_dataclass, static_field

from .options import Family, checked_number
from .schedules import Constant, RateSchedule

__all__ = ["Optimizer", "Adam", "SGD", "Transformation", "as_optimizer"]


class Optimizer(Family):
    """An optimizer: ``build(lr)`` is its optax transformation at learning rate ``lr`` (its own
    ``lr`` if it carries one); ``init`` and ``update`` are that transformation's, at its own ``lr``.

    ``lr`` may be a traced value (the driver passes the solver to its compiled loop), so
    ``build`` uses it only in arithmetic, never in Python control flow.
    """

    lr: float | None = None

    def with_rate(self, rate) -> optax.GradientTransformation:
        """The optax transformation at ``rate`` (a number or a function of the step count)."""
        raise NotImplementedError

    def build(self, lr=None) -> optax.GradientTransformation:
        own = self.lr
        if own is None and lr is None:
            raise ValueError(f"{type(self).__name__}() has no learning rate here; give it one, e.g. "
                             f"{type(self).__name__}(lr=1e-2)")
        return self.with_rate(self.schedule.rate(own if own is not None else lr))

    def init(self, params):
        return self.build().init(params)

    def update(self, updates, state, params=None):
        return self.build().update(updates, state, params)


def _check_common(self, owner):
    """Check and store the fields every named optimizer has: its ``lr`` (``None`` or > 0) and
    its ``schedule`` (a :class:`RateSchedule` or its name)."""
    if self.lr is not None:
        object.__setattr__(self, "lr", checked_number(owner, "lr", self.lr))
    schedule = self.schedule
    if isinstance(schedule, str) and schedule in RateSchedule.registry:
        schedule = RateSchedule.registry[schedule]()
    if not isinstance(schedule, RateSchedule):
        raise ValueError(f"{owner} schedule must be one of {sorted(RateSchedule.registry)} (e.g. "
                         f"solvers.schedules.Cosine(steps=1500)), got {schedule!r}")
    object.__setattr__(self, "schedule", schedule)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): ``optax.adam(schedule.rate(lr), b1, b2, eps)``; ``b1, b2, eps``
    and ``lr`` are leaves.

    Args:
        lr: its own learning rate (default ``None``: the solver's).
        schedule: the learning rate's schedule (default :class:`~solvers.schedules.Constant`).
    """

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    lr: float | None = None
    schedule: RateSchedule = Constant()
    name: ClassVar[str] = "adam"

    def __post_init__(self):
        for f, v in (("b1", self.b1), ("b2", self.b2)):
            object.__setattr__(self, f, checked_number("Adam", f, v, strict=False, upper=1.0))
        object.__setattr__(self, "eps", checked_number("Adam", "eps", self.eps))
        _check_common(self, "Adam")

    def with_rate(self, rate):
        return optax.adam(rate, b1=self.b1, b2=self.b2, eps=self.eps)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class SGD(Optimizer):
    """Stochastic gradient descent, ``θ ← θ − η_j·g`` (heavy-ball ``momentum`` when given, a leaf;
    ``nesterov`` is structure): ``optax.sgd(schedule.rate(lr), momentum, nesterov)``.

    Args:
        lr: its own learning rate (default ``None``: the solver's).
        schedule: the learning rate's schedule (default :class:`~solvers.schedules.Constant`).
    """

    momentum: float | None = None
    nesterov: bool = static_field(default=False)
    lr: float | None = None
    schedule: RateSchedule = Constant()
    name: ClassVar[str] = "sgd"

    def __post_init__(self):
        if self.momentum is not None:
            object.__setattr__(self, "momentum", checked_number("SGD", "momentum", self.momentum,
                                                                strict=False, upper=1.0))
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"SGD nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and self.momentum is None:
            raise ValueError("SGD nesterov=True needs a momentum; pass SGD(momentum=0.9, nesterov=True)")
        _check_common(self, "SGD")

    def with_rate(self, rate):
        return optax.sgd(rate, momentum=self.momentum, nesterov=self.nesterov)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Transformation(Optimizer):
    """Any optax transformation, as given (``GradientDescent(optax.adam(schedule))``).

    It is structure, not data: two are equal only if they are the same object (optax closures
    compare by identity), so each one compiles its own program. Its learning rate is its own:
    pass a named optimizer (:class:`Adam`, :class:`SGD`) with ``lr`` to sweep one.
    """

    transformation: optax.GradientTransformation = static_field()

    def __post_init__(self):
        if not isinstance(self.transformation, optax.GradientTransformation):
            raise TypeError(f"optimizer must be Adam(), SGD(...) or an optax.GradientTransformation "
                            f"(e.g. optax.adam(1e-2)), got {type(self.transformation).__name__}")

    def build(self, lr=None):
        return self.transformation


def as_optimizer(value, name: str = "optimizer") -> Optimizer:
    """``value`` as an :class:`Optimizer`: itself, or an optax transformation wrapped in
    :class:`Transformation`; anything else is a ``TypeError``."""
    if isinstance(value, Optimizer):
        return value
    if isinstance(value, optax.GradientTransformation):
        return Transformation(value)
    raise TypeError(f"{name} must be Adam(), SGD(...) (solvers.optimizers) or an "
                    f"optax.GradientTransformation (e.g. optax.adam(1e-2)), got {value!r}")
