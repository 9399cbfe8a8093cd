"""Structure-preserving vector fields: stable, Hamiltonian, volume-, mass- and Lipschitz-preserving.

Each class is a :class:`~controlnet.dynamics.VectorField` (or a
:class:`~controlnet.splitting.SplitField` where a splitting integrator gives the structure), so
it plugs into :class:`~controlnet.ControlProblem` and every solver unchanged.

- :class:`Antisymmetric` ``f = σ((W − Wᵀ − γI) z + b)``: the eigenvalues of ``∂f/∂z`` have real
  part ``≤ 0`` (``= 0`` for ``γ = 0``), so the forward dynamics neither blow up nor collapse
  (Haber & Ruthotto, "Stable architectures for deep neural networks", 2017).
- :class:`Hamiltonian` ``ẋ = Aᵀσ(Av + a)``, ``v̇ = −Bᵀσ(Bx + b)``: Hamilton's equations for
  ``E(x, v) = 1ᵀS(Av + a) + 1ᵀS(Bx + b)``, ``S' = σ``; with symplectic Euler / leapfrog the
  energy error stays bounded (Haber & Ruthotto's two-variable networks in Hamiltonian form).
- :class:`VolumePreserving` ``ẋ = σ(Av + a)``, ``v̇ = σ(Bx + b)``: with
  :class:`~controlnet.splitting.LieSplitting` (``x⁺ = x + hσ(Av + a)``, ``v⁺ = v + hσ(Bx⁺ + b)``)
  every layer has ``det ∂Ψ/∂z = 1``.
- :class:`MassPreserving` ``ż = (A_θ(z) − A_θ(z)ᵀ) 𝟙``: ``𝟙ᵀż = 0``, so ``Σ_i z_i`` is conserved by
  every Runge–Kutta method (they preserve linear invariants).
- :class:`LipschitzNet`: contractive ``x ↦ x − h_C Aᵀσ_C(Ax + b)`` then expansive
  ``x ↦ x + h_E σ(Wx + v)`` per layer; 1-Lipschitz when ``√(1 − h_C + h_C²)(1 + h_E) ≤ 1``
  (Celledoni, Murari, Owren, Schönlieb, Sherry, "Dynamical systems' based neural networks", 2023).

The last three follow Celledoni et al., "Structure-preserving deep learning" (2021).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from .activations import activation, softplus
from .dynamics import DYNAMICS, VectorField
from .splitting import PartitionedField, SplitField, split_state

__all__ = [
    "Antisymmetric",
    "Hamiltonian",
    "VolumePreserving",
    "MassPreserving",
    "LipschitzNet",
    "lipschitz_factor",
    "orthogonal",
    "spectral_normalize",
]


def _normal(key, shape, std):
    return std * jax.random.normal(key, shape)


def _half(d):
    if d % 2:
        raise ValueError(
            f"a two-variable (x, v) network needs an even state width, got {d}; use width {d + 1}"
        )
    return d // 2


@dataclasses.dataclass(frozen=True)
class Antisymmetric(VectorField):
    """``f(z, θ) = σ((W − Wᵀ − γI) z + b)``, ``θ = (W ∈ R^{d×d}, b ∈ R^d)``, ``γ ≥ 0`` fixed.

    ``∂f/∂z = D (W − Wᵀ − γI)`` with ``D = diag σ' ≥ 0`` is similar to
    ``D^{1/2}(W − Wᵀ)D^{1/2} − γD``: its eigenvalues have real part in ``[−γ max σ', 0]``.
    """

    gamma: float = 0.0
    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")

    def matrix(self, theta):
        """``K = W − Wᵀ − γI``."""
        W = theta["W"]
        return W - W.T - self.gamma * jnp.eye(W.shape[0], dtype=W.dtype)

    def __call__(self, z, theta):
        return activation(self.activation)(z @ self.matrix(theta).T + theta["b"])

    def init(self, key, d, scale=1.0):
        kW, kb = jax.random.split(key)
        return {"W": _normal(kW, (d, d), scale / d**0.5), "b": _normal(kb, (d,), scale * 0.1)}


def _partitioned_init(key, n, m, scale):
    """Parameters of two maps ``R^n → R^m`` of a partitioned field, ``A, B (m, n)`` with
    standard deviation ``scale/√n`` and biases ``a, b (m,)`` with ``scale/10``."""
    kA, ka, kB, kb = jax.random.split(key, 4)
    return {
        "A": _normal(kA, (m, n), scale / n**0.5),
        "a": _normal(ka, (m,), scale * 0.1),
        "B": _normal(kB, (m, n), scale / n**0.5),
        "b": _normal(kb, (m,), scale * 0.1),
    }


def _log_cosh(s):
    # log cosh s = |s| + log1p(e^{−2|s|}) − log 2, without overflow.
    a = jnp.abs(s)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - math.log(2.0)


#: Antiderivatives ``S`` with ``S' = σ``, for the energy of :class:`Hamiltonian`.
_ANTIDERIVATIVES = {
    "tanh": _log_cosh,
    "relu": lambda s: 0.5 * jax.nn.relu(s) ** 2,
    "identity": lambda s: 0.5 * s**2,
    "sigmoid": softplus,
}


@dataclasses.dataclass(frozen=True)
class Hamiltonian(PartitionedField):
    """``ẋ = Aᵀσ(Av + a)``, ``v̇ = −Bᵀσ(Bx + b)`` for ``z = (x, v)``; ``A, B ∈ R^{m×d/2}``.

    Hamilton's equations ``ẋ = ∂E/∂v``, ``v̇ = −∂E/∂x`` of the separable energy
    ``E(x, v) = Σ S(Av + a) + Σ S(Bx + b)`` with ``S' = σ`` (:meth:`energy`). ``m = width``
    (default ``d/2``). Integrate with :class:`~controlnet.splitting.LieSplitting` (symplectic
    Euler) or :class:`~controlnet.splitting.StrangSplitting` (leapfrog); data lifted by zero
    padding start at ``v = 0`` as in Haber & Ruthotto.
    """

    width: int | None = None
    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)
        if self.activation not in _ANTIDERIVATIVES:
            raise ValueError(
                f"Hamiltonian needs an activation with a closed-form antiderivative for its "
                f"energy; choose one of {sorted(_ANTIDERIVATIVES)}, got {self.activation!r}"
            )
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise ValueError(f"Hamiltonian width must be a positive integer or None, got {self.width!r}")

    def x_velocity(self, v, theta):
        return activation(self.activation)(v @ theta["A"].T + theta["a"]) @ theta["A"]

    def v_velocity(self, x, theta):
        return -(activation(self.activation)(x @ theta["B"].T + theta["b"]) @ theta["B"])

    def energy(self, z, theta):
        """``E(x, v) = Σ S(Av + a) + Σ S(Bx + b)`` per sample, shape ``z.shape[:-1]``."""
        x, v = split_state(z)
        S = _ANTIDERIVATIVES[self.activation]
        return jnp.sum(S(v @ theta["A"].T + theta["a"]), -1) + jnp.sum(
            S(x @ theta["B"].T + theta["b"]), -1
        )

    def init(self, key, d, scale=1.0):
        n = _half(d)
        return _partitioned_init(key, n, n if self.width is None else self.width, scale)


@dataclasses.dataclass(frozen=True)
class VolumePreserving(PartitionedField):
    """``ẋ = σ(Av + a)``, ``v̇ = σ(Bx + b)`` for ``z = (x, v)``; ``A, B ∈ R^{d/2×d/2}``.

    Each part is a shear, so a splitting step (:class:`~controlnet.splitting.LieSplitting`:
    ``x⁺ = x + hσ(Av + a)``, ``v⁺ = v + hσ(Bx⁺ + b)``) has ``det ∂Ψ/∂z = 1``.
    """

    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)

    def x_velocity(self, v, theta):
        return activation(self.activation)(v @ theta["A"].T + theta["a"])

    def v_velocity(self, x, theta):
        return activation(self.activation)(x @ theta["B"].T + theta["b"])

    def init(self, key, d, scale=1.0):
        n = _half(d)
        return _partitioned_init(key, n, n, scale)


@dataclasses.dataclass(frozen=True)
class MassPreserving(VectorField):
    """``ż = (A_θ(z) − A_θ(z)ᵀ) 𝟙`` with ``A_θ(z)_{ij} = σ(Σ_l U_{ijl} z_l + c_{ij})``.

    ``θ = (U ∈ R^{d×d×d}, c ∈ R^{d×d})``; ``ż_i = Σ_j (A_ij − A_ji)`` so ``Σ_i ż_i = 0``.
    """

    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)

    def matrix(self, z, theta):
        """``A_θ(z)``, shape ``z.shape + (d,)``."""
        return activation(self.activation)(jnp.einsum("ijl,...l->...ij", theta["U"], z) + theta["c"])

    def __call__(self, z, theta):
        A = self.matrix(z, theta)
        return jnp.sum(A, axis=-1) - jnp.sum(A, axis=-2)

    def init(self, key, d, scale=1.0):
        kU, kc = jax.random.split(key)
        return {"U": _normal(kU, (d, d, d), scale / d**0.5), "c": _normal(kc, (d, d), scale * 0.1)}


def orthogonal(M):
    """The Cayley transform ``Q = (I − K)(I + K)⁻¹`` of ``K = M − Mᵀ``: ``QᵀQ = I`` for any ``M``."""
    K = M - M.T
    eye = jnp.eye(M.shape[0], dtype=M.dtype)
    # (I + K) is invertible: K is antisymmetric, its eigenvalues are imaginary.
    return jnp.linalg.solve((eye + K).T, (eye - K).T).T


def spectral_normalize(W):
    """``W / max(1, ‖W‖₂)``: the same matrix if ``‖W‖₂ ≤ 1``, else rescaled to spectral norm 1."""
    return W / jnp.maximum(1.0, jnp.linalg.norm(W, ord=2))


def lipschitz_factor(contractive_step, expansive_step):
    """``√(1 − h_C + h_C²)(1 + h_E)``: Murari et al.'s bound on the Lipschitz constant of one
    layer, the condition :class:`LipschitzNet` checks. With its orthogonal ``A`` the exact
    constant is smaller: :meth:`LipschitzNet.layer_lipschitz`."""
    return math.sqrt(1.0 - contractive_step + contractive_step**2) * (1.0 + expansive_step)


def _half_leaky(s):
    # Slopes in [1/2, 1]: the lower slope is what makes the gradient step contract.
    return jnp.maximum(s, 0.5 * s)


@dataclasses.dataclass(frozen=True)
class LipschitzNet(SplitField):
    """1-Lipschitz layers: a contractive then an expansive Euler step, with fixed step sizes.

        contractive  x ↦ x − h_C Aᵀσ_C(Ax + a),   A = orthogonal(K),  σ_C(s) = max(s, s/2)
        expansive    x ↦ x + h_E σ(Wx + v),        W = spectral_normalize(W̃),  σ 1-Lipschitz

    ``θ = (K, a, W̃, v)``. The contractive map is the gradient step on the convex
    ``Σ S(Ax + a)``: its Jacobian ``I − h_C AᵀDA`` is symmetric with eigenvalues ``1 − h_C λ``,
    ``λ ∈ [½, 1]``, so its norm is at most ``√(1 − h_C + h_C²)`` (exactly
    ``max(|1 − h_C|, 1 − h_C/2)``, :meth:`layer_lipschitz`); the expansive map is at most
    ``1 + h_E``. Their composition (one layer) is 1-Lipschitz when
    ``√(1 − h_C + h_C²)(1 + h_E) ≤ 1``, checked at construction. The step sizes are part of the
    architecture (:meth:`substeps` ignores ``h = T/N``), so integrate with
    :class:`~controlnet.splitting.LieSplitting` (the alternating network; Strang's half
    contractive steps keep the bound too); ``__call__`` is the vector field
    ``−Aᵀσ_C(Ax + a) + σ(Wx + v)`` of the averaged ODE, without the guarantee.
    """

    contractive_step: float = 0.5
    expansive_step: float = 0.1
    activation: str = "tanh"

    def __post_init__(self):
        activation(self.activation)
        hC, hE = self.contractive_step, self.expansive_step
        if not (math.isfinite(hC) and math.isfinite(hE) and hC > 0 and hE >= 0):
            raise ValueError(
                f"contractive_step must be > 0 and expansive_step >= 0, got {hC!r}, {hE!r}"
            )
        factor = lipschitz_factor(hC, hE)
        if factor > 1.0:
            best = 1.0 / math.sqrt(1.0 - hC + hC**2) - 1.0 if hC < 1.0 else None
            hint = (
                f"lower expansive_step to at most {best:.4g} for this contractive_step"
                if best is not None and best >= 0
                else "use a contractive_step in (0, 1), e.g. 0.5, which allows expansive_step <= 0.1547"
            )
            raise ValueError(
                f"LipschitzNet is 1-Lipschitz only if sqrt(1 - h_C + h_C^2)(1 + h_E) <= 1; "
                f"h_C={hC}, h_E={hE} give {factor:.6g}; {hint}"
            )

    @property
    def n_parts(self):
        return 2

    def substeps(self, h):
        return (self.contractive_step, self.expansive_step)

    @staticmethod
    def contractive_lipschitz(h):
        """``max(|1 − h|, 1 − h/2)``: the exact Lipschitz constant of one contractive step of size ``h``.

        Its Jacobian ``I − h AᵀDA`` (``D`` the slopes of ``σ_C``, ``½`` or ``1``) is symmetric, and
        ``A`` orthogonal makes ``AᵀDA`` similar to ``D``: the eigenvalues are ``1 − h/2`` and
        ``1 − h``, both attained (all pre-activations negative, or all positive). Below the
        general strongly-monotone bound ``√(1 − h + h²)`` of :func:`lipschitz_factor`.
        """
        return max(abs(1.0 - h), 1.0 - 0.5 * h)

    def layer_lipschitz(self, strang: bool = False) -> float:
        """The Lipschitz bound of one layer: ``c(h_C)(1 + h_E)`` for Lie splitting,
        ``c(h_C/2)²(1 + h_E)`` for Strang's half contractive steps, ``c`` =
        :meth:`contractive_lipschitz` (the expansive step: ``‖I + h_E D′W‖ ≤ 1 + h_E``)."""
        c = self.contractive_lipschitz
        hC, hE = self.contractive_step, self.expansive_step
        return (c(hC / 2) ** 2 if strang else c(hC)) * (1.0 + hE)

    def part(self, j, z, theta):
        if j == 0:
            A = orthogonal(theta["K"])
            return -(_half_leaky(z @ A.T + theta["a"]) @ A)
        W = spectral_normalize(theta["W"])
        return activation(self.activation)(z @ W.T + theta["v"])

    def init(self, key, d, scale=1.0):
        kK, ka, kW, kv = jax.random.split(key, 4)
        return {
            "K": _normal(kK, (d, d), scale / d**0.5),
            "a": _normal(ka, (d,), scale * 0.1),
            "W": _normal(kW, (d, d), scale / d**0.5),
            "v": _normal(kv, (d,), scale * 0.1),
        }


DYNAMICS.update(
    {
        "antisymmetric": Antisymmetric,
        "hamiltonian": Hamiltonian,
        "volume_preserving": VolumePreserving,
        "mass_preserving": MassPreserving,
        "lipschitz": LipschitzNet,
    }
)
