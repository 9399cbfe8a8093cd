"""The control problem of :mod:`controlnet` as CasADi expressions.

One place that maps the core's objects to symbolic CasADi: vector fields, integrators, losses
(overflow-safe), running costs, lift and read-out, the Hamiltonian and the objective ``J``. The
direct solver builds its NLP from it; any other CasADi-based code (an exact per-layer
Hamiltonian maximizer for MSA, say) can reuse it.

Layout (CasADi matrices are column-major, so the batch lies along columns):

- a batch of states is ``Z ∈ R^{d×S}``, sample ``i`` in column ``i`` (the transpose of the
  core's ``(S, d)``); a whole layer is a handful of matrix nodes, whatever ``S``;
- one layer's parameters are a column ``θ ∈ R^p``: the leaves of the core's dict in sorted key
  order, each flattened row-major (:meth:`Model.pack_theta` / :meth:`Model.unpack_theta`);
  all layers side by side are ``Θ ∈ R^{p×N}``;
- the read-out is ``w = (vec_C(A), c) ∈ R^{n_out·d + n_out}``.

Graphs stay compact: one layer is a :class:`casadi.Function` over the whole batch, repeated over
layers by ``map`` (multiple shooting) or ``mapaccum`` (single shooting); nothing is expanded to
SX and no C code is generated (the C of a whole horizon is too big for a C compiler).

Vector fields bring their own translation: a field's method ``casadi(Z, θ, ca)`` (see
:meth:`controlnet.VectorField.casadi`) returns ``f(Z, θ)`` for a batch ``Z (d×S)``, with the
CasADi module passed in so that the core never imports CasADi. Losses and integrators whose
``step`` is not plain arithmetic are registered here (:func:`register_loss`,
:func:`register_integrator`).

CasADi is imported on first use (:data:`ca`): ``import solvers`` does not load it.

Every expression accepts ``MX`` or ``SX`` arguments (or numbers), so a caller may build per-layer
problems in ``SX`` for speed and the whole-horizon problem in ``MX`` for size.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax
import numpy as np

import controlnet as cn

__all__ = [
    "Model",
    "model",
    "activation",
    "field",
    "ca",
    "LOSSES",
    "register_loss",
    "register_integrator",
    "softplus",
    "lift",
    "readout",
]


class _OnFirstUse:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


#: The ``casadi`` module, imported when first used (module doc).
ca = _OnFirstUse("casadi")


# -- activations ------------------------------------------------------------------------------
def softplus(s):
    """``log(1 + e^s) = max(s, 0) + log1p(exp(−|s|))``, overflow-safe, as in the core."""
    return cn.casadi_activation("softplus", ca)(s)


def activation(name: str) -> Callable:
    """The CasADi twin of :func:`controlnet.activation` (:func:`controlnet.casadi_activation`)."""
    return cn.casadi_activation(name, ca)


# -- vector fields: f(Z, θ) on a batch Z (d×S); θ a dict of CasADi matrices ----------------------
def _owner(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO that defines ``name``."""
    return next(k for k in cls.__mro__ if name in k.__dict__)


def field(dynamics, Z, theta):
    """``f(Z, θ)`` by the field's own :meth:`~controlnet.VectorField.casadi`, or a
    ``ValueError`` saying how to give it one. A translation inherited from a class whose formula
    (``__call__``) the field redefines is refused: it would compute another field."""
    cls = type(dynamics)
    name = cls.__name__
    inherited = _owner(cls, "casadi")
    if inherited is not cn.VectorField and not issubclass(inherited, _owner(cls, "__call__")):
        raise ValueError(f"vector field {name} redefines __call__ but inherits its CasADi translation from "
                         f"{inherited.__name__}; give {name} a method casadi(self, Z, theta, ca) "
                         "returning f(Z, θ) for a batch Z (d×S) in CasADi expressions")
    out = dynamics.casadi(Z, theta, ca)
    if out is NotImplemented:
        raise ValueError(f"vector field {name} has no CasADi translation; give {name} a method "
                         "casadi(self, Z, theta, ca) returning f(Z, θ) for a batch Z (d×S) in CasADi "
                         "expressions (ca is the casadi module)")
    return out


# -- integrators --------------------------------------------------------------------------------
#: Integrators whose ``step`` is not plain arithmetic need a translation here:
#: ``fn(integrator, f, Z, θ, h) -> Ψ_h(Z, θ)``. The core's Euler and RK4 are used as written:
#: their ``step`` only adds and scales, which CasADi expressions do too (one definition of each).
INTEGRATORS: dict[type, Callable] = {}


