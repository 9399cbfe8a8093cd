"""Proximal gradient for the L¹ running cost: exact zeros in ``θ(t)``, and with them a stopping time.

``J = J_s(θ, w) + h α₁ Σ_k ‖θ_k‖₁`` with ``J_s`` smooth (the data, L², smoothness and tracking
terms). A (sub)gradient method only makes the weights oscillate around zero; the proximal
gradient method (ISTA) sets them to zero exactly:

    θ⁺ = S_{η h α₁}(θ − η ∇_θ J_s(θ, w)),   w⁺ = w − η ∇_w J(θ, w),
    S_τ(x) = sign(x) max(|x| − τ, 0)   (the proximal map of τ‖·‖₁, elementwise),

with the step ``η`` found by backtracking (:class:`ProximalGradient`), which makes ``J``
non-increasing (Beck & Teboulle, SIAM J. Imaging Sci. 2009).

``∇J_s`` is the adjoint gradient (:func:`controlnet.value_and_gradient`) minus the L¹ part it
holds (:func:`smooth_gradient`). Logged: ``loss`` (``J`` at the incoming iterate,
L¹ included), ``accuracy`` and ``grad_norm``: the norm of the gradient mapping
``G = (x − x⁺)/η``, which vanishes exactly at the stationary points of the composite problem,
``0 ∈ ∇J_s + h α₁ ∂‖θ‖₁`` (so ``tol`` stops there). Without an L¹ term the step is plain
gradient descent with step ``η``.

With these zeros the L¹ stopping time of
:func:`controlnet.diagnostics.regularization.stopping_time` (the time after which ``θ ≡ 0``)
can be observed rather than approximated.
"""

from __future__ import annotations

import dataclasses

import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

import numpy as np

import controlnet as cn
from controlnet.costs import l1 as l1_norm
from controlnet.pytrees import pytree_dataclass

from .blocks import auto_block
from .trees import tree_norm

__all__ = ["ProximalGradient", "PGDState", "soft_threshold", "smooth_gradient"]


class PGDState(NamedTuple):
    controls: cn.Controls
    lr: jax.Array
    key: jax.Array


def soft_threshold(x, tau):
    """``S_τ(x) = sign(x) max(|x| − τ, 0)``: the proximal map of ``τ‖·‖₁``."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - tau, 0.0)


def _l1_part(problem, theta):
    """``h α₁ Σ_k ‖θ_k‖₁`` (0 without an L¹ term): ``J − J_s``."""
    if "l1" not in problem.terms:
        return 0.0
    return problem.h * problem.l1 * jnp.sum(jax.vmap(l1_norm)(theta))


def smooth_gradient(problem, controls, grad):
    """``∇J_s``: the gradient ``grad`` of ``J`` without its L¹ part ``h α₁ ∂‖θ‖₁``.

    The part removed is the derivative JAX itself took of ``‖θ‖₁`` (``sign θ``, but ``+1`` at
    ``θ = 0``, JAX's convention for ``|x|``), so that ``∇J_s`` is exact at the zeros too.
    """
    if "l1" not in problem.terms:
        return grad
    d = jax.grad(lambda th: _l1_part(problem, th))(controls.theta)
    return grad._replace(theta=jax.tree_util.tree_map(jnp.subtract, grad.theta, d))


def _finite_number(v):
    return not isinstance(v, bool) and isinstance(v, (int, float, np.number)) and math.isfinite(v)


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class ProximalGradient:
    """Proximal gradient descent (ISTA) with a backtracking step; module doc.

    The step ``η`` starts at ``lr``. Each iteration tries ``grow · η`` and halves it until the
    smooth part is below its quadratic model, ``J_s(x⁺) ≤ J_s(x) + ⟨∇J_s(x), x⁺ − x⟩ +
    ‖x⁺ − x‖²/(2η)`` (Beck & Teboulle's condition; then ``J(x⁺) ≤ J(x)``): one more forward
    pass per trial. ``grow = 1`` never lengthens it again. The step taken is logged as ``lr``.
    """

    lr: float = 1.0
    grow: float = 1.25
    name: ClassVar[str] = "pgd"

    def __post_init__(self):
        if not (_finite_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (_finite_number(self.grow) and self.grow >= 1):
            raise ValueError(f"grow must be a number >= 1, got {self.grow!r}")
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "grow", float(self.grow))

    def init(self, problem, controls, *, key):
        return PGDState(controls, jnp.asarray(self.lr, jnp.result_type(float)), key)

    def step(self, problem, state):
        c = state.controls
        J, g, zN = cn.value_and_gradient(problem, c, block=auto_block(problem))
        gs = smooth_gradient(problem, c, g)
        hl1 = problem.h * problem.l1 if "l1" in problem.terms else 0.0
        Js = J - _l1_part(problem, c.theta)

        def proposal(eta):
            theta = jax.tree_util.tree_map(lambda th, d: soft_threshold(th - eta * d, eta * hl1), c.theta, gs.theta)
            w = jax.tree_util.tree_map(lambda v, d: v - eta * d, c.w, gs.w)
            lift = jax.tree_util.tree_map(lambda v, d: v - eta * d, c.lift, gs.lift)
            return cn.Controls(theta, w, lift)

        def too_long(carry):
            eta, tries = carry
            new = proposal(eta)
            d = jax.tree_util.tree_map(jnp.subtract, new, c)
            model = Js + _dot(gs, d) + _dot(d, d) / (2 * eta)
            # A tie within rounding is accepted; a non-finite J_s(x⁺) is not.
            Js_new = cn.objective_value(problem, new) - _l1_part(problem, new.theta)
            fine = Js_new <= model + 64 * jnp.finfo(Js.dtype).eps * (1 + jnp.abs(Js))
            return ~fine & (tries < 60)

        eta0 = (state.lr * self.grow).astype(state.lr.dtype)
        eta, _ = jax.lax.while_loop(too_long, lambda ct: (0.5 * ct[0], ct[1] + 1), (eta0, 0))
        new = proposal(eta)
        mapping = jax.tree_util.tree_map(lambda a, b: (a - b) / eta, c, new)
        info = {"loss": J, "accuracy": problem.loss.accuracy(problem.readout(zN, c.w), problem.y),
                "grad_norm": tree_norm(mapping), "lr": eta}
        return PGDState(new, eta, state.key), info
