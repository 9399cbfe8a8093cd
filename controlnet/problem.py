"""The discrete optimal control problem that *is* the training of a residual network.

    z_{i,0} = λ1(x_i),   z_{i,k+1} = Ψ_h(z_{i,k}, θ_k),   h = T/N,   k = 0..N−1

    J(θ, w) = Φ(z_N, w) + h Σ_{k<N} [R(θ_k) + L(z_k, w)] + (β/2h) Σ_{k<N−1} ‖θ_{k+1} − θ_k‖²

    Φ(z, w) = (1/S) Σ_i ℓ(λ2(z_i; w), y_i) + (α_w/2) ‖w‖²          (terminal cost)
              [+ (α_λ/2) ‖φ‖² for a learned lift λ1(·; φ), a terminal parameter like w]
    R(θ)    = (α/2) ‖θ‖² + α₁ ‖θ‖₁                                   (running cost on controls)
    L(z, w) = γ (1/S) Σ_i ℓ(λ2(z_i; w), y_i)                         (tracking, the turnpike setting)

:class:`ControlProblem` holds the structure (dynamics, integrator, ``N``, width, loss) as static
fields and the numbers (data, the step ``h``, weights) as pytree leaves, so one compiled function
serves every horizon and weight of the same structure. The leaf is ``h``, not ``T``: ``h = T/N``
is computed once, at construction, because XLA on the CPU runs the layer loops slower with
``h`` computed inside the program than passed in (docs/architecture.md). ``T`` is a constructor
argument kept as given for display, not a field; differentiate with respect to ``h``
(``dJ/dT = (1/N) dJ/dh``). Which running costs are present at all is
structure too (``terms``): a zero weight costs nothing in the compiled code.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import costs as _costs
from . import inputs
from .costs import Loss
from .dynamics import VectorField
from .integrators import Integrator
from .lift import ConvLift
from .lift import lift as zero_pad
from .pytrees import pytree_dataclass, static_field
from .readout import init_readout, readout
from .state import final_state, forward

__all__ = ["Controls", "ControlProblem", "objective", "objective_value", "objective_from_parts", "tracking_sum",
           "metrics"]


class Controls(NamedTuple):
    """The decision variables: per-layer ``theta`` (pytree, leading axis ``N``), the read-out
    ``w``, and the parameters ``lift`` of a learned input layer (``None`` for zero padding)."""

    theta: Any
    w: Any
    lift: Any = None


_WEIGHTS = ("l2", "l1", "smoothness", "tracking", "readout_l2", "lift_l2")


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class ControlProblem:
    """A training problem as a discrete optimal control problem (formulas in the module doc).

    A pytree (:func:`controlnet.pytrees.pytree_dataclass`): the data ``x, y``, the step ``h`` and
    the weights are its leaves; the field, integrator, ``N``, width, loss, lift, pooling and the
    set of present cost terms are its structure. ``T`` is not a leaf (module doc).

    Args:
        dynamics: the vector field ``f(z, θ)``.
        integrator: the one-step map ``Ψ_h`` (``Euler()`` gives a ResNet).
        N: number of layers (time steps).
        width: state dimension ``d`` (channels, for states with spatial axes); without a learned
            lift ``d ≥ d_in`` and the data are zero-padded to it.
        loss: the per-sample loss ``ℓ``.
        x: data, real numbers of shape ``(S, d_in)`` for vectors, ``(S, C_in, L)`` for signals,
            ``(S, C_in, H, W)`` for images; the initial states are ``λ1(x)``, shape
            ``(S, d, *space)``. Every value must be finite in the computation dtype (float32
            unless ``jax_enable_x64`` is on).
        y: labels or targets, one per sample.
        T: time horizon (the depth of the network in time units), ``h = T/N``.
        l2: weight ``α`` of the running cost ``R``'s ``(1/2)‖θ‖²``.
        l1: weight ``α₁`` of the running cost ``R``'s ``‖θ‖₁``.
        smoothness: weight ``β`` of the H¹-in-time coupling between layers.
        tracking: weight ``γ`` of the running loss at every layer.
        readout_l2: weight ``α_w`` on the read-out parameters.
        lift: the input layer: ``None`` (zero padding) or a learned :class:`~controlnet.ConvLift`.
        lift_l2: weight ``α_λ`` on a learned lift's parameters.

        pooling: how states with spatial axes are read out: ``"mean"``, after a global average
            over space, ``λ2(z; w) = A mean_space(z) + c``; ``"flatten"``, ``λ2(z; w) = A vec(z) + c``
            (keeps where a feature is, for ``C·|space|`` read-out weights per output).

    Attributes:
        h: the step ``T/N``, a 0-d array set at construction: the pytree leaf of the horizon.
        T: the horizon as given (``N·h`` on a problem rebuilt from its leaves by JAX).
        weight_names: the names of the cost weights, ``("l2", "l1", "smoothness", "tracking",
            "readout_l2", "lift_l2")`` (class attribute).
    """

    dynamics: VectorField = static_field()
    integrator: Integrator = static_field()
    N: int = static_field()
    width: int = static_field()
    loss: Loss = static_field()
    x: Any
    y: Any
    h: Any = dataclasses.field(init=False, default=None)
    T: dataclasses.InitVar[Any] = 1.0
    l2: Any = 0.0
    l1: Any = 0.0
    smoothness: Any = 0.0
    tracking: Any = 0.0
    readout_l2: Any = 1e-3
    lift: Any = static_field(default=None)
    lift_l2: Any = 1e-3
    pooling: str = static_field(default="mean")
    terms: frozenset = static_field(init=False, default=frozenset())
    weight_names: ClassVar[tuple] = _WEIGHTS

    def __post_init__(self, T):
        _validate(self, T)
        set_ = object.__setattr__
        set_(self, "x", jnp.asarray(np.asarray(self.x), dtype=jnp.result_type(float)))
        y = np.asarray(self.y)
        y = y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(float)
        set_(self, "y", jnp.asarray(y))
        terms = {n for n in _WEIGHTS if float(getattr(self, n)) != 0.0}
        if self.lift is None:
            terms.discard("lift_l2")
        set_(self, "terms", frozenset(terms))
        # The numbers as 0-d weakly typed arrays, whatever they came as (a Python or numpy
        # float): one signature for the compiled step, and no conversion of Python floats on
        # every call (a visible share of a small problem's gradient step).
        for n in _WEIGHTS:
            set_(self, n, jnp.asarray(float(getattr(self, n))))
        set_(self, "_horizon", jnp.asarray(float(T)))
        # The step as a leaf of its own, divided here in double precision (module doc).
        set_(self, "h", jnp.asarray(float(T) / self.N))

    # -- the pieces of J ---------------------------------------------------------------------
    @property
    def S(self) -> int:
        """Number of samples."""
        return self.x.shape[0]

    @property
    def state_shape(self) -> tuple:
        """One sample's state shape, ``(d, *space)``."""
        return (self.width,) + tuple(self.x.shape[2:])

    def z0(self, lift=None):
        """Initial states ``λ1(x)``, shape ``(S, d, *space)``; ``lift`` = the parameters
        ``controls.lift`` of a learned lift (``None`` for zero padding)."""
        if self.lift is None:
            return zero_pad(self.x, self.width)
        if lift is None:
            raise ValueError("this problem's lift is learned: pass its parameters, "
                             "problem.z0(controls.lift) (or forward(problem, theta, z0=...))")
        return self.lift(self.x, lift)

    def readout(self, z, w):
        """``λ2(z; w)`` for ``z (..., d, *space)``: the affine read-out of the state averaged over
        its spatial axes (none for vectors), or of the flattened state (``pooling``)."""
        n = self.x.ndim - 2
        if n == 0:
            return readout(z, w)
        if self.pooling == "flatten":
            return readout(z.reshape(z.shape[: z.ndim - n - 1] + (-1,)), w)
        return readout(jnp.mean(z, axis=tuple(range(-n, 0))), w)

    @property
    def readout_width(self) -> int:
        """Inputs of the read-out: ``d``, or ``d·|space|`` with ``pooling="flatten"``."""
        return self.width * (math.prod(self.x.shape[2:]) if self.pooling == "flatten" else 1)

    def step(self, z, theta):
        """``Ψ_h(z, θ)``: one layer."""
        return self.integrator.step(self.dynamics, z, theta, self.h)

    def running(self, theta):
        """``R(θ) = (α/2)‖θ‖² + α₁‖θ‖₁`` for one layer."""
        r = 0.0
        if "l2" in self.terms:
            r = r + self.l2 * _costs.l2(theta)
        if "l1" in self.terms:
            r = r + self.l1 * _costs.l1(theta)
        return r

    def data_loss(self, z, w):
        """``(1/S) Σ_i ℓ(λ2(z_i; w), y_i)``."""
        return jnp.mean(self.loss(self.readout(z, w), self.y))

    def terminal(self, z, w):
        """``Φ(z, w) = (1/S) Σ ℓ + (α_w/2)‖w‖²``."""
        phi = self.data_loss(z, w)
        if "readout_l2" in self.terms:
            phi = phi + self.readout_l2 * _costs.l2(w)
        return phi

    def tracking_cost(self, z, w):
        """``L(z, w) = γ (1/S) Σ ℓ`` (zero without tracking)."""
        if "tracking" not in self.terms:
            return 0.0
        return self.tracking * self.data_loss(z, w)

    def coupling(self, thetas):
        """``(β/2h) Σ_k ‖θ_{k+1} − θ_k‖²`` (zero without smoothness)."""
        if "smoothness" not in self.terms:
            return 0.0
        return self.smoothness * _costs.smoothness(thetas, self.h)

    # -- set-up helpers -----------------------------------------------------------------------
    def init_controls(self, key, scale: float = 1.0) -> Controls:
        """Random controls: independent layers from ``dynamics.init``, a random read-out, and
        the parameters of a learned lift (``None`` without one)."""
        k_theta, k_w = jax.random.split(key)
        keys = jax.random.split(k_theta, self.N)
        theta = jax.vmap(lambda k: self.dynamics.init(k, self.width, scale))(keys)
        w = init_readout(k_w, self.readout_width, self.loss.n_out)
        if self.lift is None:
            return Controls(theta, w)
        return Controls(theta, w, self.lift.init(jax.random.fold_in(key, 2), self.x.shape[1:], self.width))

    def lift_cost(self, lift):
        """``(α_λ/2)‖φ‖²`` for the parameters ``φ`` of a learned lift (0 without one)."""
        if "lift_l2" not in self.terms:
            return 0.0
        return self.lift_l2 * _costs.l2(lift)

    def check_inputs(self, x, y=None, *, what: str = "test") -> None:
        """Raise a ``TypeError``/``ValueError`` saying what to change unless ``x`` (and ``y``)
        suit this problem as another split of its data: real numbers, finite in the computation
        dtype, the training data's per-sample shape ``x.shape[1:]`` (a split with other features
        or channels would be zero-padded or fail late), one label per sample of the same kind.
        ``what`` names the split in the messages."""
        xa = inputs.real_array(x, f"{what} x", "rows of features")
        if xa.ndim != self.x.ndim or xa.shape[1:] != self.x.shape[1:]:
            raise ValueError(f"{what} x has shape {xa.shape}, but the training samples have shape "
                             f"{tuple(self.x.shape[1:])}: pass x of shape (samples, "
                             f"{', '.join(map(str, self.x.shape[1:]))})")
        inputs.check_finite(xa, f"{what} x")
        if y is None:
            return
        ya = inputs.real_array(y, f"{what} y", "labels or targets")
        if ya.shape[:1] != xa.shape[:1]:
            raise ValueError(f"{what} y has {ya.shape[0] if ya.ndim else 0} rows but {what} x has "
                             f"{xa.shape[0]}; pass one label per sample")
        if ya.shape[1:] != self.y.shape[1:]:
            raise ValueError(f"{what} y has shape {ya.shape}, but the training labels have per-sample shape "
                             f"{tuple(self.y.shape[1:])}; pass labels like the training ones")
        if np.issubdtype(ya.dtype, np.floating):
            inputs.check_finite(ya, f"{what} y")
        self.loss.check_labels(ya)

    def with_data(self, x, y) -> "ControlProblem":
        """The same problem on another split of its data, checked (:meth:`check_inputs`); under
        ``jit`` use :meth:`replace_data`."""
        self.check_inputs(x, y, what="the new")
        return dataclasses.replace(self, x=x, y=y)

    def replace_data(self, x, y) -> "ControlProblem":
        """The same problem on other data, without validation (safe inside ``jit``)."""
        new = copy.copy(self)
        object.__setattr__(new, "x", x)
        object.__setattr__(new, "y", y)
        return new

    def describe(self) -> dict:
        """A JSON-able description of the problem (for results and logs)."""
        return {
            "dynamics": repr(self.dynamics),
            "integrator": type(self.integrator).__name__,
            "N": self.N,
            "width": self.width,
            "loss": repr(self.loss),
            "lift": "zero padding" if self.lift is None else repr(self.lift),
            "state_shape": list(self.state_shape),
            "pooling": self.pooling,
            "samples": int(self.S),
            "T": _number(self.T),
            **{n: _number(getattr(self, n)) for n in _WEIGHTS},
        }


