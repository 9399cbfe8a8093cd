"""Adversarial training: PGD adversarial training and YOPO-m-n, the maximum principle's shortcut.

Both solve the min-max problem (Madry et al., "Towards deep learning models resistant to
adversarial attacks", ICLR 2018) over the ball ``B = {η : ‖η_i‖ ≤ ε}`` (ℓ∞ or ℓ2, per sample)::

    min_θ  E_batch  max_{η ∈ B}  J(θ; x + η)

**PGD adversarial training** (:class:`PGDTraining`, ``"pgd_at"``). Per minibatch, from a random
start ``η⁰ ∈ B``, ``K = steps`` projected ascent steps on the loss, each through one forward and
one backward pass of the whole network (the input gradient is the co-state ``p_0`` pulled back
through the lift, :func:`controlnet.diagnostics.robustness.input_gradient`)::

    η^{s+1} = Π_B(η^s + α·dir(∇_x ℓ(x + η^s))),   dir(g) = sign(g) (ℓ∞) or g/‖g‖ (ℓ2),

then one optimizer step on ``∇_θ J(θ; x + η^K)``: ``K + 1`` full passes per minibatch.

**YOPO-m-n** (:class:`YOPO`, ``"yopo"``; Zhang, Zhang, Lu, Zhu & Dong, "You only propagate once:
accelerating adversarial training via maximal principle", NeurIPS 2019). Write the network as a
*first layer* ``z_k = f(x; φ, θ_0..θ_{k−1})`` (the lift ``λ1`` followed by the first
``k = first_steps`` ODE steps) and the rest. The adversary enters only the first layer, so by
Pontryagin's principle for the game its optimality condition involves only the first layer's
Hamiltonian ``H_f(x + η, p_k) = ⟨p_k, f(x + η)⟩``, with the co-state ``p_k = −∇_{z_k} J`` at the
first layer's output::

    ∇_η J(x + η) = −J_f(x + η)ᵀ p_k       (exact when p_k is the co-state at x + η).

YOPO *freezes* ``p_k``: one full forward and backward pass at ``x + η^{j,0}`` gives ``p_k^j`` (and
the gradient of every other parameter), then ``n`` adversary steps use only the first layer::

    η^{j,s+1} = Π_B(η^{j,s} + α·dir(−J_f(x + η^{j,s})ᵀ p_k^j)),   s = 0..n−1,   η^{j+1,0} = η^{j,n}.

This is repeated for ``j = 0..m−1`` (``m`` full passes), and the weight gradient is accumulated as
the paper's code accumulates it: the parameters after the first layer (``θ_k..θ_{N−1}``, the
read-out) take the full pass's gradient at ``x + η^{j,0}``; the first layer's parameters ``ψ``
(the learned lift, ``θ_0..θ_{k−1}``) take the frozen-co-state gradient at the *updated* input,
``−∂_ψ⟨p_k^j, f(x + η^{j,n}; ψ)⟩`` plus their regularizers' gradient; the update uses the mean
over the ``m`` passes (the paper sums and divides its learning rate by ``m``: the same step).
Cost: ``m`` full passes and ``m(n+1)`` first-layer passes, against PGD-AT's ``K + 1`` full ones.

With ``frozen=False`` (a reference, not a speed-up) the co-state is recomputed by a full pass
before every adversary step and the whole gradient is taken at ``x + η^{j,n}``: YOPO-1-n is then
PGD-AT with ``n`` steps, to round-off (tested).

Both solvers train with a named optimizer (:class:`~solvers.optimizers.Adam`,
:class:`~solvers.optimizers.SGD`) at rate ``lr`` (a leaf), on its schedule (constant by default;
``Adam(schedule=Cosine(steps))`` decays it, :mod:`solvers.schedules`), on minibatches of
``batch_size``. ``info["loss"]`` is the loss of the last full pass (PGD-AT: on the attacked
batch; YOPO: at ``x + η^{m−1,0}``, or ``η^{m−1,n}`` unfrozen), ``accuracy`` its batch accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

import controlnet as cn
from controlnet.diagnostics.robustness import ball_direction, ball_projection, input_gradient
from controlnet.problem import objective_from_parts
from controlnet.pytrees import pytree_dataclass, static_field

from .gd import Adam, GDState, Optimizer, Transformation
from .minibatch import minibatch
from .trees import tree_norm

__all__ = ["PGDTraining", "YOPO", "ball_direction", "ball_projection", "random_start", "first_layer",
           "adversary_gradient", "pgd_attack"]

NORMS = ("inf", "2")
_tree_map = jax.tree_util.tree_map


# -- the ball ---------------------------------------------------------------------------------------
def random_start(key, x, eps, norm):
    """A random ``η ∈ B`` shaped like ``x``: uniform in the ℓ∞ box, or uniform in the ℓ2 ball
    (a Gaussian direction, radius ``ε u^{1/n}`` for ``n`` entries per sample)."""
    if norm == "inf":
        return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
    k_dir, k_rad = jax.random.split(key)
    n = math.prod(x.shape[1:])
    u = jax.random.uniform(k_rad, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
    return eps * u ** (1.0 / n) * ball_direction(jax.random.normal(k_dir, x.shape, x.dtype), "2")


# -- the attacks ------------------------------------------------------------------------------------
def pgd_attack(problem, controls, x, y, eta, *, eps, step, steps, norm):
    """``x + η^K`` after ``steps`` projected ascent steps from ``x + η`` (module doc), each
    through the input co-state (one forward and one backward pass of the whole network)."""

    def body(_, xa):
        g = input_gradient(problem, controls, xa, y)
        return x + ball_projection(xa + step * ball_direction(g, norm) - x, eps, norm)

    return jax.lax.fori_loop(0, steps, body, x + eta)


def _first_theta(theta, k):
    return _tree_map(lambda a: a[:k], theta)


def first_layer(problem, x, lift, theta_first):
    """``z_k = f(x; φ, θ_0..θ_{k−1})``: the lift (parameters ``lift``, ``None`` for zero padding)
    followed by the ODE steps of ``theta_first`` (leading axis ``k``, possibly 0)."""
    z0 = problem.replace_data(x, problem.y).z0(lift)
    if jax.tree_util.tree_leaves(theta_first)[0].shape[0] == 0:
        return z0
    return cn.final_state(problem, theta_first, z0)


def adversary_gradient(problem, controls, x, p, first_steps):
    """``∇_x⟨p, f(x)⟩ = J_f(x)ᵀ p`` through the first layer only (module doc); with the true
    co-state ``p = p_k`` at ``x`` it is ``−∇_x J``, i.e. ``−(1/S)∇_x ℓ_i`` per sample."""
    theta_first = _first_theta(controls.theta, first_steps)
    return jax.vjp(lambda v: first_layer(problem, v, controls.lift, theta_first), x)[1](p)[0]


# -- options shared by both solvers -----------------------------------------------------------------
def _number(owner, name, v, *, low=0.0):
    """``v`` as a float, refused unless a finite real ``> low``; a traced value passes."""
    if isinstance(v, jax.core.Tracer):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)) \
            or float(v) <= low:
        raise ValueError(f"{owner} {name} must be a finite number > {low}, got {v!r}")
    return float(v)


def _count(owner, name, v, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{owner} {name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _check_common(solver, owner):
    """Check and normalize the fields both solvers have (module doc), before any compile."""
    set_ = object.__setattr__
    set_(solver, "optimizer", Adam() if solver.optimizer is None else solver.optimizer)
    if not isinstance(solver.optimizer, Optimizer) or isinstance(solver.optimizer, Transformation):
        raise TypeError(f"{owner} optimizer must be a named optimizer, Adam(...) or SGD(...) (its rate is lr), "
                        f"got {type(solver.optimizer).__name__}")
    if solver.optimizer.lr is not None:
        raise ValueError(f"{owner} takes its learning rate as lr; give the optimizer none "
                         f"({type(solver.optimizer).__name__}(lr=None))")
    if solver.norm not in NORMS:
        raise ValueError(f"{owner} norm must be 'inf' or '2' (the attack ball), got {solver.norm!r}")
    set_(solver, "eps", _number(owner, "eps (the ball's radius)", solver.eps))
    if solver.alpha is not None:
        set_(solver, "alpha", _number(owner, "alpha (the attack's step size)", solver.alpha))
    set_(solver, "lr", _number(owner, "lr", solver.lr))
    for name in ("random_start",) + (("frozen",) if hasattr(solver, "frozen") else ()):
        if not isinstance(getattr(solver, name), bool):
            raise ValueError(f"{owner} {name} must be True or False, got {getattr(solver, name)!r}")
    if solver.batch_size is not None:
        set_(solver, "batch_size", _count(owner, "batch_size (or None)", solver.batch_size, 1))


def _transformation(solver) -> optax.GradientTransformation:
    """The optimizer at rate ``lr`` on its own schedule."""
    return solver.optimizer.build(solver.lr)


def _start(solver, key, x):
    return random_start(key, x, solver.eps, solver.norm) if solver.random_start else jnp.zeros_like(x)


def _batch(solver, problem, key):
    """``(next key, minibatch, key of the random start)``."""
    key, k_batch, k_start = jax.random.split(key, 3)
    return key, minibatch(problem, k_batch, solver.batch_size), k_start


def _update(solver, state, g, key, J, accuracy):
    updates, opt_state = _transformation(solver).update(g, state.opt_state, state.controls)
    controls = optax.apply_updates(state.controls, updates)
    return GDState(controls, opt_state, key), {"loss": J, "accuracy": accuracy, "grad_norm": tree_norm(g)}


def _accuracy(batch, zN, w):
    return batch.loss.accuracy(batch.readout(zN, w), batch.y)


# -- the solvers ------------------------------------------------------------------------------------
@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class PGDTraining:
    """PGD adversarial training (module doc): ``steps`` full attack steps per minibatch, then one
    optimizer step on the attacked minibatch.

    Args:
        eps: the ball's radius ``ε`` (a leaf). norm: ``"inf"`` (default) or ``"2"``.
        steps: attack steps ``K`` per minibatch. alpha: their size ``α`` (a leaf; default
            ``2.5 ε / K``, Madry et al.'s rule). random_start: start from a uniform ``η⁰ ∈ B``.
        optimizer, lr: the optimizer (:class:`~solvers.optimizers.Adam` by default, with its
            schedule, e.g. ``Adam(schedule=Cosine(1500))``) at rate ``lr``.
        batch_size: samples per minibatch (``None``: the whole data set).
    """

    eps: float = 0.1
    norm: str = static_field(default="inf")
    steps: int = static_field(default=7)
    alpha: float | None = None
    random_start: bool = static_field(default=True)
    optimizer: Optimizer | None = None
    lr: float = 1e-2
    batch_size: int | None = static_field(default=None)
    name: ClassVar[str] = "pgd_at"

    def __post_init__(self):
        _check_common(self, "PGDTraining")
        object.__setattr__(self, "steps", _count("PGDTraining", "steps", self.steps, 1))

    def init(self, problem, controls, *, key):
        return GDState(controls, _transformation(self).init(controls), key)

    def step(self, problem, state):
        key, batch, k_start = _batch(self, problem, state.key)
        x, y, c = batch.x, batch.y, state.controls
        alpha = 2.5 * self.eps / self.steps if self.alpha is None else self.alpha
        xa = pgd_attack(batch, c, x, y, _start(self, k_start, x), eps=self.eps, step=alpha, steps=self.steps,
                        norm=self.norm)
        attacked = batch.replace_data(jax.lax.stop_gradient(xa), y)
        J, g, zN = cn.value_and_gradient(attacked, c)
        return _update(self, state, g, key, J, _accuracy(attacked, zN, c.w))


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class YOPO:
    """YOPO-m-n (module doc): ``m`` full passes per minibatch, each followed by ``n`` adversary
    steps through the first layer with its co-state ``p_k`` frozen; the weight gradient
    accumulated over the ``m`` passes as in the paper.

    Args:
        eps, norm, alpha, random_start: the ball and the adversary's steps as in
            :class:`PGDTraining` (``alpha`` default ``2.5 ε / (m n)``).
        m: full forward and backward passes per minibatch. n: adversary steps per pass.
        first_steps: ``k``, the ODE steps in the first layer after the lift (default 1; 0 makes
            the lift alone the first layer, linear for a learned lift).
        frozen: freeze ``p_k`` (YOPO; default) or recompute it before every adversary step (the
            reference that equals PGD-AT for ``m = 1``).
        optimizer, lr, batch_size: as in :class:`PGDTraining`.
    """

    eps: float = 0.1
    norm: str = static_field(default="inf")
    m: int = static_field(default=5)
    n: int = static_field(default=3)
    alpha: float | None = None
    random_start: bool = static_field(default=True)
    first_steps: int = static_field(default=1)
    frozen: bool = static_field(default=True)
    optimizer: Optimizer | None = None
    lr: float = 1e-2
    batch_size: int | None = static_field(default=None)
    name: ClassVar[str] = "yopo"

    def __post_init__(self):
        _check_common(self, "YOPO")
        for name, low in (("m", 1), ("n", 1), ("first_steps", 0)):
            object.__setattr__(self, name, _count("YOPO", name, getattr(self, name), low))

    def init(self, problem, controls, *, key):
        if self.first_steps > problem.N:
            raise ValueError(f"YOPO first_steps={self.first_steps} exceeds the problem's {problem.N} layers; "
                             f"pass first_steps between 0 and {problem.N}")
        if "tracking" in problem.terms:
            raise ValueError("YOPO freezes the co-state at the first layer's output, which a tracking cost on the "
                             "first layer's states would bypass: pass a problem with tracking=0, or use PGDTraining")
        return GDState(controls, _transformation(self).init(controls), key)

    def _with_first_gradient(self, batch, controls, g, xa, p, reg):
        """``g`` with the first layer's parameters' part replaced by ``−∂_ψ⟨p, f(xa; ψ)⟩ +
        ∇_ψ(regularizers)`` (``reg``: the regularizers' gradient, module doc)."""
        k = self.first_steps
        theta_first = _first_theta(controls.theta, k)
        _, vjp = jax.vjp(lambda lift, th: first_layer(batch, xa, lift, th), controls.lift, theta_first)
        lift_data, theta_data = vjp(p)
        theta = _tree_map(lambda a, d, r: a.at[:k].set(r[:k] - d), g.theta, theta_data, reg.theta)
        lift = None if controls.lift is None else _tree_map(lambda d, r: r - d, lift_data, reg.lift)
        return cn.Controls(theta, g.w, lift)

    def step(self, problem, state):
        """Long because the m passes, the n frozen adversary steps and the gradient accumulation
        are one recursion that reads best in one place (module doc)."""
        key, batch, k_start = _batch(self, problem, state.key)
        x, y, c, k = batch.x, batch.y, state.controls, self.first_steps
        alpha = 2.5 * self.eps / (self.m * self.n) if self.alpha is None else self.alpha
        reg = jax.grad(lambda cc: objective_from_parts(batch, cc, 0.0, 0.0))(c)

        def full(eta):  # one forward and backward pass of the whole network at x + η
            J, g, zs, ps = cn.gradient(batch.replace_data(x + eta, y), c)
            return J, g, ps[k], zs[-1]

        def advance(s, carry):  # one adversary step through the first layer
            eta, p = carry
            p = p if self.frozen else full(eta)[2]
            g = adversary_gradient(batch, c, x + eta, p, k)
            return ball_projection(eta + alpha * ball_direction(-g, self.norm), self.eps, self.norm), p

        def one_pass(carry, _):
            eta, g_sum = carry
            J, g, p, zN = full(eta)
            eta, p = jax.lax.fori_loop(0, self.n, advance, (eta, p))
            if not self.frozen:
                J, g, p, zN = full(eta)
            g = self._with_first_gradient(batch, c, g, x + eta, p, reg)
            return (eta, _tree_map(jnp.add, g_sum, g)), (J, _accuracy(batch, zN, c.w))

        zero = _tree_map(jnp.zeros_like, c)
        (_, g_sum), (Js, accs) = jax.lax.scan(one_pass, (_start(self, k_start, x), zero), None, length=self.m)
        g = _tree_map(lambda a: a / self.m, g_sum)
        return _update(self, state, g, key, Js[-1], accs[-1])
