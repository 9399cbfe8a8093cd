"""The ``solve`` driver shared by every solver.

A solver is a frozen dataclass with a ``name`` and two pure functions:

    init(problem, controls, *, key) -> state        (``state.controls`` holds the iterate)
    step(problem, state) -> (state, info)           (``info``: scalars about the *incoming*
                                                      iterate, at least ``loss``)

A solver that is not a jitted step (the direct solver: one IPOPT solve) has instead
``run(problem, controls, **budget) -> Result``, and ``solve`` hands over to it.

``solve`` compiles ``step`` once, runs it, records ``info`` and the wall time of every
iteration, stops on a budget (iterations, seconds), a tolerance on the gradient norm or a target
loss, and returns a :class:`controlnet.Result`. A non-finite loss or iterate stops the solve with
status ``"diverged"`` and keeps the last finite iterate; Ctrl-C stops it with ``"interrupted"``
and keeps the last completed iterate. With a checkpoint file, the whole solver state (controls,
optimizer state, PRNG key, iteration count) and the history are saved every ``K`` iterations,
on Ctrl-C and at the end, and ``resume=`` continues the same history as an uninterrupted run.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import controlnet as cn

from .gd import _joined
from .sharding import to_host

__all__ = ["solve", "evaluate"]


@functools.lru_cache(maxsize=64)
def _compiled_step(solver):
    """``(step, names)``: the jitted iteration ``step(problem, state) -> (state, numbers)`` and
    the names of its numbers.

    ``numbers`` packs every entry of ``info`` (in the order of ``names``) and, last, whether the
    new controls are all finite, into one array: one output buffer and one transfer per
    iteration (four separate scalars cost 5-10 % of a gradient step on the reference problem,
    measured against a hand-written scan). ``names`` maps the pytree structure of
    ``(problem, state)`` to the ``info`` keys; it is filled when ``step`` is traced, so look it
    up after ``step.lower(...)``.
    """
    names = {}

    def run(problem, state):
        new_state, info = solver.step(problem, state)
        # One reduction over all controls joined (a reduction per leaf is a kernel each, as in
        # tree_norm).
        finite = jnp.all(jnp.isfinite(_joined(new_state.controls)))
        keys = tuple(info)
        names[jax.tree_util.tree_structure((problem, state))] = keys
        dtype = jnp.result_type(float, *(info[k] for k in keys))
        numbers = jnp.stack([jnp.asarray(info[k], dtype) for k in keys] + [finite.astype(dtype)])
        return new_state, numbers

    return jax.jit(run), names


def _compile(solver, problem, state):
    """Compile the step for ``(problem, state)``: ``(step, names, executable, seconds)``.

    Call ``step`` (jit's fast path then finds ``executable`` in its cache: nothing is compiled
    twice); ``names`` are the ``info`` keys in the order of the packed numbers (:func:`_unpack`).
    """
    step, names = _compiled_step(solver)
    t0 = time.perf_counter()
    executable = step.lower(problem, state).compile()
    seconds = time.perf_counter() - t0
    return step, names[jax.tree_util.tree_structure((problem, state))], executable, seconds


def _unpack(names, numbers):
    """``(info, finite)`` on the host from :func:`_compiled_step`'s packed numbers."""
    numbers = np.asarray(jax.device_get(numbers))
    return dict(zip(names, numbers[:-1].tolist())), bool(numbers[-1])


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
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume=None,
    checkpoint_meta: dict | None = None,
) -> cn.Result:
    """Run ``solver`` on ``problem`` from ``controls``.

    Args:
        key: PRNG key for the solver (minibatches, inner randomness); default from ``seed``.
        max_iters, max_seconds: the budget (status ``max_iters`` / ``max_seconds``); on resume
            ``max_iters`` counts from the start of the original run.
        tol: stop with ``converged`` once ``info["grad_norm"] <= tol``.
        target_loss: stop with ``target`` once the loss is ``<= target_loss``.
        test: optional ``(x, y)`` held-out split, for ``test_accuracy`` in the summary.
        progress: show a progress bar (default: only on a terminal).
        callback: ``callback(iteration, info)`` after every iteration (host floats).
        checkpoint: a file to write the whole solver state to (see :mod:`controlnet.io`):
            every ``checkpoint_every`` iterations, on interruption and at the end (not after a
            divergence: the last periodic checkpoint stays). In a multi-process run (after
            ``jax.distributed.initialize()``) only process 0 writes it.
        resume: a checkpoint file to continue from; ``controls`` and ``key`` then only fix the
            state's structure. The run continues the same history as an uninterrupted one (the
            same compiled step on the same state), bit for bit on the same machine.
        checkpoint_meta: extra JSON-able entries stored with each checkpoint (e.g. CLI options).

    Divergence: a non-finite loss at iterate ``j`` keeps iterate ``j−1`` (the last one whose loss
    was finite); a non-finite gradient norm or a non-finite next iterate keeps iterate ``j``.
    Either way the status is ``"diverged"`` and ``info["diverged_at"]`` is ``j`` (``j+1`` for a
    non-finite next iterate). SIGINT (Ctrl-C) finishes the current iteration, then stops with
    ``"interrupted"``, keeping (and checkpointing) the last completed iterate; a second SIGINT
    raises ``KeyboardInterrupt`` at once (the periodic checkpoints stay).
    """
    if not isinstance(max_iters, (int, np.integer)) or isinstance(max_iters, bool) or max_iters < 0:
        raise ValueError(f"max_iters must be an integer >= 0, got {max_iters!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, (int, np.integer))
                                         or isinstance(checkpoint_every, bool) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs a checkpoint file; pass checkpoint=path")
    _check_controls(problem, controls)
    if test is not None:
        problem.with_data(*test)  # validate the test split now, not after the solve
    if callable(getattr(solver, "run", None)):
        # Not a jitted step (the direct solver is one IPOPT solve): the solver runs itself.
        if checkpoint is not None or resume is not None:
            raise ValueError(f"solver {getattr(solver, 'name', solver)!r} is one solve with no "
                             "state to checkpoint; drop checkpoint/resume")
        return solver.run(problem, controls, key=key, seed=seed, max_iters=max_iters,
                          max_seconds=max_seconds, tol=tol, target_loss=target_loss, test=test,
                          progress=progress, callback=callback)
    key = jax.random.PRNGKey(seed) if key is None else key
    from tqdm.auto import tqdm

    solver_name = getattr(solver, "name", type(solver).__name__)
    state = solver.init(problem, controls, key=key)
    fingerprint = _fingerprint(problem)
    history: dict[str, list] = {}
    start_it = 0
    if resume is not None:
        ck = cn.io.load_checkpoint(resume, like=state)
        if ck.meta.get("solver") != solver_name:
            raise ValueError(f"checkpoint {resume} was written by solver {ck.meta.get('solver')!r}, "
                             f"not {solver_name!r}; resume with the same solver")
        if ck.meta.get("problem") != fingerprint:
            diff = sorted(k for k in set(fingerprint) | set(ck.meta.get("problem") or {})
                          if (ck.meta.get("problem") or {}).get(k) != fingerprint.get(k))
            raise ValueError(f"checkpoint {resume} was written for another problem (differs in "
                             f"{', '.join(diff)}); resume with the same problem and data")
        state, start_it = ck.state, ck.iteration
        history = {k: [float(x) for x in v] for k, v in ck.history.items()}

    def save(st, n):
        if jax.process_index() != 0:  # several processes (jax.distributed): one writer
            return
        meta = {"solver": solver_name, "problem": fingerprint, **(checkpoint_meta or {})}
        cn.io.save_checkpoint(checkpoint, st, iteration=n, history=history, meta=meta)

    with _SigintFlag() as stop:
        step, names, _, compile_time = _compile(solver, problem, state)  # timed apart

        status, diverged_at = "max_iters", None
        prev, keep = None, None  # keep: the iterate to return when the solve diverged
        bar = tqdm(total=max_iters, initial=min(start_it, max_iters),
                   disable=(None if progress is None else not progress),
                   desc=solver_name, leave=False)
        start = time.perf_counter()
        it = start_it
        try:
            while it < max_iters:
                if stop.requested:
                    status = "interrupted"
                    break
                t = time.perf_counter()
                new_state, numbers = step(problem, state)
                info, finite = _unpack(names, numbers)  # one transfer for all numbers
                info["time"] = time.perf_counter() - t
                if not np.isfinite(info["loss"]):
                    status, diverged_at = "diverged", it
                    keep = state if prev is None else prev
                    break
                for k, v in info.items():
                    history.setdefault(k, []).append(v)
                if not np.isfinite(info.get("grad_norm", 0.0)) or not finite:
                    status, diverged_at = "diverged", it + (0 if finite else 1)
                    keep = state
                    break
                prev, state, it = state, new_state, it + 1
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4g}")
                if callback is not None:
                    callback(it - 1, info)
                if checkpoint_every is not None and it % checkpoint_every == 0:
                    save(state, it)
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
            if stop.installed:  # a second Ctrl-C: stop everything now (e.g. a whole sweep)
                raise
            status = "interrupted"  # SIGINT outside the main thread: no flag, stop cleanly
        finally:
            bar.close()
        if checkpoint is not None and status != "diverged":
            save(state, it)
    wall = time.perf_counter() - start
    final = keep.controls if status == "diverged" else state.controls
    iterations = len(history.get("loss", []))
    summary = {
        "solver": solver_name,
        "iterations": iterations,
        "wall_time": wall,
        "compile_time": compile_time,
        "diverged_at": diverged_at,
        "resumed_from": start_it if resume is not None else None,
        "problem": problem.describe(),
    }
    summary.update(evaluate(problem, final, test))
    if status == "diverged":
        warnings.warn(f"{solver_name} diverged at iteration {diverged_at} (non-finite loss, "
                      "gradient or iterate); keeping the last finite iterate", RuntimeWarning,
                      stacklevel=2)
    hist = {k: np.asarray(v) for k, v in history.items()}
    return cn.Result(final, hist, status, summary)


