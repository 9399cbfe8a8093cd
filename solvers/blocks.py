"""Block sizing for the checkpointed adjoint pass: when to checkpoint, and how many layers a block holds.

The fast gradient (:func:`controlnet.value_and_gradient`) keeps the forward pass's states,
``N S d`` numbers (``d`` the size of one sample's state, ``C L`` for a signal), and re-linearizes
each layer from its state in the backward pass. With blocks of ``B`` layers it keeps only every
``B``-th state and recomputes the others block by block, ``O((N/B + B) S d)`` numbers for one
more forward pass; ``B ≈ √N`` minimizes that. Any solver that takes the adjoint gradient uses
:func:`auto_block` to choose.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

__all__ = ["auto_block", "AUTO_CHECKPOINT_BYTES"]

#: ``checkpoint_block="auto"`` checkpoints once the gradient's kept states would pass this.
AUTO_CHECKPOINT_BYTES = 512 * 2**20


def auto_block(problem, budget: int | None = None):
    """The block of ``checkpoint_block="auto"`` for ``problem``.

    Within ``budget`` bytes for the ``N S d`` kept states: ``None`` (no checkpointing: the extra
    forward pass would buy nothing). Beyond: the divisor ``B`` of ``N`` nearest ``√N``, which
    keeps ``O((N/B + B) S d)``. ``budget`` defaults to :data:`AUTO_CHECKPOINT_BYTES` (read at
    call time, so it can be changed for a process).
    """
    budget = AUTO_CHECKPOINT_BYTES if budget is None else budget
    kept = problem.N * problem.S * math.prod(problem.state_shape) * jnp.dtype(problem.x.dtype).itemsize
    if kept <= budget:
        return None
    N = problem.N
    return min((b for b in range(1, N + 1) if N % b == 0), key=lambda b: abs(b * b - N))