def _number(a) -> float:
    """A 0-d array as the shortest decimal that gives it back in its own dtype (``0.001``, not
    float32's ``0.0010000000474974513``)."""
    return float(str(np.asarray(a)[()]))


def _horizon(p):
    """``T``: as given at construction; ``N·h`` on a problem JAX rebuilt from its leaves (no
    ``T`` for placeholder leaves such as ``None``)."""
    T = p.__dict__.get("_horizon")
    if T is not None:
        return T
    number = isinstance(p.h, (jax.Array, np.ndarray, np.generic, float))
    return p.N * p.h if number else None


# T is a constructor argument (an InitVar), not a field, so not a leaf (module doc); read back
# through this property. Inside a traced function nothing reads it.
ControlProblem.T = property(_horizon, doc=_horizon.__doc__)


def _validate(p: ControlProblem, T) -> None:
    """Every constructor argument, before any conversion (messages say what to pass)."""
    if not isinstance(p.dynamics, VectorField):
        raise TypeError(f"dynamics must be a VectorField, got {type(p.dynamics).__name__}")
    if not isinstance(p.integrator, Integrator):
        raise TypeError(f"integrator must be an Integrator, got {type(p.integrator).__name__}")
    if not isinstance(p.loss, Loss):
        raise TypeError(f"loss must be a Loss, got {type(p.loss).__name__}")
    if not isinstance(p.N, (int, np.integer)) or isinstance(p.N, bool) or p.N < 1:
        raise ValueError(f"N (number of layers) must be an integer >= 1, got {p.N!r}")
    x = inputs.real_array(p.x, "x", "rows of features")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (samples, features) or (samples, channels, *space), got {x.shape}")
    inputs.check_finite(x, "x")
    if p.lift is not None and not isinstance(p.lift, ConvLift):
        raise TypeError(f"lift must be None (zero padding) or a ConvLift, got {type(p.lift).__name__}")
    if not isinstance(p.width, (int, np.integer)) or isinstance(p.width, bool) or p.width < 1:
        raise ValueError(f"width must be a positive integer, got {p.width!r}")
    if p.lift is None and p.width < x.shape[1]:
        what = "data dimension" if x.ndim == 2 else "number of input channels"
        raise ValueError(f"width must be an integer >= the {what} {x.shape[1]} (the data are "
                         f"zero-padded to it), got {p.width!r}; or learn the lift (lift=ConvLift())")
    p.dynamics.check_state((p.width,) + x.shape[2:])
    if p.pooling not in ("mean", "flatten"):
        raise ValueError(f"pooling must be 'mean' (global average over space) or 'flatten', got {p.pooling!r}")
    y = inputs.real_array(p.y, "y", "labels or targets")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"y has {y.shape[0] if y.ndim else 0} rows but x has {x.shape[0]}; "
            "pass one label per sample"
        )
    if np.issubdtype(y.dtype, np.floating):
        inputs.check_finite(y, "y")
    p.loss.check_labels(y)
    _validate_numbers(p, T)