def _check_controls(problem, controls):
    """Controls must have the problem's pytree structure, shapes and be finite (before compiling)."""
    if not isinstance(controls, cn.Controls):
        raise TypeError(f"controls must be a controlnet.Controls, got {type(controls).__name__}; "
                        "use problem.init_controls(key)")
    want = jax.eval_shape(problem.init_controls, jax.random.PRNGKey(0))
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(controls)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    if got_def != want_def:
        raise ValueError(f"controls have structure {got_def}, the problem expects {want_def}; "
                         "build them with problem.init_controls(key)")
    for (path, g), (_, w) in zip(got_leaves, want_leaves):
        if np.shape(g) != w.shape:
            raise ValueError(f"controls{jax.tree_util.keystr(path)} has shape {np.shape(g)}, the "
                             f"problem (N={problem.N}, width={problem.width}) expects {w.shape}")
        if not np.all(np.isfinite(np.asarray(g))):
            raise ValueError(f"controls{jax.tree_util.keystr(path)} holds NaN or Inf; start from "
                             "finite controls")


def _fingerprint(problem) -> dict:
    """The problem's description and a hash of its data: what a checkpoint must match."""
    import hashlib
    import json

    h = hashlib.sha256()
    for a in (problem.x, problem.y):
        a = np.ascontiguousarray(to_host(a))  # a multi-process run hashes the global data
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return json.loads(json.dumps({**problem.describe(), "data_sha256": h.hexdigest()}))


class _SigintFlag:
    """Within the block, the first SIGINT only sets ``requested``; a second one raises
    ``KeyboardInterrupt`` (the caller's way out of a loop of solves)."""

    def __init__(self):
        self.requested = False
        self.installed = False
        self._old = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(signal.SIGINT, self._old)
        return False
