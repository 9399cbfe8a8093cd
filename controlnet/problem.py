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
is computed once, at construction, because XLA on the CPU ran the layer loops 6-10 % slower
with ``h`` computed inside the program than with ``h`` passed in (measured, see
docs/architecture.md). ``T`` is kept as given for display; differentiate with respect to ``h``
(``dJ/dT = (1/N) dJ/dh``). Which running costs are present at all is
structure too (``terms``): a zero weight costs nothing in the compiled code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import costs as _costs
from .costs import Loss
from .dynamics import VectorField
from .integrators import Integrator
from .lift import ConvLift
from .lift import lift as zero_pad
from .readout import init_readout, readout
from .state import final_state, forward

__all__ = ["Controls", "ControlProblem", "objective", "objective_value", "metrics"]


class Controls(NamedTuple):
    """The decision variables: per-layer ``theta`` (pytree, leading axis ``N``), the read-out
    ``w``, and the parameters ``lift`` of a learned input layer (``None`` for zero padding)."""

    theta: Any
    w: Any
    lift: Any = None


_META = ("dynamics", "integrator", "N", "width", "loss", "lift", "pooling", "terms")
_WEIGHTS = ("l2", "l1", "smoothness", "tracking", "readout_l2", "lift_l2")
_DATA = ("x", "y", "h") + _WEIGHTS


@dataclasses.dataclass(frozen=True)
class ControlProblem:
    """A training problem as a discrete optimal control problem (formulas in the module doc).

    Args:
        dynamics: the vector field ``f(z, θ)``.
        integrator: the one-step map ``Ψ_h`` (``Euler()`` gives a ResNet).
        N: number of layers (time steps).
        width: state dimension ``d`` (channels, for states with spatial axes); without a learned
            lift ``d ≥ d_in`` and the data are zero-padded to it.
        loss: the per-sample loss ``ℓ``.
        x: data, shape ``(S, d_in)`` for vectors, ``(S, C_in, L)`` for signals, ``(S, C_in, H, W)``
            for images; the initial states are ``λ1(x)``, shape ``(S, d, *space)``.
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
        weight_names: the names of the cost weights, ``("l2", "l1", "smoothness", "tracking",
            "readout_l2", "lift_l2")`` (class attribute).
    """

    dynamics: VectorField
    integrator: Integrator
    N: int
    width: int
    loss: Loss
    x: Any
    y: Any
    T: Any = 1.0
    l2: Any = 0.0
    l1: Any = 0.0
    smoothness: Any = 0.0
    tracking: Any = 0.0
    readout_l2: Any = 1e-3
    lift: Any = None
    lift_l2: Any = 1e-3
    pooling: str = "mean"
    terms: frozenset = dataclasses.field(init=False, default=frozenset())
    h: Any = dataclasses.field(init=False, default=None)
    weight_names: ClassVar[tuple] = _WEIGHTS

    def __post_init__(self):
        _validate(self)
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
        # every call (2-3 % of a gradient step on the reference problem, measured).
        for n in ("T",) + _WEIGHTS:
            set_(self, n, jnp.asarray(float(getattr(self, n))))
        # The step as a leaf of its own, divided here in double precision (module doc).
        set_(self, "h", jnp.asarray(float(self.T) / self.N))

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

    def with_data(self, x, y) -> "ControlProblem":
        """The same problem on other data (validated); under ``jit`` use :meth:`replace_data`."""
        return dataclasses.replace(self, x=x, y=y)

    def replace_data(self, x, y) -> "ControlProblem":
        """The same problem on other data, without validation (safe inside ``jit``)."""
        data, meta = _flatten(self)
        return _unflatten(meta, (x, y) + data[2:])

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


def _flatten(p):
    return tuple(getattr(p, n) for n in _DATA), tuple(getattr(p, n) for n in _META)


def _unflatten(meta, data):
    # Bypasses __init__: leaves may be tracers, and validation belongs to construction time.
    p = object.__new__(ControlProblem)
    for name, value in zip(_META, meta):
        object.__setattr__(p, name, value)
    for name, value in zip(_DATA, data):
        object.__setattr__(p, name, value)
    # T is not a leaf (module doc); inside a traced function nothing reads it, so this costs
    # nothing in compiled code. JAX also unflattens placeholders (None, specs): no T for those.
    h = p.h
    number = isinstance(h, (jax.Array, np.ndarray, np.generic, float))
    object.__setattr__(p, "T", p.N * h if number else None)
    return p


