"""Gradient descent: the gradient of ``J`` fed to an optax optimizer.

``∇J`` comes from the adjoint module (``gradient="adjoint"``, default) or from ``jax.grad``
through the forward pass (``gradient="autodiff"``); both agree to round-off. With
``batch_size`` set, each step draws a minibatch without replacement and follows the gradient of
the problem restricted to it (the reported ``loss`` is then the minibatch loss).

The optimizer is a strategy object (:class:`~solvers.optimizers.Adam`,
:class:`~solvers.optimizers.SGD`) that builds its optax transformation from the learning rate,
on its schedule (:mod:`solvers.schedules`), inside ``init`` and ``step``. The learning rate and
the optimizer's and schedule's numbers are pytree leaves, so a sweep over them compiles one
program::

    GradientDescent(Adam(), lr=1e-2)        # the default
    GradientDescent(SGD(momentum=0.9), lr=0.1)
    GradientDescent(Adam(schedule=Cosine(steps=1500, floor=0.01)), lr=5e-3)
    GradientDescent(optax.adam(schedule))   # any optax transformation, kept as it is
"""

from __future__ import annotations

import dataclasses

from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np
import optax

import controlnet as cn
from controlnet.pytrees import pytree_dataclass, static_field

from .blocks import auto_block
from .layer_parallel import LayerParallel
from .minibatch import minibatch
from .optimizers import SGD, Adam, Optimizer, Transformation, as_optimizer
from .options import checked_number
from .trees import tree_norm

__all__ = ["GradientDescent", "GDState", "Optimizer", "Adam", "SGD", "Transformation"]


class GDState(NamedTuple):
    controls: cn.Controls
    opt_state: Any
    key: jax.Array


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class GradientDescent:
    """Gradient descent with an optimizer (Adam with learning rate ``lr = 1e-2`` by default).

    Args:
        optimizer: :class:`~solvers.optimizers.Adam` (default), :class:`~solvers.optimizers.SGD`
            (either on a schedule, :mod:`solvers.schedules`), or any ``optax.GradientTransformation``
            (then wrapped in :class:`~solvers.optimizers.Transformation`, and ``lr`` is not taken:
            it has its own).
        batch_size: samples per minibatch (``None``: the whole data set).
        gradient: ``"adjoint"`` (default), ``"autodiff"``, or ``"layer_parallel"`` / a
            :class:`~solvers.layer_parallel.LayerParallel` (states and co-states by MGRIT).
        checkpoint_block: ``"auto"`` (default) keeps every state of the forward pass unless
            they would take more than :data:`solvers.blocks.AUTO_CHECKPOINT_BYTES`, then
            checkpoints blocks of about ``√N`` layers (:func:`solvers.blocks.auto_block`); an
            integer ``B`` (a divisor of ``N``) always checkpoints blocks of ``B`` layers; ``None``
            never does.
        lr: the learning rate of a named optimizer (a leaf: changing it does not recompile);
            default 1e-2, or ``None`` when the optimizer carries its own (``Adam(lr=...)``).
    """

    optimizer: Optimizer | optax.GradientTransformation | None = None
    batch_size: int | None = static_field(default=None)
    gradient: str | LayerParallel = static_field(default="adjoint")
    checkpoint_block: int | str | None = static_field(default="auto")
    lr: float | None = None
    name: ClassVar[str] = "gd"

    def __post_init__(self):
        opt = Adam() if self.optimizer is None else as_optimizer(self.optimizer)
        object.__setattr__(self, "optimizer", opt)
        if isinstance(opt, Transformation):
            if self.lr is not None:
                raise ValueError("lr applies to a named optimizer (Adam(), SGD()); an optax "
                                 "transformation carries its own learning rate: pass one or the other")
        elif opt.lr is not None:
            if self.lr is not None:
                raise ValueError(f"lr is given twice, to GradientDescent ({self.lr!r}) and to its optimizer "
                                 f"({opt.lr!r}); pass it to one of them")
        else:
            lr = 1e-2 if self.lr is None else self.lr
            object.__setattr__(self, "lr", checked_number("GradientDescent", "lr", lr))
        if self.gradient == "layer_parallel":
            object.__setattr__(self, "gradient", LayerParallel())
        if not isinstance(self.gradient, LayerParallel) and self.gradient not in ("adjoint", "autodiff"):
            raise ValueError(f"gradient must be 'adjoint', 'autodiff', 'layer_parallel' or a LayerParallel(...), "
                             f"got {self.gradient!r}")
        bs = self.batch_size
        if bs is not None and (not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {bs!r}")
        object.__setattr__(self, "batch_size", None if bs is None else int(bs))
        cb = self.checkpoint_block
        if not (cb is None or cb == "auto" or (isinstance(cb, int) and not isinstance(cb, bool) and cb >= 1)):
            raise ValueError(f"checkpoint_block must be 'auto', None or a positive integer (a divisor "
                             f"of the number of layers), got {cb!r}")
        if isinstance(cb, int) and self.gradient != "adjoint":
            raise ValueError("checkpoint_block needs gradient='adjoint' (the checkpointed adjoint pass)")

    def transformation(self) -> optax.GradientTransformation:
        """The optax transformation this solver applies (built from ``lr``, possibly traced)."""
        return self.optimizer.build(self.lr)

    def init(self, problem, controls, *, key):
        return GDState(controls, self.transformation().init(controls), key)

    def value_and_grad(self, problem, controls):
        """``(J, ∇J, z_N)`` by the chosen gradient method.

        The adjoint path keeps no co-state trajectory; with a checkpoint block ``B`` it keeps only
        every ``B``-th state too (:func:`controlnet.value_and_gradient`), for one extra forward
        pass, which ``checkpoint_block="auto"`` chooses by itself when the states would not fit.
        """
        if isinstance(self.gradient, LayerParallel):
            return self.gradient.value_and_grad(problem, controls)
        if self.gradient == "adjoint":
            block = auto_block(problem) if self.checkpoint_block == "auto" else self.checkpoint_block
            return cn.value_and_gradient(problem, controls, block=block)
        (J, zs), g = jax.value_and_grad(cn.objective, argnums=1, has_aux=True)(problem, controls)
        return J, g, zs[-1]

    def step(self, problem, state):
        key, batch = state.key, problem
        if self.batch_size is not None:  # the key is spent only on minibatches
            key, sub = jax.random.split(state.key)
            batch = minibatch(problem, sub, self.batch_size)
        J, g, zN = self.value_and_grad(batch, state.controls)
        updates, opt_state = self.transformation().update(g, state.opt_state, state.controls)
        controls = optax.apply_updates(state.controls, updates)
        accuracy = batch.loss.accuracy(batch.readout(zN, state.controls.w), batch.y)
        info = {"loss": J, "accuracy": accuracy, "grad_norm": tree_norm(g)}
        return GDState(controls, opt_state, key), info
