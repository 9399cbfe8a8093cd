"""Levers for the gradient step: controlnet's reference step with each one applied, in one run.

The reference step of ``benchmarks/peers.py`` (``controlnet``: ``solvers.GradientDescent`` with
Adam, ``PER_CALL`` iterations per device call) is compiled once as the library builds it and
once per lever, the lever applied while the step is traced and compiled:

- ``unroll k``: the layer scans of :mod:`controlnet.state` and :mod:`controlnet.adjoint` as
  ``lax.scan(..., unroll=k)`` (``k`` layers per loop iteration; ``k = N`` unrolls fully);
- ``multiply-adds``: the dense field's ``W z`` written as ``d`` broadcast multiply-adds
  ``Σ_j W[:, j] z[j]`` instead of one ``dot``, which XLA may fuse with ``tanh``;
- ``keep residuals``: the adjoint keeps each layer's linearization from the forward pass
  (``VectorField.rematerialize = False``) instead of re-evaluating the layer from its state.

Beside them, the best-configured diffrax row of ``benchmarks/peers.py`` (``(d, S)`` states,
every step kept, ``PER_CALL`` steps per call), so a lever that wins can be read against the peer
directly. Each is measured at the sizes ``SIZES``, and the library keeps a lever only if it wins
at all of them (across the samples ``S`` and the depth ``N``); this benchmark records those that
did not, with their numbers. Protocol as in ``benchmarks/peers.py`` (interleaved rounds in a
shuffled order, paired ratios ``t / t_controlnet``: below 1 the lever is faster). Writes
``benchmarks/results.json`` key ``"levers"``.

    python -m benchmarks.levers [--rounds 20] [--per-round 3]
"""

from __future__ import annotations

import argparse
import contextlib
import functools

import numpy as np

from . import peers

UNROLLS = (5, 10, 25, 50)
#: ``(S, N)``: the reference size, ten times the samples, six times the layers (the scaling
#: benchmark's sweeps).
SIZES = ((1000, 50), (10_000, 50), (1000, 300))
DIFFRAX = peers.DIFFRAX_BEST


class _Forward:
    """``target``'s attributes, but those given here: a module with a few names replaced."""

    def __init__(self, target, **replaced):
        self._target = target
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._target, name)


@contextlib.contextmanager
def _scans_unrolled(k: int):
    """``jax.lax.scan`` as ``scan(..., unroll=k)`` inside controlnet.state and controlnet.adjoint."""
    import jax

    import controlnet.adjoint
    import controlnet.state

    shim = _Forward(jax, lax=_Forward(jax.lax, scan=functools.partial(jax.lax.scan, unroll=k)))
    modules = (controlnet.state, controlnet.adjoint)
    try:
        for m in modules:
            m.jax = shim
        yield
    finally:
        for m in modules:
            m.jax = jax


def _multiply_adds(self, zT, theta):
    """``σ(W z + b)`` on ``zT (d, S)`` with ``W z`` as ``d`` broadcast multiply-adds."""
    from controlnet.activations import activation

    W = theta["W"]
    acc = theta["b"][:, None] + W[:, :1] * zT[:1]
    for j in range(1, W.shape[1]):
        acc = acc + W[:, j : j + 1] * zT[j : j + 1]
    return activation(self.activation)(acc)


@contextlib.contextmanager
def _class_attribute(cls, name, value):
    """``cls.name = value`` inside the block; afterwards as before (inherited again if it was)."""
    own = name in cls.__dict__
    old = cls.__dict__.get(name)
    setattr(cls, name, value)
    try:
        yield
    finally:
        if own:
            setattr(cls, name, old)
        else:
            delattr(cls, name)


def levers(problem) -> dict:
    """``{name: context manager}``: each lever, applied while the step is built."""
    import controlnet as cn

    if type(problem.dynamics) is not cn.InnerActivation:
        raise ValueError(f"the levers patch the reference field InnerActivation, not {type(problem.dynamics).__name__}")
    out = {"controlnet": contextlib.nullcontext}
    out.update({f"unroll {k}": functools.partial(_scans_unrolled, k) for k in UNROLLS})
    out["multiply-adds"] = functools.partial(_class_attribute, cn.InnerActivation, "scan_call", _multiply_adds)
    out["keep residuals"] = functools.partial(_class_attribute, cn.InnerActivation, "rematerialize", False)
    return out


def levers_at(samples, layers, rounds, per_round, log=print) -> dict:
    """The levers and the best-configured diffrax on the reference problem at this size."""
    import optax

    import solvers

    problem = peers.reference_task(samples, layers).problem
    runs, compile_s, first_loss, programs = {}, {}, {}, {}
    for name, lever in levers(problem).items():
        with lever():  # a new solver each time: a new compiled step, traced under the lever
            gd = solvers.GradientDescent(optax.adam(peers.REFERENCE["lr"]))
            run, compile_s[name], program = peers.driver_calls(gd, problem, peers.PER_CALL)
            first_loss[name] = float(run())  # the first call runs inside the lever too
        programs[name] = program().as_text()
        if name != "controlnet" and programs[name] == programs["controlnet"]:
            raise RuntimeError(f"lever {name!r} left the compiled step unchanged")
        runs[name] = run
    try:
        run, compile_s[DIFFRAX] = peers.diffrax_euler(problem, peers.initial_arrays(problem), True,
                                                      problem.N + 1, per_call=peers.PER_CALL)
        first_loss[DIFFRAX] = float(run())
        runs[DIFFRAX] = run
    except ImportError as e:
        log(f"  {DIFFRAX}: not installed ({e.name}); use `make bench`")
    times = peers.time_interleaved(runs, rounds, per_round)
    rows = {name: {"median_ms": 1e3 * float(np.median(ts)), "compile_s": compile_s[name],
                   "ratio_paired": peers.paired_ratio(ts, times["controlnet"], rounds, per_round),
                   "initial_loss": first_loss[name]}
            for name, ts in times.items()}
    winning = [n for n, r in rows.items() if n not in ("controlnet", DIFFRAX) and r["ratio_paired"] < 1.0]
    return {"samples": problem.S, "layers": problem.N, "rows": rows, "winning": winning}


def run_levers(sizes=SIZES, rounds=20, per_round=3, log=print) -> dict:
    out = {"reference": peers.REFERENCE, "per_call": peers.PER_CALL,
           "protocol": {"rounds": rounds, "per_round": per_round}, "sizes": {}}
    for S, N in sizes:
        key = f"S={S}, N={N}"
        out["sizes"][key] = res = levers_at(S, N, rounds, per_round, log)
        log(f"\n{key}: the reference step with each lever, median of {rounds * per_round} interleaved calls")
        log(f"{'lever':46s} {'median ms':>10s} {'compile s':>10s} {'x controlnet':>13s} {'J0':>9s}")
        for name, r in res["rows"].items():
            log(f"{name:46s} {r['median_ms']:10.3f} {r['compile_s']:10.2f} {r['ratio_paired']:13.2f} "
                f"{r['initial_loss']:9.5f}")
        log(f"levers that win: {', '.join(res['winning']) or 'none'}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--per-round", type=int, default=3)
    a = ap.parse_args(argv)
    peers.merge_results("levers", run_levers(SIZES, a.rounds, a.per_round))
    print(f"written to {peers.RESULTS}")


if __name__ == "__main__":
    main()