def _validate_numbers(p: ControlProblem, T) -> None:
    """``T > 0`` and weights ``≥ 0``, all at most the computation dtype's largest number: they
    become arrays of that dtype, and 1e300 is finite in Python but inf in float32."""
    dtype = inputs.computation_dtype()
    big = float(np.finfo(dtype).max)
    T = float(T)
    if not 0 < T <= big:
        raise ValueError(f"horizon T must be a positive number at most {big:.4g} (the largest {dtype}), got {T!r}")
    for name in _WEIGHTS:
        v = float(getattr(p, name))
        if not 0 <= v <= big:
            raise ValueError(f"weight {name} must be a number >= 0 and at most {big:.4g} (the largest {dtype}), "
                             f"got {v!r}")


def objective(problem: ControlProblem, controls: Controls):
    """``J(θ, w)`` (module doc) together with the states ``z_k``, shape ``(N+1, S, *shape)``."""
    if not isinstance(problem, ControlProblem):  # a problem of another kind (staged) brings its own
        return problem.objective(controls)
    zs = forward(problem, controls.theta, problem.z0(controls.lift))
    return _cost_from_states(problem, controls, zs), zs


def objective_value(problem: ControlProblem, controls: Controls):
    """``J(θ, w)`` alone. Without tracking only ``z_N`` is computed: no trajectory is kept."""
    if not isinstance(problem, ControlProblem):
        return problem.objective(controls)[0]
    if "tracking" in problem.terms:
        return objective(problem, controls)[0]
    zN = final_state(problem, controls.theta, problem.z0(controls.lift))
    return objective_from_parts(problem, controls, problem.terminal(zN, controls.w), 0.0)


