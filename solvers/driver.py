"""The ``solve`` driver shared by every solver.

A solver is a frozen dataclass with a ``name`` and two pure functions:

    init(problem, controls, *, key) -> state        (``state.controls`` holds the iterate)
    step(problem, state) -> (state, info)           (``info``: scalars about the *incoming*
                                                      iterate, at least ``loss``)

A solver that is not a jitted step (the direct solver: one IPOPT solve) has instead
``run(problem, controls, budget, ...) -> Result`` (a :class:`~solvers.config.Budget`), and
``solve`` hands over to it.

``solve`` compiles ``step`` once, inside a device-side loop that runs many iterations per call
(:func:`_compiled_step`), records ``info`` and the wall time of every iteration, stops on a
budget (iterations, seconds), a tolerance on the gradient norm or a target loss, and returns a
:class:`controlnet.Result`. A non-finite loss or iterate stops the solve with status
``"diverged"`` and keeps the last finite iterate; Ctrl-C stops it with ``"interrupted"`` and
keeps the last completed iterate. With a checkpoint file, the whole solver state (controls,
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

from .config import MAX_STEPS_PER_CALL, Budget, Checkpoints, is_count
from .trees import joined
from .sharding import to_host

__all__ = ["solve", "evaluate"]


# A compiled call runs up to MAX_STEPS_PER_CALL iterations in one ``lax.while_loop``, and the
# driver sizes its calls to about CALL_SECONDS each (module doc, "Calls").
CALL_SECONDS = 0.05
# Every iteration's numbers are one row of this width: the info entries, then the finiteness flag.
_ROW = 32


@functools.lru_cache(maxsize=64)
def _compiled_step(solver):
    """``(run, names)``: the jitted ``run(problem, state, n, target, tol)`` and the names of the
    numbers it logs.

    ``run`` takes up to ``n`` iterations of ``solver.step`` in one ``lax.while_loop`` (``n`` is
    an argument: any count, one compile) and returns ``(state, rows)``:

    - ``rows[i]`` packs iteration ``i``'s ``info`` (in the order of ``names``), then whether its
      new controls are all finite, and a 1 in the last column (the rows of iterations not run
      are zeros): one output buffer and one transfer per call (four separate scalars per
      iteration cost 5-10 % of a gradient step on the reference problem; fetching a separate
      count with the rows, up to 10 % of a one-iteration call);
    - it stops early, after fewer than ``n`` iterations, at the first iteration whose loss is
      ``<= target`` or gradient norm ``<= tol``, or whose loss, gradient norm or new controls
      are not finite: ``state`` is then of no use, and :func:`solve` gets the iterate it keeps
      by running the same call again from an earlier state, for fewer iterations
      (:func:`_replay`);
    - ``state`` is the iterate after the last iteration.

    The loop carries one state and nothing else (selecting between states inside the loop, to
    stop on the last finite one, made the compile 30 % longer). Every iteration of every call
    runs the same compiled loop body, so a history does not depend on how the iterations were
    split into calls. ``names`` maps the pytree structure of ``(problem, state)`` to the
    ``info`` keys; it is filled when ``run`` is traced, so look it up after ``run.lower(...)``.
    """
    names = {}

    def run(problem, state, n, target, tol):
        dtype = jnp.result_type(float)
        key = jax.tree_util.tree_structure((problem, state))

        def body(carry):
            state, i, rows, _ = carry
            new, info = solver.step(problem, state)
            keys = names[key] = tuple(info)
            if len(keys) > _ROW - 2:
                raise ValueError(f"solver {getattr(solver, 'name', solver)!r} logs {len(keys)} numbers "
                                 f"per iteration; the driver packs at most {_ROW - 2}")
            # One reduction over all controls joined (a reduction per leaf is a kernel each, as
            # in tree_norm).
            finite = jnp.all(jnp.isfinite(joined(new.controls)))
            row = jnp.zeros(_ROW, dtype).at[-1].set(1)
            row = row.at[: len(keys) + 1].set(jnp.stack([jnp.asarray(info[k], dtype) for k in keys]
                                                       + [finite.astype(dtype)]))
            rows = jax.lax.dynamic_update_slice(rows, row[None], (i, jnp.zeros((), i.dtype)))
            loss = jnp.asarray(info["loss"], dtype)
            gnorm = jnp.asarray(info.get("grad_norm", 0.0), dtype)
            bad = ~jnp.isfinite(loss) | ~jnp.isfinite(gnorm) | ~finite
            done = (loss <= target) | ("grad_norm" in info and gnorm <= tol)
            return new, i + 1, rows, bad | done

        rows = jnp.zeros((MAX_STEPS_PER_CALL, _ROW), dtype)
        carry = (state, jnp.zeros((), jnp.int32), rows, jnp.zeros((), bool))
        state, _, rows, _ = jax.lax.while_loop(lambda c: (c[1] < n) & ~c[3], body, carry)
        return state, rows

    return jax.jit(run), names


def _call_args(n, target=None, tol=None):
    """The count and thresholds of a :func:`_compiled_step` call, typed so that every call
    (whatever the numbers, ``None`` included) hits the same compiled loop."""
    dtype = jnp.result_type(float)
    off = lambda v: np.asarray(-np.inf if v is None else v, dtype)  # noqa: E731
    if not 1 <= n <= MAX_STEPS_PER_CALL:
        raise ValueError(f"a call runs 1 to {MAX_STEPS_PER_CALL} iterations, got {n}")
    return np.asarray(n, np.int32), off(target), off(tol)


def _compile(solver, problem, state):
    """Compile the iterations for ``(problem, state)``: ``(run, names, executable, seconds)``.

    Call ``run(problem, state, *_call_args(n, target, tol))`` (jit's fast path then finds
    ``executable`` in its cache: nothing is compiled twice); ``names`` are the ``info`` keys in
    the order of each row (:func:`_unpack`).
    """
    run, names = _compiled_step(solver)
    t0 = time.perf_counter()
    executable = run.lower(problem, state, *_call_args(1)).compile()
    seconds = time.perf_counter() - t0
    return run, names[jax.tree_util.tree_structure((problem, state))], executable, seconds


def _unpack(names, rows):
    """``[(info, finite), ...]`` on the host, one per iteration run, from a
    :func:`_compiled_step` call's ``rows`` (one transfer)."""
    rows = np.asarray(rows)  # (jax.device_get costs 10 µs more, a tenth of a small call's overhead)
    m = len(names)
    return [(dict(zip(names, r[:m])), bool(r[m])) for r in rows[rows[:, -1] == 1].tolist()]


