"""Multigrid reduction in time (MGRIT) for a recursion over the layers: two levels, FAS.

The recursion ``u_{k+1} = F_k(u_k)``, ``k = 0..N−1``, from ``u_0`` (forward) or
``u_k = F_k(u_{k+1})`` from ``u_N`` (``reverse=True``, the co-state) is solved for all ``k`` at
once by iterations whose work is parallel over the layers (Falgout et al. 2014, "Parallel time
integration with multigrid"; Günther et al. 2020, "Layer-parallel training of deep residual
neural networks").

Grids. The ``N`` layers are cut into ``m = N/c`` intervals of ``c`` layers (``c`` the coarsening
factor); the unknowns are the C-point values ``U_j``, the value where interval ``j`` starts
(``u_{jc}`` forward, ``u_{(j+1)c}`` in reverse). ``Φ_j`` is the fine propagator over interval
``j`` (its ``c`` layers one after another), ``G_j`` the coarse propagator (one step standing in
for the ``c``; the callers use the same integrator with step ``c·h``). The exact solution is the
fixed point ``U_{j+1} = Φ_j(U_j)``, ``U_0 = u_0`` (forward); its residual is

    r_j = Φ_{j−1}(U_{j−1}) − U_j.

One iteration (FCF-relaxation, then the FAS coarse-grid correction):

    F:  E_j = Φ_j(U_j) for all j at once                (parallel over intervals)
    C:  U_j ← E_{j−1};  F again: E_j = Φ_j(U_j)          (``relaxation="FCF"``)
    τ_j = E_j − G_j(U_j)
    coarse:  V_0 = u_0,  V_{j+1} = G_j(V_j) + τ_j        (serial over the m coarse steps)
    U ← V

A fixed point of the iteration satisfies ``V_{j+1} = Φ_j(V_j)``: the serial solution, whatever
``G``; a better ``G`` only converges faster. Two-level MGRIT is exact after at most ``m``
iterations (each one makes at least one more C-point exact); the callers use few, the method's
point. The initial guess is the coarse solve alone (``τ = 0``).

Layout across devices. With a mesh, the intervals are split in contiguous blocks over the
``layers`` axis (``shard_map``): the F-relaxations run on each device's own intervals; the shift
``E_{j−1} → U_j`` passes one value to the next device (``ppermute``); the coarse solve gathers
the ``τ_j`` (``all_gather``) and runs on every device, which keeps its own slice of ``V``.
Per iteration and device: ``2 c m/P`` fine steps, ``m/P`` coarse steps in parallel plus ``m``
serial ones, two neighbour transfers and one gather of ``m`` values. An optional ``data`` axis
splits the samples (each sample's recursion is independent of the others').
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

__all__ = ["mgrit", "RELAXATIONS"]

RELAXATIONS = ("F", "FCF")


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


class _Comm:
    """The collectives of one device's block of intervals (or none, on one device)."""

    def __init__(self, axis, n_dev, reverse):
        self.axis, self.n_dev, self.reverse = axis, n_dev, reverse

    def shift(self, E, u_start):
        """``U_j = E_{j−1}`` with ``U_0 = u_start`` (forward; mirrored in reverse)."""
        edge, body = (E[0], E[1:]) if self.reverse else (E[-1], E[:-1])
        recv = u_start
        if self.axis is not None and self.n_dev > 1:
            pairs = [(i + 1, i) if self.reverse else (i, i + 1) for i in range(self.n_dev - 1)]
            moved = jax.lax.ppermute(edge, self.axis, pairs)
            end = self.n_dev - 1 if self.reverse else 0
            recv = jnp.where(jax.lax.axis_index(self.axis) == end, u_start, moved)
        parts = [body, recv[None]] if self.reverse else [recv[None], body]
        return jnp.concatenate(parts, axis=0)

    def gather(self, a):
        if self.axis is None or self.n_dev == 1:
            return a
        return jax.tree_util.tree_map(lambda x: jax.lax.all_gather(x, self.axis, tiled=True), a)

    def local(self, a, n_local):
        if self.axis is None or self.n_dev == 1:
            return a
        start = jax.lax.axis_index(self.axis) * n_local
        return jax.lax.dynamic_slice_in_dim(a, start, n_local, axis=0)

    def total(self, x, axes):
        return x if not axes else jax.lax.psum(x, axes)


def _kernel(fine, coarse, u_start, xs, Xs, *, iterations, relaxation, reverse, comm, sum_axes):
    """MGRIT on one device's intervals (module doc). ``xs`` leading ``(m_loc, c)``, ``Xs``
    leading ``(m_loc,)``. Returns ``(inputs (m_loc, c, ...), E (m_loc, ...), residuals)``:
    ``inputs`` every layer's input value at the last iterate, ``E`` each interval's end."""
    n_local = jax.tree_util.tree_leaves(Xs)[0].shape[0]
    Xs_all = comm.gather(Xs)

    def sweep(U, keep=False):
        def interval(u, x):
            def layer(v, xk):
                return fine(v, xk), (v if keep else None)

            return jax.lax.scan(layer, u, x, reverse=reverse)

        E, ins = jax.vmap(interval)(U, xs)
        return E, ins

    def coarse_solve(tau):
        def body(v, inp):
            X, t = inp
            nxt = coarse(v, X)
            return (nxt if t is None else nxt + t), v

        _, V = jax.lax.scan(body, u_start, (Xs_all, tau), reverse=reverse)
        return comm.local(V, n_local)

    def residual(U, E):
        r = comm.shift(E, u_start) - U
        return jnp.sqrt(comm.total(jnp.sum(r * r), sum_axes))

    def iteration(U, _):
        E, _ = sweep(U)
        res = residual(U, E)
        if relaxation == "FCF":
            U = comm.shift(E, u_start)
            E, _ = sweep(U)
        tau = E - jax.vmap(coarse)(U, Xs)
        return coarse_solve(comm.gather(tau)), res

    U0 = coarse_solve(None)
    U, res = jax.lax.scan(iteration, U0, None, length=iterations)
    E, ins = sweep(U, keep=True)
    return ins, E, jnp.concatenate([res, residual(U, E)[None]])