def register_integrator(cls: type, fn: Callable) -> None:
    """Teach the direct solver an integrator whose ``step`` uses ``jnp`` functions."""
    INTEGRATORS[cls] = fn


# -- losses: per-sample rows (1×S) from outputs O (n_out×S) ------------------------------------
def _logistic(loss, O, y):
    s = O[0, :]
    return softplus(s) - ca.DM(y.reshape(1, -1).astype(float)) * s


def _cross_entropy(loss, O, y):
    C = loss.n_classes
    onehot = np.zeros((C, y.shape[0]))
    onehot[y.astype(int), np.arange(y.shape[0])] = 1.0
    # logsumexp shifted by the column maximum: exact in value, and the shift's derivative
    # cancels, so the gradient is exact too.
    m = O[0, :]
    for c in range(1, C):
        m = ca.fmax(m, O[c, :])
    lse = m + ca.log(ca.sum1(ca.exp(O - ca.repmat(m, C, 1))))
    return lse - ca.sum1(O * ca.DM(onehot))


def _squared(loss, O, y):
    return 0.5 * ca.sum1((O - ca.DM(y.T.astype(float))) ** 2)


#: CasADi translations of the core's losses, by class: ``fn(loss, O, y) -> ℓ (1×S)``.
LOSSES: dict[type, Callable] = {
    cn.Logistic: _logistic,
    cn.SoftmaxCrossEntropy: _cross_entropy,
    cn.SquaredError: _squared,
}


def register_loss(cls: type, fn: Callable) -> None:
    """Teach the direct solver a new loss: ``fn(loss, O (n_out×S), y numpy) -> ℓ (1×S)``."""
    LOSSES[cls] = fn


# -- lift and read-out --------------------------------------------------------------------------
def lift(X, d: int):
    """``λ1``: zero-padding of ``X (d_in×S)`` to ``(d×S)`` (columns are samples)."""
    d_in = X.shape[0]
    if d < d_in:
        raise ValueError(f"state width {d} is smaller than the data dimension {d_in}")
    return X if d == d_in else ca.vertcat(X, ca.DM.zeros(d - d_in, X.shape[1]))


def readout(Z, A, c):
    """``λ2(Z; w) = A Z + c 1ᵀ`` for a batch ``Z (d×S)``."""
    return ca.mtimes(A, Z) + ca.repmat(c, 1, Z.shape[1])


def _sumsqr(x):
    return ca.sumsqr(x)


def _sumabs(x):
    return ca.sum1(ca.sum2(ca.fabs(x)))


