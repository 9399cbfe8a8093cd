"""The ``solve`` driver shared by every solver.

A solver is a frozen dataclass with a ``name`` and two pure functions:

    init(problem, controls, *, key) -> state        (``state.controls`` holds the iterate)
    step(problem, state) -> (state, info)           (``info``: scalars about the *incoming*
                                                      iterate, at least ``loss``)

``solve`` compiles ``step`` once, runs it, records ``info`` and the wall time of every
iteration, stops on a budget (iterations, seconds), a tolerance on the gradient norm or a target
loss, and returns a :class:`controlnet.Result`. A non-finite loss or iterate stops the solve with
status ``"diverged"`` and keeps the last finite iterate; Ctrl-C stops it with ``"interrupted"``
and keeps the last completed iterate.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import controlnet as cn

__all__ = ["solve", "evaluate"]


@functools.lru_cache(maxsize=64)
def _compiled_step(solver):
    def run(problem, state):
        new_state, info = solver.step(problem, state)
        leaves = jax.tree_util.tree_leaves(new_state.controls)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))
        return new_state, info, finite

    return jax.jit(run)


@jax.jit
def _metrics(problem, controls):
    return cn.metrics(problem, controls)


def evaluate(problem: cn.ControlProblem, controls: cn.Controls, test=None) -> dict:
    """Final loss, data loss and accuracy on the training data (and ``test_accuracy``)."""
    out = {k: float(v) for k, v in _metrics(problem, controls).items()}
    if test is not None:
        tp = problem.with_data(*test)
        m = _metrics(tp, controls)
        out["test_loss"] = float(m["data_loss"])
        out["test_accuracy"] = float(m["accuracy"])
    return out


def solve(
    solver,
    problem: cn.ControlProblem,
    controls: cn.Controls,
    *,
    key=None,
    seed: int = 0,
    max_iters: int = 100,
    max_seconds: float | None = None,
    tol: float | None = None,
    target_loss: float | None = None,
    test=None,
    progress: bool | None = None,
    callback=None,
) -> cn.Result:
    """Run ``solver`` on ``problem`` from ``controls``.

    Args:
        key: PRNG key for the solver (minibatches, inner randomness); default from ``seed``.
        max_iters, max_seconds: the budget (status ``max_iters`` / ``max_seconds``).
        tol: stop with ``converged`` once ``info["grad_norm"] <= tol``.
        target_loss: stop with ``target`` once the loss is ``<= target_loss``.
        test: optional ``(x, y)`` held-out split, for ``test_accuracy`` in the summary.
        progress: show a progress bar (default: only on a terminal).
        callback: ``callback(iteration, info)`` after every iteration (host floats).
    """
    if not isinstance(max_iters, (int, np.integer)) or max_iters < 0:
        raise ValueError(f"max_iters must be an integer >= 0, got {max_iters!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    key = jax.random.PRNGKey(seed) if key is None else key
    from tqdm.auto import tqdm

    state = solver.init(problem, controls, key=key)
    step = _compiled_step(solver)
    t0 = time.perf_counter()
    step = step.lower(problem, state).compile()
    compile_time = time.perf_counter() - t0

    history: dict[str, list] = {}
    status, diverged_at = "max_iters", None
    last_good = state.controls
    bar = tqdm(total=max_iters, disable=(None if progress is None else not progress),
               desc=getattr(solver, "name", "solve"), leave=False)
    start = time.perf_counter()
    it = 0
    try:
        for it in range(max_iters):
            t = time.perf_counter()
            new_state, info, finite = step(problem, state)
            info = {k: float(v) for k, v in info.items()}
            finite = bool(finite)
            info["time"] = time.perf_counter() - t
            if not np.isfinite(info["loss"]):
                status, diverged_at = "diverged", it
                break
            for k, v in info.items():
                history.setdefault(k, []).append(v)
            last_good = state.controls
            state = new_state
            bar.update(1)
            bar.set_postfix(loss=f"{info['loss']:.4g}")
            if callback is not None:
                callback(it, info)
            if not finite:
                status, diverged_at = "diverged", it + 1
                break
            last_good = state.controls
            if target_loss is not None and info["loss"] <= target_loss:
                status = "target"
                break
            if tol is not None and info.get("grad_norm", np.inf) <= tol:
                status = "converged"
                break
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                status = "max_seconds"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    wall = time.perf_counter() - start
    iterations = len(history.get("loss", []))
    summary = {
        "solver": getattr(solver, "name", type(solver).__name__),
        "iterations": iterations,
        "wall_time": wall,
        "compile_time": compile_time,
        "diverged_at": diverged_at,
        "problem": problem.describe(),
    }
    summary.update(evaluate(problem, last_good, test))
    if status == "diverged":
        print(f"{summary['solver']}: diverged at iteration {diverged_at} (non-finite loss or "
              "iterate); keeping the last finite iterate")
    hist = {k: np.asarray(v) for k, v in history.items()}
    return cn.Result(last_good, hist, status, summary)
