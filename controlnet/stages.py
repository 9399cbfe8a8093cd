"""Multi-stage networks: several ODE blocks joined by connective layers (Haber & Ruthotto 2017).

Block ``s = 0..n−1`` has its own field ``f_s``, integrator, channel count ``d_s``, resolution,
horizon ``T_s`` and layer count ``N_s`` (``h_s = T_s/N_s``); connective ``C_s``
(:class:`~controlnet.Connective`) joins block ``s−1`` to block ``s``::

    z^0_0 = λ1(x; φ),   z^s_0 = C_s(z^{s−1}_{N_{s−1}}; ψ_s),   z^s_{k+1} = Ψ^s_h(z^s_k, θ^s_k)

    J = Φ(z^{n−1}_N, w) + Σ_s [h_s Σ_k R_s(θ^s_k) + coupling_s(θ^s)] + (α_λ/2)‖φ‖² + (α_c/2) Σ_s ‖ψ_s‖²

The co-states run backward block by block: ``p^{n−1}_N = −∇_zΦ``, inside a block the recursion of
:mod:`controlnet.adjoint`, and across a connective its vjp, ``p^{s−1}_N = J_zC_sᵀ p^s_0``. So the
Hamiltonian identity ``∇_{θ^s_k} J = −∇_θ H^s_k(z^s_k, p^s_{k+1}, θ^s_k)`` (+ coupling) holds in
every block, with ``H^s_k`` block ``s``'s Hamiltonian (:mod:`controlnet.hamiltonian`); the input
layers are terminal-like parameters: ``∇_ψ_s J = −J_ψC_sᵀ p^s_0 + α_c ψ_s`` and the lift's
``∇_φ J = −J_φλ1ᵀ p^0_0 + α_λ φ``.

:class:`StagedProblem` holds each block as a :class:`~controlnet.ControlProblem` (its structure, step
and weights; its data a one-sample placeholder of the block's state shape, replaced by the block's
input states when it runs), so every single-block function (forward pass, co-state sweep,
Hamiltonian, stability diagnostics) applies to a block unchanged. Its controls are a
:class:`~controlnet.Controls` whose ``theta`` is the tuple of the blocks' ``θ^s`` and whose ``lift``
is the tuple of the blocks' input-layer parameters ``(φ, ψ_1, …, ψ_{n−1})`` (``φ`` is ``None`` for
zero padding). It answers :func:`controlnet.objective`, :func:`controlnet.metrics` and
:func:`controlnet.value_and_gradient`, so the gradient solvers run on it as they are.
No tracking cost (the running loss needs the read-out, which reads the last block only).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import adjoint
from . import costs as _costs
from .connectives import Connective
from .costs import Loss
from .diagnostics.stability import invertibility
from .diagnostics.turnpike import control_norms, flow_speed
from .dynamics import VectorField
from .integrators import Euler, Integrator
from .problem import ControlProblem, Controls, objective_from_parts
from .pytrees import pytree_dataclass, static_field
from .readout import init_readout
from .state import forward

__all__ = ["Block", "StagedProblem", "block_diagnostics"]

_tree_map = jax.tree_util.tree_map


class Block(NamedTuple):
    """One block of a :class:`StagedProblem`: field, ``N`` layers, ``width`` channels, horizon
    ``T``, integrator and the running-cost weights of :class:`~controlnet.ControlProblem`."""

    dynamics: VectorField
    N: int
    width: int
    T: float = 1.0
    integrator: Integrator = Euler()
    l2: float = 0.0
    l1: float = 0.0
    smoothness: float = 0.0


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class StagedProblem:
    """A multi-stage training problem (formulas in the module doc).

    Args:
        blocks: the :class:`Block` s, first to last.
        connectives: one :class:`~controlnet.Connective` between each two blocks (``len(blocks) − 1``).
        loss: the per-sample loss ``ℓ``.
        x, y: data and labels, as for :class:`~controlnet.ControlProblem`.
        lift: ``None`` (zero padding to the first block's width) or a :class:`~controlnet.ConvLift`.
        lift_l2, readout_l2: weights ``α_λ`` and ``α_w``, as for a ControlProblem.
        connective_l2: weight ``α_c`` on the connectives' parameters.
        pooling: the read-out of the last block's states, ``"mean"`` or ``"flatten"``.

    Attributes:
        stages: the blocks as ControlProblems on one-sample placeholders (module doc).
    """

    blocks: dataclasses.InitVar[Any]
    connectives: tuple = static_field()
    loss: Loss = static_field()
    x: Any
    y: Any
    lift: Any = static_field(default=None)
    lift_l2: Any = 1e-3
    readout_l2: Any = 1e-3
    connective_l2: Any = 1e-3
    pooling: str = static_field(default="mean")
    stages: tuple = dataclasses.field(init=False, default=())

    def __post_init__(self, blocks):
        blocks, connectives = _checked_layout(blocks, self.connectives)
        set_ = object.__setattr__
        set_(self, "connectives", connectives)
        first = _stage(blocks[0], self.loss, self.x, self.y, self.lift, self.lift_l2, self.readout_l2, self.pooling)
        set_(self, "x", first.x)
        set_(self, "y", first.y)
        stages, space = [first.replace_data(first.x[:1], first.y[:1])], tuple(first.x.shape[2:])
        for b, prev, c in zip(blocks[1:], blocks, connectives):
            space = c.out_space(space)
            z = np.zeros((1, b.width) + space)
            stages.append(_stage(b, self.loss, z, first.y[:1], None, 0.0, self.readout_l2, self.pooling))
        set_(self, "stages", tuple(stages))
        c = float(self.connective_l2)
        if not (math.isfinite(c) and c >= 0):
            raise ValueError(f"weight connective_l2 must be a finite number >= 0, got {self.connective_l2!r}")
        set_(self, "connective_l2", jnp.asarray(c))

    # -- what the solvers and the driver read ---------------------------------------------------
    @property
    def S(self) -> int:
        """Number of samples."""
        return self.x.shape[0]

    @property
    def N(self) -> int:
        """Layers in all blocks together."""
        return sum(st.N for st in self.stages)

    @property
    def width(self) -> int:
        """The first block's channel count."""
        return self.stages[0].width

    @property
    def T(self):
        """The total horizon ``Σ_s T_s``."""
        return sum(st.T for st in self.stages)

    @property
    def state_shape(self) -> tuple:
        """The largest block's state shape (what checkpointing sizes against)."""
        return max((st.state_shape for st in self.stages), key=math.prod)

    def replace_data(self, x, y) -> "StagedProblem":
        """The same problem on other data, without validation (safe inside ``jit``)."""
        new = copy.copy(self)
        object.__setattr__(new, "x", x)
        object.__setattr__(new, "y", y)
        return new

    def check_inputs(self, x, y=None, *, what: str = "test") -> None:
        """As :meth:`ControlProblem.check_inputs`, against the first block's data."""
        self.stages[0].replace_data(self.x, self.y).check_inputs(x, y, what=what)

    def with_data(self, x, y) -> "StagedProblem":
        """The same problem on another split of its data, checked."""
        self.check_inputs(x, y, what="the new")
        return self.replace_data(jnp.asarray(np.asarray(x), self.x.dtype), jnp.asarray(np.asarray(y), self.y.dtype))

    def z0(self, lift=None):
        """The first block's initial states ``λ1(x; φ)``; ``lift`` is ``controls.lift`` (the whole
        tuple) or ``φ`` alone."""
        phi = lift[0] if isinstance(lift, tuple) else lift
        return self.stages[0].replace_data(self.x, self.y).z0(phi)

    def readout(self, z, w):
        """``λ2(z; w)`` of the last block's states."""
        return self.stages[-1].readout(z, w)

    def terminal(self, z, w):
        """``Φ(z, w)`` at the last block's final states."""
        return self.stages[-1].replace_data(z, self.y).terminal(z, w)

    def init_controls(self, key, scale: float = 1.0) -> Controls:
        """Random controls: each block's layers from its field's ``init``, the lift, the
        connectives and the read-out."""
        keys = jax.random.split(key, 2 * len(self.stages) + 1)
        theta = tuple(jax.vmap(lambda k, st=st: st.dynamics.init(k, st.width, scale))(jax.random.split(kk, st.N))
                      for st, kk in zip(self.stages, keys))
        last = self.stages[-1]
        w = init_readout(keys[-1], last.readout_width, self.loss.n_out)
        first = self.stages[0]
        phi = None if self.lift is None else self.lift.init(keys[len(self.stages)], self.x.shape[1:], first.width)
        psi = tuple(c.init(kk, a.width, b.width, len(b.state_shape) - 1)
                    for c, a, b, kk in zip(self.connectives, self.stages, self.stages[1:], keys[len(self.stages) + 1:]))
        return Controls(theta, w, (phi,) + psi)

    # -- the objective ------------------------------------------------------------------------
    def forward(self, controls):
        """The states of every block: a tuple of ``(N_s+1, S, *shape_s)`` stacks."""
        z, out = self.z0(controls.lift), []
        for s, st in enumerate(self.stages):
            if s > 0:
                z = self.connectives[s - 1](out[-1][-1], controls.lift[s])
            out.append(forward(st, controls.theta[s], z))
        return tuple(out)

    def regularization(self, controls):
        """Every term of ``J`` but ``Φ``: the blocks' running costs and couplings, the lift's and
        the connectives' weight decay."""
        total = 0.0
        for s, st in enumerate(self.stages):
            total = total + objective_from_parts(st, Controls(controls.theta[s], None, controls.lift[0] if s == 0 else None),
                                                 0.0, 0.0)
        if controls.lift[1:]:
            total = total + self.connective_l2 * _costs.l2(controls.lift[1:])
        return total

    def objective(self, controls):
        """``(J, states of every block)``."""
        zs = self.forward(controls)
        return self.terminal(zs[-1][-1], controls.w) + self.regularization(controls), zs

    def metrics(self, controls) -> dict:
        """Loss ``J``, the data loss and the accuracy, as :func:`controlnet.metrics`."""
        J, zs = self.objective(controls)
        out = self.readout(zs[-1][-1], controls.w)
        return {"loss": J, "data_loss": jnp.mean(self.loss(out, self.y)), "accuracy": self.loss.accuracy(out, self.y)}

    # -- the adjoint --------------------------------------------------------------------------
    def value_and_gradient(self, controls, *, block=None):
        """``(J, ∇J, z_N)`` by the co-states (module doc), no co-state trajectory kept; ``block``
        checkpoints each block as :func:`controlnet.value_and_gradient` does (it must divide
        every block's ``N``)."""
        for st in self.stages:
            if block is not None and st.N % block:
                raise ValueError(f"checkpoint block {block} does not divide a block's {st.N} layers; pass a "
                                 f"common divisor of {[b.N for b in self.stages]} or None")
        z, ends, pulls = self.z0(controls.lift), [], []
        for s, st in enumerate(self.stages):
            if s > 0:
                z = self.connectives[s - 1](z, controls.lift[s])
            z, pull = adjoint.pullback(st, controls.theta[s], z, block=block)
            ends.append(z)
            pulls.append(pull)
        phi, (dz, dw) = jax.value_and_grad(self.terminal, argnums=(0, 1))(z, controls.w)
        g_theta, g_lift, _ = self._backward(controls, ends, lambda s, p: pulls[s](p), -dz)
        J = phi + self.regularization(controls)
        return J, self._assemble(controls, g_theta, g_lift, dw), z

    def gradient(self, controls):
        """``(J, ∇J, zs, ps)`` with the states and co-states of every block (tuples of
        ``(N_s+1, S, *shape_s)`` stacks), for diagnostics and the Hamiltonian of each block."""
        zs = self.forward(controls)
        zN, w = zs[-1][-1], controls.w
        phi, (dz, dw) = jax.value_and_grad(self.terminal, argnums=(0, 1))(zN, w)

        def pull(s, pN):
            ps, g, _ = adjoint.backward(self.stages[s], Controls(controls.theta[s], None), zs[s], pN=pN)
            return ps, g

        g_theta, g_lift, ps = self._backward(controls, [z[-1] for z in zs], pull, -dz)
        J = phi + self.regularization(controls)
        return J, self._assemble(controls, g_theta, g_lift, dw), zs, ps

    def _backward(self, controls, ends, pull, pN):
        """Blocks last to first: ``pull(s, p_N) -> (p_0 or all p_k, ∇_θH^s_k)``, then across the
        connective (its vjp) or the lift. Returns the ``∇_θH`` per block, the pulled-back
        ``J_ψC_sᵀ p^s_0`` (lift first) and what ``pull`` returned for the co-states."""
        n = len(self.stages)
        g_theta, g_lift, costates, p = [None] * n, [None] * n, [None] * n, pN
        for s in reversed(range(n)):
            costates[s], g_theta[s] = pull(s, p)
            p0 = costates[s] if costates[s].ndim == p.ndim else costates[s][0]
            if s > 0:
                _, vjp = jax.vjp(self.connectives[s - 1], ends[s - 1], controls.lift[s])
                p, g_lift[s] = vjp(p0)
            elif self.lift is not None:
                g_lift[0] = jax.vjp(self.z0, controls.lift[0])[1](p0)[0]
        return g_theta, g_lift, tuple(costates)

    def _assemble(self, controls, g_theta, g_lift, dphi_dw):
        """``∇J`` from the Hamiltonian gradients and the pulled-back input layers (module doc)."""
        theta = tuple(_tree_map(lambda a, b: b - a, g, jax.grad(st.coupling)(th)) if "smoothness" in st.terms
                      else _tree_map(jnp.negative, g)
                      for st, g, th in zip(self.stages, g_theta, controls.theta))
        lift = [None if g_lift[0] is None else
                _tree_map(lambda a, b: b - a, g_lift[0], jax.grad(self.stages[0].lift_cost)(controls.lift[0]))]
        lift += [_tree_map(lambda a, q: self.connective_l2 * q - a, g, q) for g, q in zip(g_lift[1:], controls.lift[1:])]
        return Controls(theta, dphi_dw, tuple(lift))

    # -- the blocks one by one ----------------------------------------------------------------
    def block_problems(self, controls):
        """Each block as a single-block problem on its own input states: a tuple of
        ``(ControlProblem, θ^s, states (N_s+1, S, *shape_s))``; the last one's terminal cost is
        this problem's ``Φ``, so every single-block function applies to it."""
        zs = self.forward(controls)
        return tuple((st.replace_data(z[0], self.y), th, z) for st, th, z in zip(self.stages, controls.theta, zs))

    def describe(self) -> dict:
        """A JSON-able description: each block's, the connectives and the weights."""
        blocks = []
        for st in self.stages:
            d = st.describe()
            blocks.append({k: d[k] for k in ("dynamics", "integrator", "N", "width", "state_shape", "T", "l2", "l1",
                                               "smoothness")})
        return {"blocks": blocks, "connectives": [repr(c) for c in self.connectives], "loss": repr(self.loss),
                "lift": "zero padding" if self.lift is None else repr(self.lift), "pooling": self.pooling,
                "samples": int(self.S), "N": self.N, "T": float(self.T),
                **{n: float(str(np.asarray(getattr(self, n))[()])) for n in ("lift_l2", "readout_l2", "connective_l2")}}


def block_diagnostics(problem: StagedProblem, controls) -> tuple:
    """Per block: the control norms ``‖θ^s_k‖`` and flow speeds ``‖z^s_{k+1} − z^s_k‖/h_s`` (the
    turnpike's profile) and the stability numbers of :func:`controlnet.diagnostics.invertibility`
    (``h_s·Lip`` per layer, from the data and, where the field has one, the weight bound)."""
    out = []
    for st, th, zs in problem.block_problems(controls):
        out.append({"control_norms": control_norms(th), "flow_speed": flow_speed(zs, st.h),
                    **invertibility(st, th, zs)})
    return tuple(out)


def _stage(b: Block, loss, x, y, lift, lift_l2, readout_l2, pooling) -> ControlProblem:
    return ControlProblem(dynamics=b.dynamics, integrator=b.integrator, N=b.N, width=b.width, loss=loss, x=x, y=y,
                          T=b.T, l2=b.l2, l1=b.l1, smoothness=b.smoothness, readout_l2=readout_l2, lift=lift,
                          lift_l2=lift_l2, pooling=pooling)


def _checked_layout(blocks, connectives):
    """``(blocks, connectives)`` as tuples, refused unless Blocks with one Connective between each two."""
    blocks = tuple(blocks) if isinstance(blocks, (tuple, list)) else blocks
    if not isinstance(blocks, tuple) or not blocks or not all(isinstance(b, Block) for b in blocks):
        raise TypeError(f"blocks must be a non-empty tuple of controlnet.Block, got {blocks!r}")
    connectives = tuple(connectives) if isinstance(connectives, (tuple, list)) else connectives
    if not isinstance(connectives, tuple) or not all(isinstance(c, Connective) for c in connectives):
        raise TypeError(f"connectives must be a tuple of controlnet.Connective, got {connectives!r}")
    if len(connectives) != len(blocks) - 1:
        raise ValueError(f"{len(blocks)} blocks need {len(blocks) - 1} connectives (one between each two), "
                         f"got {len(connectives)}")
    return blocks, connectives
