"""Layer-parallel gradients for gradient descent: the states and co-states by MGRIT.

``GradientDescent(gradient=LayerParallel(iterations=2, coarsening=4))`` (or
``gradient="layer_parallel"`` for these defaults) takes each step's ``∇J`` from
:func:`controlnet.layer_parallel.mgrit_gradient`: the forward and the co-state recursions each
solved by a fixed number of two-level MGRIT iterations over the layers, laid out in contiguous
blocks along the ``layers`` axis of ``mesh`` (and the samples along ``data_axis``, for a 2-D
samples × layers mesh). Few iterations give an inexact gradient that still trains (Günther et
al. 2020); enough iterations (``N/(2c)`` with FCF) give the serial gradient to round-off.

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(1, -1), ("data", "layers"))
    solver = GradientDescent(gradient=LayerParallel(mesh=mesh, data_axis="data"))
    solvers.solve(solver, shard_problem(problem, mesh), replicate(controls, mesh))
"""

from __future__ import annotations

import dataclasses

from controlnet.layer_parallel import MGRIT, mgrit_gradient

__all__ = ["LayerParallel"]


@dataclasses.dataclass(frozen=True)
class LayerParallel(MGRIT):
    """MGRIT's options (:class:`controlnet.layer_parallel.MGRIT`) as a gradient method."""

    def value_and_grad(self, problem, controls):
        """``(J, ∇J, z_N)`` with the states and co-states from MGRIT."""
        J, g, zN, _ = mgrit_gradient(problem, controls, self)
        return J, g, zN
