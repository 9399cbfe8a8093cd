"""Data parallelism over a :class:`jax.sharding.Mesh`: samples split across devices, controls replicated.

Every solver works on a sharded problem unchanged. The objective and its gradient are sums over
samples (``J = (1/S) Σ_i ℓ_i + …``, ``∇_θ H_k = Σ_i ∇_θ(p_i·Ψ_h(z_i, θ))``), each sample's
trajectory and co-state are independent of the others, so with the data laid out along the
mesh's ``data`` axis and the controls replicated, ``jax.jit`` (GSPMD) runs every layer on each
device's own samples and inserts one all-reduce per sum over samples. The result is the
single-device one up to the order of those sums (round-off; tested).

    mesh = data_mesh()                               # all devices on one axis "data"
    problem = shard_problem(problem, mesh)           # x, y split by rows
    result = solvers.solve(solver, problem, replicate(controls, mesh))

On several hosts, call ``jax.distributed.initialize()`` first in every process; each process
then builds its problem from its own rows of the data and :func:`shard_problem` assembles the
global arrays with :func:`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "data_mesh", "shard_problem", "replicate", "data_sharding", "to_host"]

DATA_AXIS = "data"


def data_mesh(devices=None, axis: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("no devices given; pass a non-empty list such as jax.devices()")
    return Mesh(np.asarray(devices), (axis,))


def data_sharding(mesh: Mesh, axis: str = DATA_AXIS) -> NamedSharding:
    """Rows (the leading, sample axis) split along ``axis``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(axis))


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` copied to every device of ``mesh`` (controls, solver state)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_problem(problem, mesh: Mesh, axis: str = DATA_AXIS):
    """``problem`` with its data ``x, y`` split by samples along ``axis`` of ``mesh``.

    The number of samples must be a multiple of the number of devices on ``axis`` (padding
    would change the averages in ``J``). In a multi-process run, ``problem`` holds this
    process's rows only and the global problem has their concatenation, in process order.
    """
    if axis not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis!r} (its axes: {tuple(mesh.shape)}); pass axis=")
    n = mesh.shape[axis]
    sharding = data_sharding(mesh, axis)
    rows = problem.x.shape[0] * jax.process_count()
    if rows % n:
        raise ValueError(f"{rows} samples cannot be split evenly over {n} devices; "
                         f"use a multiple of {n} samples (e.g. {rows // n * n})")
    if jax.process_count() > 1:
        make = lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a))  # noqa: E731
        x, y = make(problem.x), make(problem.y)
    else:
        x, y = jax.device_put(problem.x, sharding), jax.device_put(problem.y, sharding)
    sharded = problem.replace_data(x, y)
    # The scalar leaves (T, weights) on every device too, so that jit sees one mesh.
    data, meta = jax.tree_util.tree_flatten(sharded)
    data = [a if a is x or a is y else replicate(a, mesh) for a in data]
    return jax.tree_util.tree_unflatten(meta, data)


def to_host(a) -> np.ndarray:
    """The whole of ``a`` as a numpy array on this host, also when ``a`` is a global array
    spread over other processes' devices (then gathered from all of them: every process must
    call this together, as for any collective)."""
    if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))