def _next_call(fixed, done, seconds, left=None):
    """Iterations of the next call: ``fixed`` if given; else doubling from 1, up to
    ``CALL_SECONDS`` of work at the last measured ``seconds`` per iteration, to what is ``left``
    of a time budget, and to :data:`MAX_STEPS_PER_CALL`.

    With several processes (``jax.distributed``) every process must run the same calls (each
    call is a collective program), and their clocks differ: there the count only doubles."""
    if fixed is not None:
        return fixed
    n = min(2 * done, MAX_STEPS_PER_CALL)
    if jax.process_count() > 1:
        return n
    n = min(n, max(1, int(CALL_SECONDS / max(seconds, 1e-9))))
    if left is not None:
        n = min(n, max(1, int(left / max(seconds, 1e-9))))
    return n


def _agree(*flags):
    """Each flag, true if it is true in any process: with several processes (``jax.distributed``)
    every process must make the same calls, so a stop (Ctrl-C, the time budget: each process
    has its own signal and clock) is decided together, after every call."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    every = multihost_utils.process_allgather(np.asarray(flags, bool))
    return tuple(bool(f) for f in np.any(np.reshape(every, (-1, len(flags))), axis=0))


def _replay(run, problem, start, k, before=None):
    """The iterate ``k`` iterations after ``start`` (``k >= -1``), by the same compiled call
    (:func:`_compiled_step`), so bit for bit the iterate the failed call passed through.

    ``k = -1`` is the iterate before ``start``: ``before = (state, m)``, the previous call's
    start and its iteration count, replayed ``m - 1`` iterations (``None``: ``start`` was the
    first iterate of the solve, which is then kept)."""
    if k < 0:
        if before is None:
            return start
        start, k = before[0], before[1] - 1
    return start if k == 0 else run(problem, start, *_call_args(k))[0]


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
    budget: Budget | None = None,
    checkpoints: Checkpoints | None = None,
    key=None,
    seed: int = 0,
    test=None,
    progress: bool | None = None,
    callback=None,
    steps_per_call: int | None = None,
    max_iters: int | None = None,
    max_seconds: float | None = None,
    tol: float | None = None,
    target_loss: float | None = None,
    checkpoint=None,
    checkpoint_every: int | None = None,
    resume=None,
    checkpoint_meta: dict | None = None,
) -> cn.Result:
    """Run ``solver`` on ``problem`` from ``controls``.

    Args:
        budget: when to stop (:class:`~solvers.config.Budget`: ``max_iters`` (default 100),
            ``max_seconds``, ``tol`` on the gradient norm, ``target_loss``); or pass those four
            one by one.
        checkpoints: where to save the solver state and where to resume from
            (:class:`~solvers.config.Checkpoints`: ``path``, ``every``, ``resume``, ``meta``);
            or pass them one by one as ``checkpoint``, ``checkpoint_every``, ``resume`` and
            ``checkpoint_meta``.
        key: PRNG key for the solver (minibatches, inner randomness); default from ``seed``.
        test: optional ``(x, y)`` held-out split, for ``test_accuracy`` in the summary.
        progress: show a progress bar (default: only on a terminal).
        callback: ``callback(iteration, info)`` after every iteration (host floats).
        steps_per_call: iterations per compiled call (1 to :data:`MAX_STEPS_PER_CALL`); default
            (``None``): sized to about :data:`CALL_SECONDS` each (module doc, "Calls"). It
            changes only the timings: the history and the result are the same bit for bit.

    Calls: the iterations run in calls of up to :data:`MAX_STEPS_PER_CALL` iterations, each one
    ``lax.while_loop`` on the device that stops early on a target, a tolerance or a non-finite
    number (:func:`_compiled_step`); the host then logs every iteration of the call and runs the
    callback, checkpoints, progress bar and time budget between calls. A call per iteration paid
    a fixed cost on the host and in the runtime (0.1-0.3 ms) that is as large as the gradient
    step itself for small problems. The first call runs one iteration; later calls double, up to
    about :data:`CALL_SECONDS` of work, so the budget and Ctrl-C are seen within that time.
    ``info["time"]`` is the call's time divided by its iterations. With several processes
    (``jax.distributed``) the calls only double, and Ctrl-C and the time budget of any process
    stop all of them after the same call. A call that stops on a
    non-finite number has already stepped past the iterate to keep; the driver runs the same
    compiled call again, from the start of that call (or of the one before), up to that iterate.

    Divergence: a non-finite loss at iterate ``j`` keeps iterate ``j−1`` (the last one whose loss
    was finite); a non-finite gradient norm or a non-finite next iterate keeps iterate ``j``.
    Either way the status is ``"diverged"`` and ``info["diverged_at"]`` is ``j`` (``j+1`` for a
    non-finite next iterate). SIGINT (Ctrl-C) finishes the current call, then stops with
    ``"interrupted"``, keeping (and checkpointing) the last completed iterate; a second SIGINT
    raises ``KeyboardInterrupt`` at once (the periodic checkpoints stay).
    """
    budget = _grouped(Budget, "budget", budget, max_iters=max_iters, max_seconds=max_seconds, tol=tol,
                      target_loss=target_loss)
    ck = _grouped(Checkpoints, "checkpoints", checkpoints, path=checkpoint, every=checkpoint_every,
                  resume=resume, meta=checkpoint_meta)
    if steps_per_call is not None and not (is_count(steps_per_call, 1) and steps_per_call <= MAX_STEPS_PER_CALL):
        raise ValueError(f"steps_per_call must be an integer from 1 to {MAX_STEPS_PER_CALL}, "
                         f"got {steps_per_call!r}")
    _check_controls(problem, controls)
    if test is not None:
        problem.with_data(*test)  # validate the test split now, not after the solve
    if callable(getattr(solver, "run", None)):
        # Not a jitted step (the direct solver is one IPOPT solve): the solver runs itself.
        if ck.path is not None or ck.resume is not None:
            raise ValueError(f"solver {getattr(solver, 'name', solver)!r} is one solve with no "
                             "state to checkpoint; drop checkpoint/resume")
        return solver.run(problem, controls, budget, key=key, seed=seed, test=test, progress=progress,
                          callback=callback)
    key = jax.random.PRNGKey(seed) if key is None else key
    solver_name = getattr(solver, "name", type(solver).__name__)
    state = solver.init(problem, controls, key=key)
    fingerprint = _fingerprint(problem)
    state, start_it, history = _resumed(ck.resume, state, solver_name, fingerprint)
    meta = {"solver": solver_name, "problem": fingerprint, **(ck.meta or {})}
    save = _checkpoint_writer(ck.path, history, meta)

    with _SigintFlag() as stop:
        step, names, _, compile_time = _compile(solver, problem, state)  # timed apart
        loop = _Loop(step, names, problem, state, start_it, history, callback, budget)
        bar = _progress_bar(progress, budget.max_iters, start_it, solver_name)
        start = time.perf_counter()
        try:
            loop.run(ck.every, steps_per_call, stop, bar, save, start)
        except KeyboardInterrupt:
            if stop.installed:  # a second Ctrl-C: stop everything now (e.g. a whole sweep)
                raise
            loop.status = "interrupted"  # SIGINT outside the main thread: no flag, stop cleanly
        finally:
            bar.close()
        if save is not None and loop.status != "diverged":
            save(loop.state, loop.it)
    wall = time.perf_counter() - start
    final = loop.keep.controls if loop.status == "diverged" else loop.state.controls
    summary = {
        "solver": solver_name,
        "iterations": len(history.get("loss", [])),
        "wall_time": wall,
        "compile_time": compile_time,
        "diverged_at": loop.diverged_at,
        "resumed_from": start_it if ck.resume is not None else None,
        "problem": problem.describe(),
    }
    summary.update(evaluate(problem, final, test))
    if loop.status == "diverged":
        warnings.warn(f"{solver_name} diverged at iteration {loop.diverged_at} (non-finite loss, "
                      "gradient or iterate); keeping the last finite iterate", RuntimeWarning,
                      stacklevel=2)
    hist = {k: np.asarray(v) for k, v in history.items()}
    return cn.Result(final, hist, loop.status, summary)


#: ``solve``'s one-by-one spelling of the configuration objects' fields, for error messages.
_SPELLED = {"path": "checkpoint", "every": "checkpoint_every", "resume": "resume", "meta": "checkpoint_meta"}


def _grouped(cls, name, given, **fields):
    """``given`` (an instance of ``cls``), or ``cls`` built from the options passed one by one;
    both at once is an error (which would win is not obvious)."""
    loose = {k: v for k, v in fields.items() if v is not None}
    if given is None:
        return cls(**loose)
    if not isinstance(given, cls):
        raise TypeError(f"{name} must be a solvers.{cls.__name__}, got {type(given).__name__}")
    if loose:
        spelled = ", ".join(_SPELLED.get(k, k) for k in loose)
        raise TypeError(f"pass {spelled} inside {name}={cls.__name__}(...) or on its own, not both")
    return given


def _resumed(resume, state, solver_name, fingerprint):
    """``(state, iteration, history)`` to start from: the checkpoint ``resume`` (checked against
    the solver and the problem), or ``state`` at iteration 0 with an empty history."""
    if resume is None:
        return state, 0, {}
    ck = cn.io.load_checkpoint(resume, like=state)
    if ck.meta.get("solver") != solver_name:
        raise ValueError(f"checkpoint {resume} was written by solver {ck.meta.get('solver')!r}, "
                         f"not {solver_name!r}; resume with the same solver")
    saved = ck.meta.get("problem") or {}
    if saved != fingerprint:
        diff = sorted(k for k in set(fingerprint) | set(saved) if saved.get(k) != fingerprint.get(k))
        raise ValueError(f"checkpoint {resume} was written for another problem (differs in "
                         f"{', '.join(diff)}); resume with the same problem and data")
    return ck.state, ck.iteration, {k: [float(x) for x in v] for k, v in ck.history.items()}


def _checkpoint_writer(checkpoint, history, meta):
    """``save(state, iteration)`` writing ``checkpoint`` with the history so far, or ``None``."""
    if checkpoint is None:
        return None

    def save(state, n):
        if jax.process_index() != 0:  # several processes (jax.distributed): one writer
            return
        cn.io.save_checkpoint(checkpoint, state, iteration=n, history=history, meta=meta)

    return save


def _progress_bar(progress, max_iters, start_it, name):
    from tqdm.auto import tqdm

    return tqdm(total=max_iters, initial=min(start_it, max_iters),
                disable=(None if progress is None else not progress), desc=name, leave=False)


class _Loop:
    """The iterations of one solve, in calls (module doc, "Calls"): ``state`` is the last iterate
    completed (``it`` iterations), ``status`` how the loop stands, ``keep`` the iterate a
    divergence keeps, ``before`` the previous call's ``(start state, iterations)`` for
    :func:`_replay`."""

    def __init__(self, step, names, problem, state, it, history, callback, budget):
        self.step, self.names, self.problem = step, names, problem
        self.state, self.it, self.history, self.callback = state, it, history, callback
        self.target_loss, self.tol = budget.target_loss, budget.tol
        self.max_iters, self.max_seconds = budget.max_iters, budget.max_seconds
        self.status, self.diverged_at, self.keep, self.before = "max_iters", None, None, None

    def run(self, checkpoint_every, steps_per_call, stop, bar, save, start):
        max_iters, max_seconds = self.max_iters, self.max_seconds
        per_call = 1  # iterations of the next call: the first runs one, then _next_call
        while self.it < max_iters and self.status == "max_iters":
            n = min(per_call, max_iters - self.it)
            if checkpoint_every is not None:  # a call ends on every checkpoint
                n = min(n, checkpoint_every - self.it % checkpoint_every)
            done, seconds, info = self.call(n)
            if self.status == "diverged":
                break
            bar.update(done)
            bar.set_postfix(loss=f"{info['loss']:.4g}")
            if checkpoint_every is not None and self.it % checkpoint_every == 0:
                save(self.state, self.it)
            left = None if max_seconds is None else max_seconds - (time.perf_counter() - start)
            interrupted, out_of_time = _agree(stop.requested, left is not None and left <= 0)
            if self.status == "max_iters" and interrupted and self.it < max_iters:
                self.status = "interrupted"
            elif self.status == "max_iters" and out_of_time:
                self.status = "max_seconds"
            per_call = _next_call(steps_per_call, done, seconds, left)

    def call(self, n):
        """One compiled call of up to ``n`` iterations, then :func:`_compiled_step`'s checks
        replayed row by row on the host; returns ``(iterations, seconds each, last info)``."""
        t = time.perf_counter()
        limits = _call_args(n, self.target_loss, self.tol)
        new_state, rows = self.step(self.problem, self.state, *limits)
        done = _unpack(self.names, rows)  # one transfer for all numbers of the call
        seconds = (time.perf_counter() - t) / len(done)
        info = None
        for row, (info, finite) in enumerate(done):
            info["time"] = seconds
            if not np.isfinite(info["loss"]):
                self._diverged(self.it, row - 1)  # iterate j−1
                return len(done), seconds, info
            for k, v in info.items():
                self.history.setdefault(k, []).append(v)
            if not np.isfinite(info.get("grad_norm", 0.0)) or not finite:
                self._diverged(self.it + (0 if finite else 1), row)  # iterate j
                return len(done), seconds, info
            self.it += 1
            if self.callback is not None:
                self.callback(self.it - 1, info)
            # Compared in the step's precision, as the call did.
            if limits[1].dtype.type(info["loss"]) <= limits[1]:
                self.status = "target"
            elif "grad_norm" in info and limits[2].dtype.type(info["grad_norm"]) <= limits[2]:
                self.status = "converged"
        self.before, self.state = (self.state, len(done)), new_state
        return len(done), seconds, info

    def _diverged(self, at, row):
        self.status, self.diverged_at = "diverged", at
        self.keep = _replay(self.step, self.problem, self.state, row, self.before)


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
