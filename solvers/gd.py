"""Gradient descent: the gradient of ``J`` fed to any optax optimizer.

``∇J`` comes from the adjoint module (``gradient="adjoint"``, default) or from ``jax.grad``
through the forward pass (``gradient="autodiff"``); both agree to round-off. With
``batch_size`` set, each step draws a minibatch without replacement and follows the gradient of
the problem restricted to it (the reported ``loss`` is then the minibatch loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

import controlnet as cn

__all__ = ["GradientDescent", "GDState", "tree_norm", "minibatch"]


class GDState(NamedTuple):
    controls: cn.Controls
    opt_state: Any
    key: jax.Array


def tree_norm(tree):
    """Euclidean norm of all leaves of a pytree together."""
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(tree)))


def minibatch(problem, key, batch_size):
    """``problem`` restricted to ``batch_size`` samples drawn without replacement."""
    if batch_size is None or batch_size >= problem.S:
        return problem
    idx = jax.random.choice(key, problem.S, (batch_size,), replace=False)
    return problem.replace_data(problem.x[idx], problem.y[idx])


@dataclasses.dataclass(frozen=True)
class GradientDescent:
    """Gradient descent with an optax optimizer (Adam, learning rate 1e-2, by default)."""

    optimizer: Any = None
    batch_size: int | None = None
    gradient: str = "adjoint"
    checkpoint_block: int | None = None
    name: ClassVar[str] = "gd"

    def __post_init__(self):
        if self.optimizer is None:
            object.__setattr__(self, "optimizer", optax.adam(1e-2))
        if not isinstance(self.optimizer, optax.GradientTransformation):
            raise TypeError("optimizer must be an optax.GradientTransformation, e.g. optax.adam(1e-2)")
        if self.gradient not in ("adjoint", "autodiff"):
            raise ValueError(f"gradient must be 'adjoint' or 'autodiff', got {self.gradient!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {self.batch_size!r}")
        if self.checkpoint_block is not None and self.gradient != "adjoint":
            raise ValueError("checkpoint_block needs gradient='adjoint' (the checkpointed adjoint pass)")

    def init(self, problem, controls, *, key):
        return GDState(controls, self.optimizer.init(controls), key)

    def value_and_grad(self, problem, controls):
        """``(J, ∇J, z_N)`` by the chosen gradient method.

        The adjoint path keeps no co-state trajectory; with ``checkpoint_block=B`` it keeps only
        every ``B``-th state too (:func:`controlnet.value_and_gradient`), for one extra forward
        pass: the way to fit ``S = 1e5`` samples through ``N = 1000`` layers in 2 GB.
        """
        if self.gradient == "adjoint":
            return cn.value_and_gradient(problem, controls, block=self.checkpoint_block)
        (J, zs), g = jax.value_and_grad(cn.objective, argnums=1, has_aux=True)(problem, controls)
        return J, g, zs[-1]

    def step(self, problem, state):
        key, batch = state.key, problem
        if self.batch_size is not None:  # the key is spent only on minibatches
            key, sub = jax.random.split(state.key)
            batch = minibatch(problem, sub, self.batch_size)
        J, g, zN = self.value_and_grad(batch, state.controls)
        updates, opt_state = self.optimizer.update(g, state.opt_state, state.controls)
        controls = optax.apply_updates(state.controls, updates)
        accuracy = batch.loss.accuracy(cn.readout(zN, state.controls.w), batch.y)
        info = {"loss": J, "accuracy": accuracy, "grad_norm": tree_norm(g)}
        return GDState(controls, opt_state, key), info