jax.tree_util.register_pytree_node(ControlProblem, _flatten, _unflatten)


def _validate(p: ControlProblem) -> None:
    if not isinstance(p.dynamics, VectorField):
        raise TypeError(f"dynamics must be a VectorField, got {type(p.dynamics).__name__}")
    if not isinstance(p.integrator, Integrator):
        raise TypeError(f"integrator must be an Integrator, got {type(p.integrator).__name__}")
    if not isinstance(p.loss, Loss):
        raise TypeError(f"loss must be a Loss, got {type(p.loss).__name__}")
    if not isinstance(p.N, (int, np.integer)) or isinstance(p.N, bool) or p.N < 1:
        raise ValueError(f"N (number of layers) must be an integer >= 1, got {p.N!r}")
    x = np.asarray(p.x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (samples, features) or (samples, channels, *space), got {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise ValueError(f"x holds {bad} NaN or Inf values; clean or drop those samples")
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
    y = np.asarray(p.y)
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"y has {y.shape[0] if y.ndim else 0} rows but x has {x.shape[0]}; "
            "pass one label per sample"
        )
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise ValueError("y holds NaN or Inf values; clean or drop those samples")
    p.loss.check_labels(y)
    # The numbers become arrays of the computation dtype: 1e300 is finite in Python and inf in
    # float32, so the bound is that dtype's largest number.
    dtype = np.dtype(jnp.result_type(float))
    big = float(np.finfo(dtype).max)
    T = float(p.T)
    if not 0 < T <= big:
        raise ValueError(f"horizon T must be a positive number at most {big:.4g} (the largest {dtype}), got {T!r}")
    for name in _WEIGHTS:
        v = float(getattr(p, name))
        if not 0 <= v <= big:
            raise ValueError(f"weight {name} must be a number >= 0 and at most {big:.4g} (the largest {dtype}), "
                             f"got {v!r}")


def objective(problem: ControlProblem, controls: Controls):
    """``J(θ, w)`` (module doc) together with the states ``z_k``, shape ``(N+1, S, *shape)``."""
    zs = forward(problem, controls.theta, problem.z0(controls.lift))
    return _cost_from_states(problem, controls, zs), zs


def objective_value(problem: ControlProblem, controls: Controls):
    """``J(θ, w)`` alone. Without tracking only ``z_N`` is computed: no trajectory is kept."""
    if "tracking" in problem.terms:
        return objective(problem, controls)[0]
    zN = final_state(problem, controls.theta, problem.z0(controls.lift))
    return _total(problem, controls, problem.terminal(zN, controls.w), 0.0)


def _total(problem, controls, terminal, tracking):
    """``J = Φ + h Σ_k [R(θ_k) + L(z_k, w)] + coupling (+ lift cost)`` from ``Φ(z_N, w)`` and
    ``Σ_k L(z_k, w)``."""
    theta = controls.theta
    run = jnp.sum(jax.vmap(problem.running)(theta)) if problem.terms & {"l2", "l1"} else 0.0
    return terminal + problem.h * (run + tracking) + problem.coupling(theta) + problem.lift_cost(controls.lift)


def _tracking_sum(problem, zs, w):
    """``Σ_{k<N} L(z_k, w)`` over the states ``zs (N+1, S, d)`` (0 without tracking)."""
    if "tracking" not in problem.terms:
        return 0.0
    return jnp.sum(jax.vmap(lambda z: problem.tracking_cost(z, w))(zs[:-1]))


def _cost_from_states(problem, controls, zs):
    terminal = problem.terminal(zs[-1], controls.w)
    return _total(problem, controls, terminal, _tracking_sum(problem, zs, controls.w))


def metrics(problem: ControlProblem, controls: Controls, zs=None) -> dict:
    """Loss ``J``, the data loss and the accuracy at the last layer (states recomputed if absent)."""
    if zs is None:
        zs = forward(problem, controls.theta, problem.z0(controls.lift))
    out = problem.readout(zs[-1], controls.w)
    return {
        "loss": _cost_from_states(problem, controls, zs),
        "data_loss": jnp.mean(problem.loss(out, problem.y)),
        "accuracy": problem.loss.accuracy(out, problem.y),
    }
