"""The basic and extended MSA solvers: options as frozen pytree dataclasses on one base.

Numbers are leaves (``rho``, ``rho_min``, ``inner_lr``, a named optimizer's learning rate):
a study over them compiles once when the solver is passed to a jitted function as an argument.
Counts, modes, batch sizes, optax transformations and ``ρ`` schedules are static (part of the
tree's structure). Modes are strategy
objects (:mod:`.inner`, :mod:`.readout`); their names as strings are accepted and converted
when the solver is built, where every option is checked.
"""

from __future__ import annotations

import dataclasses

from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from controlnet.pytrees import pytree_dataclass, static_field

from ..inputs import require_single_block
from ..optimizers import Optimizer, Transformation, as_optimizer
from .inner import Auto, ClosedFormGradient, InnerGradient, InnerMethod, OptaxAscent
from .iteration import init_state, msa_step
from .readout import AutoReadout, ReadoutMethod

__all__ = ["MSAOptions", "ExtendedMSA", "MSA", "Schedule"]


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """``ρ`` as a schedule ``j ↦ ρ_j`` (any callable of the outer iteration count, e.g.
    ``optax.linear_schedule(20.0, 5.0, 50)``): structure, not data, so it holds no leaf."""

    fn: Callable = static_field()

    def __call__(self, iteration):
        return self.fn(iteration)


def _strategy(family: type, value, name: str, choices: str):
    """``value`` as a member of ``family``: itself, or the member its name (a string) names."""
    if isinstance(value, family):
        return value
    if isinstance(value, str) and value in family.registry:
        return family.registry[value]()
    raise ValueError(f"{name} must be {choices}, got {value!r}")


def _own_rate_optimizer(value, name: str):
    """``value`` (``None``, a named optimizer with its own ``lr``, or an optax transformation) as
    the solver keeps it: an optimizer (:class:`~solvers.optimizers.Optimizer`), whose ``init``
    and ``update`` are its optax transformation's."""
    if value is None:
        return None
    opt = as_optimizer(value, name)
    if not isinstance(opt, Transformation) and opt.lr is None:
        raise ValueError(f"{name}={type(opt).__name__}(...) needs its learning rate: pass "
                         f"{type(opt).__name__}(lr=...), e.g. {name}={type(opt).__name__}(lr=5e-3)")
    return opt