# -- the model ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Model:
    """A :class:`controlnet.ControlProblem` in CasADi (numbers fixed, made by :func:`model`).

    Formulas (module doc of :mod:`controlnet.problem`), with ``Z`` batches along columns:

        Ψ_h(Z, θ),   R(θ) = (α/2)‖θ‖² + α₁‖θ‖₁,   Φ(Z, w) = (1/S)Σ ℓ + (α_w/2)‖w‖²,
        L(Z, w) = γ (1/S) Σ ℓ,   H_k(Z, P, θ) = ⟨P, Ψ_h(Z, θ)⟩ − h R(θ) − h L(Z, w),
        J(Θ, w) = Φ(Z_N, w) + h Σ_k [R(θ_k) + L(Z_k, w)] + (β/2h) Σ_k ‖θ_{k+1} − θ_k‖².
    """

    dynamics: Any
    integrator: Any
    loss: Any
    N: int
    d: int
    S: int
    h: float
    weights: dict
    terms: frozenset
    z0: np.ndarray  # (d, S)
    y: np.ndarray
    shapes: tuple  # ((name, shape), ...) of one layer's θ, sorted by name
    n_out: int

    # -- sizes and packing (numeric) -------------------------------------------------------
    @property
    def p(self) -> int:
        """Number of parameters of one layer."""
        return sum(int(np.prod(s)) for _, s in self.shapes)

    @property
    def n_w(self) -> int:
        """Number of read-out parameters, ``n_out·d + n_out``."""
        return self.n_out * (self.d + 1)

    def pack_theta(self, theta) -> np.ndarray:
        """The core's ``θ`` (dict of arrays with leading axis ``N``) as ``Θ (p×N)``."""
        cols = [np.asarray(theta[k], dtype=float).reshape(self.N, -1) for k, _ in self.shapes]
        return np.concatenate(cols, axis=1).T

    def unpack_theta(self, Theta) -> dict:
        """``Θ (p×N)`` back to the core's dict of arrays with leading axis ``N``."""
        Theta = np.asarray(Theta, dtype=float).reshape(self.p, self.N)
        out, off = {}, 0
        for k, s in self.shapes:
            n = int(np.prod(s))
            out[k] = Theta[off:off + n].T.reshape((self.N,) + tuple(s))
            off += n
        return out

    def pack_w(self, w) -> np.ndarray:
        """Read-out dict ``{"A", "c"}`` as the vector ``(vec_C(A), c)``."""
        return np.concatenate([np.asarray(w["A"], float).ravel(), np.asarray(w["c"], float)])

    def unpack_w(self, v) -> dict:
        v = np.asarray(v, dtype=float).ravel()
        k = self.n_out * self.d
        return {"A": v[:k].reshape(self.n_out, self.d), "c": v[k:]}

    def states(self, X) -> np.ndarray:
        """A state matrix ``(d × S·K)`` (``K`` batches side by side) as the core's ``(K, S, d)``."""
        X = np.asarray(X, dtype=float)
        return X.reshape(self.d, self.S, -1, order="F").transpose(2, 1, 0)

    # -- one layer (symbolic) ----------------------------------------------------------------
    def theta(self, v) -> dict:
        """One layer's column ``θ (p×1)`` as a dict of CasADi matrices shaped like the core's."""
        out, off = {}, 0
        for k, s in self.shapes:
            n = int(np.prod(s))
            piece = v[off:off + n]
            # Row-major data read column-major give the transpose.
            out[k] = piece if len(s) == 1 else ca.reshape(piece, s[1], s[0]).T
            off += n
        return out

    def w(self, v):
        """The read-out vector as ``(A, c)`` CasADi matrices."""
        k = self.n_out * self.d
        return ca.reshape(v[:k], self.d, self.n_out).T, v[k:k + self.n_out]

    def field(self, Z, v):
        """``f(Z, θ)`` for a batch ``Z (d×S)`` (:func:`field`)."""
        return field(self.dynamics, Z, self.theta(v))

    def step(self, Z, v):
        """``Ψ_h(Z, θ)``: one layer of the integrator on the whole batch."""
        f = lambda z, th: self.field(z, th)  # noqa: E731
        fn = INTEGRATORS.get(type(self.integrator))
        if fn is not None:
            return fn(self.integrator, f, Z, v, self.h)
        f(Z, v)  # a field without a translation says so here, not as the integrator's fault
        try:
            return self.integrator.step(f, Z, v, self.h)
        except Exception as e:  # jnp functions on CasADi symbols
            raise ValueError(f"integrator {type(self.integrator).__name__} is not plain "
                             f"arithmetic ({e}); add a CasADi translation with "
                             "solvers.casadi_model.register_integrator") from None

    def running(self, v, l1=None):
        """``R(θ) = (α/2)‖θ‖² + α₁‖θ‖₁`` of one layer, or summed over the columns of ``Θ``.

        ``l1`` replaces ``‖θ‖₁`` by a smooth stand-in (the direct solver's split, ``Σ(θ⁺+θ⁻)``).
        """
        r = 0
        if "l2" in self.terms:
            r = r + self.weights["l2"] * 0.5 * _sumsqr(v)
        if "l1" in self.terms:
            r = r + self.weights["l1"] * (_sumabs(v) if l1 is None else l1)
        return r

    def losses(self, Z, wv, reps: int = 1):
        """Per-sample losses ``ℓ(λ2(z_i; w), y_i)`` as a row; ``Z`` may hold ``reps`` batches."""
        fn = LOSSES.get(type(self.loss))
        if fn is None:
            raise ValueError(f"loss {type(self.loss).__name__} has no CasADi translation; add "
                             "one with solvers.casadi_model.register_loss")
        y = self.y if reps == 1 else np.concatenate([self.y] * reps, axis=0)
        return fn(self.loss, readout(Z, *self.w(wv)), y)

    def data_loss(self, Z, wv):
        """``(1/S) Σ_i ℓ(λ2(z_i; w), y_i)``."""
        return ca.sum2(self.losses(Z, wv)) / self.S

    def terminal(self, Z, wv):
        """``Φ(Z, w) = (1/S) Σ ℓ + (α_w/2)‖w‖²``."""
        phi = self.data_loss(Z, wv)
        if "readout_l2" in self.terms:
            phi = phi + self.weights["readout_l2"] * 0.5 * _sumsqr(wv)
        return phi

    def tracking_cost(self, Z, wv, reps: int = 1):
        """``L(Z, w) = γ (1/S) Σ ℓ``; with ``reps`` batches side by side, their sum."""
        if "tracking" not in self.terms:
            return 0
        return self.weights["tracking"] * ca.sum2(self.losses(Z, wv, reps)) / self.S

    def coupling(self, Theta):
        """``(β/2h) Σ_k ‖θ_{k+1} − θ_k‖²`` over the columns of ``Θ (p×N)``."""
        if "smoothness" not in self.terms or self.N < 2:
            return 0
        return self.weights["smoothness"] * 0.5 / self.h * _sumsqr(Theta[:, 1:] - Theta[:, :-1])

    def hamiltonian(self, Z, P, v, wv):
        """``H_k(Z, P, θ) = ⟨P, Ψ_h(Z, θ)⟩ − h R(θ) − h L(Z, w)`` (batch-summed, as the core)."""
        return (ca.sum1(ca.sum2(P * self.step(Z, v)))
                - self.h * self.running(v) - self.h * self.tracking_cost(Z, wv))

    # -- whole horizon (symbolic) ----------------------------------------------------------
    def step_function(self) -> ca.Function:
        """``Ψ_h`` as a :class:`casadi.Function` ``(Z (d×S), θ (p×1)) -> Z⁺``, built in MX."""
        Z = ca.MX.sym("Z", self.d, self.S)
        v = ca.MX.sym("theta", self.p)
        return ca.Function("layer", [Z, v], [self.step(Z, v)], ["z", "theta"], ["z_next"])

    def cost_from_states(self, Theta, wv, Zbefore, ZN, l1=None):
        """``J`` from the states: ``Zbefore = [Z_0 … Z_{N−1}] (d × S·N)``, ``ZN = Z_N``."""
        J = self.terminal(ZN, wv) + self.coupling(Theta)
        run = self.running(Theta, l1)
        track = self.tracking_cost(Zbefore, wv, reps=self.N)
        if not (isinstance(run, int) and isinstance(track, int)):
            J = J + self.h * (run + track)
        return J

    def rollout(self, Theta):
        """States ``(Z_0…Z_{N−1}, Z_N)`` of the forward pass from ``λ1(x)`` (``mapaccum``)."""
        F = self.step_function().mapaccum("forward", self.N)
        X = F(ca.DM(self.z0), Theta)  # [Z_1 … Z_N]
        S = self.S
        return ca.horzcat(ca.DM(self.z0), X[:, : S * (self.N - 1)]), X[:, S * (self.N - 1):]

    def objective(self, Theta, wv):
        """``J(Θ, w)`` through the forward pass (single shooting)."""
        return self.cost_from_states(Theta, wv, *self.rollout(Theta))

    def objective_function(self) -> ca.Function:
        """``J`` and its gradient as a Function ``(Θ (p×N), w) -> (J, ∇_Θ J, ∇_w J)``."""
        Theta = ca.MX.sym("Theta", self.p, self.N)
        wv = ca.MX.sym("w", self.n_w)
        J = self.objective(Theta, wv)
        gT, gw = ca.gradient(J, Theta), ca.gradient(J, wv)
        return ca.Function("J", [Theta, wv], [J, gT, gw], ["Theta", "w"], ["J", "dTheta", "dw"])


def model(problem: cn.ControlProblem) -> Model:
    """The CasADi :class:`Model` of ``problem`` (its data and weights as float64 constants)."""
    shapes = jax.eval_shape(lambda k: problem.dynamics.init(k, problem.width),
                            jax.ShapeDtypeStruct((2,), np.uint32))
    if not isinstance(shapes, dict):
        raise ValueError("the direct solver needs one layer's parameters as a dict of arrays, got "
                         f"{type(shapes).__name__}")
    return Model(
        dynamics=problem.dynamics,
        integrator=problem.integrator,
        loss=problem.loss,
        N=int(problem.N),
        d=int(problem.width),
        S=int(problem.S),
        h=float(problem.T) / int(problem.N),
        weights={n: float(getattr(problem, n)) for n in problem.weight_names},
        terms=problem.terms,
        z0=np.asarray(problem.z0(), dtype=float).T.copy(),
        y=np.asarray(problem.y),
        shapes=tuple((k, tuple(shapes[k].shape)) for k in sorted(shapes)),
        n_out=int(problem.loss.n_out),
    )