def mgrit(fine: Callable, coarse: Callable, u_start, xs, Xs, *, coarsening: int, iterations: int,
          relaxation: str = "FCF", reverse: bool = False, mesh=None, layer_axis: str = "layers",
          data_axis: str | None = None, sample_axis: int = -1):
    """Solve ``u_{k+1} = fine(u_k, xs[k])`` (``reverse``: ``u_k = fine(u_{k+1}, xs[k])``) by
    two-level MGRIT (module doc).

    Args:
        fine: one layer's map ``(u, x_k) -> u``, ``u`` one array.
        coarse: one coarse step ``(u, X_j) -> u`` standing in for the layers of interval ``j``.
        u_start: ``u_0`` (forward) or ``u_N`` (reverse).
        xs: per-layer data with leading axis ``N``, a pair ``(states, other)`` of pytrees:
            ``states`` arrays laid out as ``u`` (split over ``data_axis`` like it), ``other``
            whole on every device of that axis (controls).
        Xs: per-interval data, leading axis ``m = N/coarsening``, a pair likewise.
        coarsening: ``c``, a divisor of ``N``.
        iterations: the number of MGRIT iterations (fixed).
        relaxation: ``"FCF"`` (default) or ``"F"``.
        mesh, layer_axis: split the intervals in contiguous blocks over this mesh axis
            (``m`` must be a multiple of its size). ``data_axis``: also split ``u``'s
            ``sample_axis`` over that mesh axis.

    Returns ``(us, residuals)``: ``us`` the values ``u_0..u_N`` (leading axis ``N+1``) and
    ``residuals`` (``iterations + 1``,): ``‖r‖`` (over all C-points and samples) of the initial
    guess and after each iteration.
    """
    if relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    N = jax.tree_util.tree_leaves(xs)[0].shape[0]
    c = coarsening
    if not isinstance(c, int) or isinstance(c, bool) or c < 1 or N % c:
        divisors = [d for d in range(2, N + 1) if N % d == 0][:6]
        raise ValueError(f"coarsening must be a divisor of the number of layers N={N}, got {c!r}; "
                         f"e.g. one of {divisors}")
    m = N // c
    xs_b = jax.tree_util.tree_map(lambda a: a.reshape((m, c) + a.shape[1:]), xs)
    kw = dict(iterations=iterations, relaxation=relaxation, reverse=reverse)
    if mesh is None:
        ins, E, res = _kernel(fine, coarse, u_start, xs_b, Xs, comm=_Comm(None, 1, reverse),
                              sum_axes=(), **kw)
    else:
        ins, E, res = _sharded(fine, coarse, u_start, xs_b, Xs, mesh, layer_axis, data_axis,
                               sample_axis, m, kw)
    ins = ins.reshape((N,) + ins.shape[2:])
    # Forward: inputs are u_0..u_{N−1}, the last interval's end is u_N; reverse: inputs are
    # u_1..u_N (each layer's incoming co-state), the first interval's end is u_0.
    parts = [E[:1], ins] if reverse else [ins, E[-1:]]
    return jnp.concatenate(parts, axis=0), res


def _sharded(fine, coarse, u_start, xs_b, Xs, mesh, layer_axis, data_axis, sample_axis, m, kw):
    """:func:`_kernel` under ``shard_map``: intervals over ``layer_axis``, samples over
    ``data_axis``."""
    for name in (layer_axis, data_axis):
        if name is not None and name not in mesh.shape:
            raise ValueError(f"mesh has no axis {name!r} (its axes: {tuple(mesh.shape)})")
    n_dev = mesh.shape[layer_axis]
    if m % n_dev:
        raise ValueError(f"the {m} coarse intervals cannot be split evenly over {n_dev} devices on "
                         f"axis {layer_axis!r}: choose N/coarsening a multiple of {n_dev}")
    nd = u_start.ndim
    ax = sample_axis % nd

    def state_spec(lead):
        spec = [None] * nd
        if data_axis is not None:
            spec[ax] = data_axis
        return P(*lead, *spec)

    def specs(pair, lead):
        states, other = pair
        return (jax.tree_util.tree_map(lambda a: state_spec(lead), states),
                jax.tree_util.tree_map(lambda a: P(*lead), other))

    xs_spec, Xs_spec = specs(xs_b, (layer_axis, None)), specs(Xs, (layer_axis,))
    sum_axes = (layer_axis,) if data_axis is None else (layer_axis, data_axis)
    comm = _Comm(layer_axis, n_dev, kw["reverse"])
    run = lambda u, x, X: _kernel(fine, coarse, u, x, X, comm=comm, sum_axes=sum_axes, **kw)  # noqa: E731
    f = jax.shard_map(run, mesh=mesh, in_specs=(state_spec(()), xs_spec, Xs_spec),
                      out_specs=(state_spec((layer_axis, None)), state_spec((layer_axis,)), P()),
                      check_vma=False)
    return f(u_start, xs_b, Xs)