def _count(value, name: str, extra: str = ""):
    """``value`` as a Python int >= 1 or ``None`` (numpy integers accepted), else ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{extra}, got {value!r}")
    return int(value)


def _positive(value, name: str, hint: str = "") -> None:
    """``ValueError`` unless the number ``value`` is > 0 (a tracer, from unflattening, is not checked)."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        ok = float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be positive, got {value!r}{hint}")


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class MSAOptions:
    """The options every MSA solver shares (documented on :class:`ExtendedMSA`)."""

    inner_steps: int | None = static_field(default=None)
    inner_optimizer: Optimizer | None = None
    inner_lr: float = 0.5
    inner_gradient: InnerGradient = ClosedFormGradient()
    inner: InnerMethod = Auto()
    readout: ReadoutMethod = AutoReadout()
    readout_optimizer: Optimizer | None = None
    batch_size: int | None = static_field(default=None)
    hessian_samples: int | None = static_field(default=128)
    #: Whether the inner step scales and optimizer state carry across iterations.
    carries_inner: ClassVar[bool] = False

    def __post_init__(self):
        """Check every option; mode names become strategy objects (frozen: ``object.__setattr__``)."""
        setattr_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen)
        setattr_("inner_steps", _count(self.inner_steps, "inner_steps"))
        setattr_("batch_size", _count(self.batch_size, "batch_size", " or None"))
        setattr_("hessian_samples", _count(self.hessian_samples, "hessian_samples", " or None (all samples)"))
        _positive(self.inner_lr, "inner_lr")
        for name in ("inner_optimizer", "readout_optimizer"):
            setattr_(name, _own_rate_optimizer(getattr(self, name), name))
        setattr_("inner_gradient", _strategy(InnerGradient, self.inner_gradient, "inner_gradient",
                                             "'closed_form' or 'autodiff'"))
        setattr_("inner", _strategy(InnerMethod, self.inner, "inner",
                                    "'auto', 'optax' (a few optimizer steps), 'newton' (a Newton step per "
                                    "layer) or 'ipopt' (exact per layer)"))
        setattr_("readout", _strategy(ReadoutMethod, self.readout, "readout", "'auto', 'newton' or 'gradient'"))
        if not isinstance(self.inner, (Auto, OptaxAscent)) and self.inner_optimizer is not None:
            raise ValueError(f"inner_optimizer is the optimizer of inner='optax'; inner={self.inner.name!r} "
                             f"takes none")


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class ExtendedMSA(MSAOptions):
    """Extended MSA: ascend the augmented Hamiltonian ``H̃_k`` (:mod:`solvers.msa`) for every
    layer at once.

    Args:
        rho: penalty ``ρ > 0``: the initial value, or a schedule ``j ↦ ρ_j`` (any callable of
            the outer iteration count, e.g. ``optax.linear_schedule(20.0, 5.0, 50)``; kept as a
            :class:`Schedule`).
        adaptive: with a numeric ``rho``, adapt it to the loss: an iteration whose
            ``J(θ^{j+1}, w^{j+1})`` exceeds ``J(θ^j, w)`` is rejected (``θ`` stays, ``ρ ×= 2``),
            an accepted one lowers ``ρ ×= 0.9`` down to ``rho_min``. One extra forward pass; with
            the Newton read-out ``J`` then never increases (``w^{j+1}`` is kept either way, and
            it lowers ``J``). ``info["accepted"]`` says which; ``dH`` and the residuals
            describe the proposed move either way.
        rho_min: the floor of the adaptive ``ρ``.
        inner_steps: steps on ``H̃`` per iteration; default (``None``) 1 Newton step, or 3 optax
            steps. An optax step evaluates ``H̃``'s gradient over every layer and sample (about
            half a gradient step of work), so more steps make more progress per iteration but
            fewer iterations per second (``benchmarks/inner_steps.py`` compares them at equal
            wall time). Newton steps after the first reuse its Hessian (with the new gradient).
        inner_optimizer: the optimizer of ``"optax"``'s steps: a named optimizer with its own
            learning rate and schedule (``Adam(lr=5e-3, schedule=Cosine(1500))``,
            :mod:`solvers.optimizers`, :mod:`solvers.schedules`) or any optax transformation.
            Default (``None``): gradient ascent with step ``inner_lr / (ρ_j h²)``, scaled to the
            penalties, whose curvature in ``θ`` is ``ρ h²`` times an ``O(1)`` data moment.
        inner_lr: the dimensionless step of the default inner optimizer (a named optimizer
            carries its own learning rate).
        carry_inner_state: ``"optax"``'s optimizer state (Adam's moments, a schedule's step
            count) carries from one iteration to the next, as in one run of the optimizer
            (default); ``False`` starts it afresh every iteration. Since the inner gradient at
            ``θ^j`` is ``−∇_θ J``, one carried Adam step per iteration is an Adam step on ``J``
            that the augmented Hamiltonian and the ``J`` test may shorten or reject.
        inner_gradient: ``"closed_form"`` (:class:`~.inner.ClosedFormGradient`, default: the
            closed form registered for the integrator and field, :func:`register_closed_form`,
            else autodiff) or ``"autodiff"`` (:class:`~.inner.AutodiffGradient`).
        inner: how every layer's ``H̃_k − C_k`` is maximized, a :class:`~.inner.InnerMethod`
            or its name: ``"auto"`` (default, :class:`~.inner.Auto`), ``"optax"``
            (:class:`~.inner.OptaxAscent`), ``"newton"`` (:class:`~.inner.Newton`: its cost
            grows as ``P²`` per sample, so it suits narrow layers) or ``"ipopt"``
            (:class:`~.inner.Ipopt`, small problems, smooth ``R``).
        hessian_samples: the Newton step's Hessian is a sample mean; it is estimated on every
            ``⌊S/n⌋``-th sample from a random offset (:func:`subsample`; ``n`` to ``2n − 1``
            samples, all for ``None``), the gradient always on all.
        readout: ``"newton"``, ``"gradient"`` or ``"auto"`` (default), or a
            :class:`~.readout.ReadoutMethod`: how ``w`` is updated (:mod:`.readout`).
        readout_optimizer: optimizer of the gradient read-out and of a learned lift, as
            ``inner_optimizer`` (default Adam, 1e-2).
        batch_size: minibatch size (default: full batch).
    """

    rho: Any = 5.0
    adaptive: bool = static_field(default=True)
    rho_min: float = 1.0
    carry_inner_state: bool = static_field(default=True)
    name: ClassVar[str] = "emsa"
    carries_inner: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if callable(self.rho) and not isinstance(self.rho, Schedule):
            object.__setattr__(self, "rho", Schedule(self.rho))
        if not isinstance(self.rho, Schedule):
            _positive(self.rho, "rho", " for extended MSA; use MSA for rho = 0")
        _positive(self.rho_min, "rho_min")
        for name in ("adaptive", "carry_inner_state"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def rho_at(self, state):
        """``ρ_j`` for the state's iteration: the schedule's value, else the (adapted) state's."""
        return self.rho(state.iteration) if isinstance(self.rho, Schedule) else state.rho

    def _inner_optimizer(self, problem, rho):
        if self.inner_optimizer is not None:
            return self.inner_optimizer
        return optax.sgd(self.inner_lr / (rho * problem.h**2))

    def init(self, problem, controls, *, key):
        require_single_block(problem, self)  # before ``problem.h`` below
        rho0 = 0.0 if isinstance(self.rho, Schedule) else self.rho
        carried = self._inner_optimizer(problem, 1.0) if self.carry_inner_state else None
        return init_state(self, problem, controls, key, rho0, carried)

    def step(self, problem, state):
        rho = self.rho_at(state)
        adapt = (2.0, 0.9, self.rho_min) if self.adaptive and not isinstance(self.rho, Schedule) else None
        return msa_step(self, problem, state, rho, self._inner_optimizer(problem, rho), adapt)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class MSA(MSAOptions):
    """Basic MSA: ascend ``H_k`` itself (``ρ = 0``); options as in :class:`ExtendedMSA`.

    The inner maximization starts from ``θ^j`` and takes ``inner_steps`` optimizer steps (default
    Adam with learning rate ``inner_lr``), so the argmax is approximate; with more steps or a
    larger inner learning rate it approaches the exact argmax, which is what makes basic MSA
    stall or diverge (the failure E-MSA fixes). No safeguard: ``J`` may rise. Default 10 inner
    steps (E-MSA's default is 3): basic MSA is the maximum principle's plain iteration, and its
    inner problem should be solved closely.
    """

    inner_steps: int | None = static_field(default=10)
    inner_lr: float = 0.05
    inner: InnerMethod = OptaxAscent()
    name: ClassVar[str] = "msa"

    def init(self, problem, controls, *, key):
        return init_state(self, problem, controls, key, 0.0)

    def step(self, problem, state):
        opt = self.inner_optimizer if self.inner_optimizer is not None else optax.adam(self.inner_lr)
        return msa_step(self, problem, state, jnp.zeros((), jnp.result_type(float)), opt)