def objective_from_parts(problem, controls, terminal, tracking):
    """``J = Φ + h Σ_k [R(θ_k) + L(z_k, w)] + coupling (+ lift cost)`` from ``Φ(z_N, w)`` and
    ``Σ_k L(z_k, w)``."""
    theta = controls.theta
    run = jnp.sum(jax.vmap(problem.running)(theta)) if problem.terms & {"l2", "l1"} else 0.0
    return terminal + problem.h * (run + tracking) + problem.coupling(theta) + problem.lift_cost(controls.lift)


def tracking_sum(problem, zs, w):
    """``Σ_{k<N} L(z_k, w)`` over the states ``zs (N+1, S, d)`` (0 without tracking)."""
    if "tracking" not in problem.terms:
        return 0.0
    return jnp.sum(jax.vmap(lambda z: problem.tracking_cost(z, w))(zs[:-1]))


def _cost_from_states(problem, controls, zs):
    terminal = problem.terminal(zs[-1], controls.w)
    return objective_from_parts(problem, controls, terminal, tracking_sum(problem, zs, controls.w))


def metrics(problem: ControlProblem, controls: Controls, zs=None) -> dict:
    """Loss ``J``, the data loss and the accuracy at the last layer (states recomputed if absent)."""
    if not isinstance(problem, ControlProblem):
        return problem.metrics(controls)
    if zs is None:
        zs = forward(problem, controls.theta, problem.z0(controls.lift))
    out = problem.readout(zs[-1], controls.w)
    return {
        "loss": _cost_from_states(problem, controls, zs),
        "data_loss": jnp.mean(problem.loss(out, problem.y)),
        "accuracy": problem.loss.accuracy(out, problem.y),
    }
