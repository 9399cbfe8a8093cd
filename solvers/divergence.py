"""Divergence by trend: a loss that stays far above its best stops a solve.

A non-finite number stops a solve at once (:mod:`solvers.driver`). A run can also diverge with
every number finite: a learning rate far too large sends the loss to thousands of times its
start and keeps it there. :class:`DivergenceWatch` sees the losses one by one, in order, and
reports divergence once ``patience`` consecutive losses were all

    J_j > factor · min_{i ≤ j} J_i     and     J_j > J_0,

the second condition because a run that is still below its first loss has not diverged: near a
best loss of almost zero, round-off noise alone is many times the best. The decision depends on
the sequence of losses only, so it is the same however the iterations were split into calls and
whether the run was resumed from a checkpoint.
"""

from __future__ import annotations

import math

__all__ = ["DivergenceWatch"]


class DivergenceWatch:
    """Feed every logged loss, in order, to :meth:`see`; ``best`` is the lowest so far, ``first``
    the first, ``streak`` the current run of losses above both bounds. ``factor=None`` never
    reports."""

    def __init__(self, factor: float | None, patience: int):
        self.factor, self.patience = factor, patience
        self.first, self.best, self.streak = None, math.inf, 0

    def see(self, loss: float) -> bool:
        """Whether the losses seen, ending with ``loss`` (finite), have diverged."""
        if self.first is None:
            self.first = loss
        self.best = min(self.best, loss)
        if self.factor is None:
            return False
        above = loss > self.factor * self.best and loss > self.first
        self.streak = self.streak + 1 if above else 0
        return self.streak >= self.patience
