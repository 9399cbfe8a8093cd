"""Discrete-weight MSA (Li & Hao, "An Optimal Control Approach to Deep Learning and Applications
to Discrete-Weight Neural Networks", ICML 2018): binary ``{−s, +s}`` or ternary ``{−s, 0, +s}``
weights trained by the sign / threshold rule on the Hamiltonian's gradient.

One iteration from ``(θ^j, w^j)``: forward and backward passes (``cn.forward``, ``cn.backward``)
give ``g_k = ∇_θ H_k(z_k, p_{k+1}, θ_k^j) − ∇_{θ_k} C`` for every layer (``C`` the H¹ coupling,
if any; ``H_k`` the batch average of per-sample Hamiltonians, as in :mod:`solvers.msa`), and an
accumulator of Hamiltonian gradients

    M_k^{j+1} = α M_k^j + η g_k                       (M^0 = the continuous initial controls)

stands for the linearized Hamiltonian ``θ ↦ M·θ``. Each discrete weight then takes the level
``c ∈ s·{−1, +1}`` (binary) or ``s·{−1, 0, +1}`` (ternary) that maximizes, elementwise,

    M c − λ |c| − (ρ/2) (c − θ^j)²

With ``λ = ρ = 0`` this is Li & Hao's rule: binary ``θ = s·sign(M)``, ternary
``θ = s·sign(M)·[|M| > λ]`` for the threshold ``λ > 0`` (``λ|c|`` an L¹ cost). ``ρ > 0`` is the
error control of extended MSA on the discrete set: a weight flips sign only when ``|M| > ρs``.
Matrix leaves (``W``, ``A``, ``B``) are discrete; vectors (biases) stay continuous and take the
gradient-ascent step ``θ + η_b g`` on the same Hamiltonian. The read-out ``w`` is continuous and
updated as in :mod:`solvers.msa` (safeguarded Newton step on ``Φ + tracking``, :mod:`solvers.msa.readout`).

Logged: ``loss``, ``accuracy``, ``grad_norm`` (of ``J`` at the incoming iterate), ``dH`` (as in
:mod:`solvers.msa`), and ``flips``, the fraction of discrete weights that changed.
"""

from __future__ import annotations

import dataclasses

from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import controlnet as cn
from controlnet.pytrees import pytree_dataclass, static_field

from .inputs import require_single_block
from .minibatch import minibatch
from .msa.readout import readout_newton
from .trees import tree_norm

__all__ = ["DiscreteMSA", "DiscreteState", "quantize"]


class DiscreteState(NamedTuple):
    controls: cn.Controls
    accumulator: Any
    key: jax.Array


def _levels(kind):
    return jnp.array([-1.0, 1.0]) if kind == "binary" else jnp.array([-1.0, 0.0, 1.0])


def quantize(M, previous, scale, kind="binary", threshold=0.0, rho=0.0):
    """Elementwise ``argmax_{c ∈ s·levels} M c − λ|c| − (ρ/2)(c − previous)²`` (module doc)."""
    c = scale * _levels(kind).astype(M.dtype)
    val = M[..., None] * c - threshold * jnp.abs(c) - 0.5 * rho * (c - previous[..., None]) ** 2
    # Ties (M = 0 with ρ = 0, e.g.) keep the previous level rather than the first candidate.
    best = jnp.max(val, axis=-1, keepdims=True)
    keep = jnp.any((val >= best) & (c == previous[..., None]), axis=-1)
    return jnp.where(keep, previous, c[jnp.argmax(val, axis=-1)])


