"""Arithmetic on whole pytrees that several solvers and the driver share."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["tree_norm", "joined"]


def joined(tree):
    """All leaves of ``tree`` as one flat vector (in their common dtype)."""
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def tree_norm(tree):
    """Euclidean norm of all leaves of a pytree together, ``‖vec(tree)‖₂``.

    One reduction over the leaves joined into one vector: XLA on the CPU runs a reduction per
    leaf as a separate kernel, a measurable share of a small problem's gradient step.
    """
    return jnp.linalg.norm(joined(tree))
