"""Minibatches: a control problem restricted to some of its samples."""

from __future__ import annotations

import jax

__all__ = ["minibatch"]


def minibatch(problem, key, batch_size):
    """``problem`` restricted to ``batch_size`` samples drawn without replacement (the whole
    problem when ``batch_size`` is ``None`` or at least the number of samples)."""
    if batch_size is None or batch_size >= problem.S:
        return problem
    idx = jax.random.choice(key, problem.S, (batch_size,), replace=False)
    return problem.replace_data(problem.x[idx], problem.y[idx])