def _is_discrete(leaf):
    return leaf.ndim >= 3  # stacked over layers: (N, rows, cols) are the weight matrices


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class DiscreteMSA:
    """Binary or ternary weights by MSA's sign / threshold rule (module doc).

    Args:
        kind: ``"binary"`` (``±s``) or ``"ternary"`` (``{−s, 0, s}``).
        scale: the level ``s``; default ``1/√(fan_in)`` per weight matrix (its last axis).
        threshold: ``λ``, the L¹ price of a nonzero ternary weight (ignored for binary).
        rho: error control: a weight flips only when ``|M| > ρ s``.
        lr: ``η``, the weight of the new Hamiltonian gradient in the accumulator.
        decay: ``α``, the accumulator's memory.
        bias_lr: gradient-ascent step of the continuous leaves (biases).
        batch_size: minibatch size (default: full batch).

    The numbers are pytree leaves and ``kind`` and ``batch_size`` structure
    (:mod:`controlnet.pytrees`): a study over ``rho`` or ``lr`` compiles once.
    """

    kind: str = static_field(default="binary")
    scale: float | None = None
    threshold: float = 0.0
    rho: float = 0.0
    lr: float = 1.0
    decay: float = 1.0
    bias_lr: float = 0.5
    batch_size: int | None = static_field(default=None)
    name: ClassVar[str] = "discrete"

    def __post_init__(self):
        if self.kind not in ("binary", "ternary"):
            raise ValueError(f"kind must be 'binary' or 'ternary', got {self.kind!r}")
        for f in ("threshold", "rho", "lr", "decay", "bias_lr"):
            v = float(getattr(self, f))
            if not v >= 0:
                raise ValueError(f"{f} must be a number >= 0, got {v!r}")
        if self.scale is not None and not float(self.scale) > 0:
            raise ValueError(f"scale must be positive or None, got {self.scale!r}")
        b = self.batch_size
        if b is not None and (isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)) or b < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {b!r}")
        object.__setattr__(self, "batch_size", None if b is None else int(b))  # frozen; hashable structure

    def level(self, leaf):
        """``s`` for one stacked weight leaf ``(N, rows, cols)``."""
        return self.scale if self.scale is not None else 1.0 / leaf.shape[-1] ** 0.5

    def _project(self, M, prev):
        def q(m, p):
            if not _is_discrete(m):
                return p
            return quantize(m, p, self.level(m), self.kind, self.threshold, self.rho)

        return jax.tree_util.tree_map(q, M, prev)

    def init(self, problem, controls, *, key):
        """Discrete initial controls: the continuous ones quantized (``M^0 = θ^0``)."""
        require_single_block(problem, self)
        if problem.lift is not None:
            raise ValueError("the discrete solver trains θ and w only, and this problem has a learned lift; "
                             "build it with lift='zero' (a zero-padding lift)")
        M = controls.theta
        zero = jax.tree_util.tree_map(jnp.zeros_like, M)  # no previous level: pure sign rule
        theta = jax.tree_util.tree_map(
            lambda m, z: quantize(m, z, self.level(m), self.kind, self.threshold, 0.0)
            if _is_discrete(m) else m, M, zero)
        return DiscreteState(cn.Controls(theta, controls.w), M, key)

    def step(self, problem, state):
        key, sub = jax.random.split(state.key)
        batch = minibatch(problem, sub, self.batch_size)
        c = state.controls
        zs = cn.forward(batch, c.theta)
        ps, g_theta, g_w = cn.backward(batch, c, zs)
        m = cn.metrics(batch, c, zs)
        grad = cn.gradient_from_hamiltonian(batch, c, g_theta, g_w, zs[-1])
        g = jax.tree_util.tree_map(jnp.negative, grad.theta)  # ∇_θH_k − ∇_{θ_k}C = −∇_{θ_k}J
        M = jax.tree_util.tree_map(lambda a, b: self.decay * a + self.lr * b, state.accumulator, g)
        theta = self._project(M, c.theta)
        theta = jax.tree_util.tree_map(
            lambda t, old, gg: t if _is_discrete(old) else old + self.bias_lr * gg, theta, c.theta, g)
        w = readout_newton(batch, zs, c.w)

        H_old = cn.layer_hamiltonians(batch, zs, ps, c.theta, c.w)
        H_new = cn.layer_hamiltonians(batch, zs, ps, theta, c.w)
        changed = [jnp.sum(a != b) for a, b in zip(jax.tree_util.tree_leaves(theta),
                                                    jax.tree_util.tree_leaves(c.theta)) if _is_discrete(a)]
        total = sum(a.size for a in jax.tree_util.tree_leaves(theta) if _is_discrete(a))
        info = {
            "loss": m["loss"],
            "accuracy": m["accuracy"],
            "grad_norm": tree_norm((g, grad.w)),
            "dH": jnp.sum(H_new - H_old),
            "flips": sum(changed) / max(total, 1),
        }
        return DiscreteState(cn.Controls(theta, w), M, key), info
