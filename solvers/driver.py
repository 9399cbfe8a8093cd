"""The ``solve`` driver shared by every solver.

A solver is one of the two kinds of :mod:`solvers.protocol`: a *step solver* (``name``,
``init(problem, controls, *, key) -> state``, a pure ``step(problem, state) -> (state, info)``)
or a *one-shot solver* (``name``, ``run(problem, controls, budget, ...) -> Result``), to which
``solve`` hands over. Anything else is refused before any work, with what to pass instead.

``solve`` compiles ``step`` once, inside a device-side loop that runs many iterations per call
(:func:`_run`), records ``info`` and the wall time of every iteration, stops on a budget
(iterations, seconds), a tolerance on the gradient norm or a target loss, and returns a
:class:`controlnet.Result`. The solver is an *argument* of that compiled loop: a solver declared
with :func:`controlnet.pytrees.pytree_dataclass` passes its numbers (learning rate, ``ρ``) as
traced leaves, so solves that differ only in them, or that use equal configurations, run one
compiled program. A non-finite loss or iterate stops the solve with status ``"diverged"`` and
keeps the last finite iterate; a loss that stays far above its best stops it with ``"diverged"``
too and keeps the best iterate (:mod:`solvers.divergence`); Ctrl-C stops it with
``"interrupted"`` and keeps the last completed iterate. With a checkpoint file, the whole solver
state (controls, optimizer state, PRNG key, iteration count) and the history are saved every
``K`` iterations, on Ctrl-C and at the end, and ``resume=`` continues the same history as an
uninterrupted run (:mod:`solvers.checkpointing`).
"""

from __future__ import annotations

import time
import warnings
import jax
import jax.numpy as jnp
import numpy as np

import controlnet as cn

from .checkpointing import check_checkpoint_path, checkpoint_writer, fingerprint, resumed
from .config import MAX_STEPS_PER_CALL, Budget, Checkpoints, grouped, is_count
from .divergence import DivergenceWatch
from .interrupt import SigintFlag
from .inputs import check_controls, check_test
from .protocol import OneShotSolver, Whole, as_argument, solver_kind, solver_name
from .trees import joined

__all__ = ["solve"]


# A compiled call runs up to MAX_STEPS_PER_CALL iterations in one ``lax.while_loop``, and the
# driver sizes its calls to about CALL_SECONDS each (module doc, "Calls").
CALL_SECONDS = 0.05
# Every iteration's numbers are one row of this width: the info entries, then the finiteness flag.
_ROW = 32


#: The ``info`` keys of each compiled loop, in the order of its rows, by the pytree structure of
#: its ``(solver, problem, state)``; filled when :func:`_run` is traced.
_NAMES: dict = {}


def _run(solver, problem, state, n, target, tol):
    """Up to ``n`` iterations of ``solver.step`` in one ``lax.while_loop``: ``(state, rows)``.

    Jitted once per structure of ``(solver, problem, state)`` (the solver's numbers are traced
    leaves; ``n`` and the thresholds are arguments: any count, one compile).

    - ``rows[i]`` packs iteration ``i``'s ``info`` (in the order of ``_NAMES``), then whether its
      new controls are all finite, and a 1 in the last column (the rows of iterations not run
      are zeros): one output buffer and one transfer per call (separate scalars per iteration,
      or a separate count, cost a measurable share of a small problem's step);
    - it stops early, after fewer than ``n`` iterations, at the first iteration whose loss is
      ``<= target`` or gradient norm ``<= tol``, or whose loss, gradient norm or new controls
      are not finite: ``state`` is then of no use, and :func:`solve` gets the iterate it keeps
      by running the same call again from an earlier state, for fewer iterations
      (:func:`_replay`);
    - ``state`` is the iterate after the last iteration.

    The loop carries one state and nothing else (selecting between states inside the loop, to
    stop on the last finite one, made the compile markedly longer). Every iteration of every
    call runs the same compiled loop body, so a history does not depend on how the iterations
    were split into calls.
    """
    dtype = jnp.result_type(float)
    structure = jax.tree_util.tree_structure((solver, problem, state))
    inner = solver.solver if isinstance(solver, Whole) else solver

    def body(carry):
        state, i, rows, _ = carry
        new, info = inner.step(problem, state)
        keys = _NAMES[structure] = tuple(info)
        if len(keys) > _ROW - 2:
            raise ValueError(f"solver {solver_name(inner)!r} logs {len(keys)} numbers per iteration; "
                             f"the driver packs at most {_ROW - 2}")
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


_run_jit = jax.jit(_run)


def _call_args(n, target=None, tol=None):
    """The count and thresholds of a call of :func:`_run`, typed so that every call
    (whatever the numbers, ``None`` included) hits the same compiled loop."""
    dtype = jnp.result_type(float)
    off = lambda v: np.asarray(-np.inf if v is None else v, dtype)  # noqa: E731
    if not 1 <= n <= MAX_STEPS_PER_CALL:
        raise ValueError(f"a call runs 1 to {MAX_STEPS_PER_CALL} iterations, got {n}")
    return np.asarray(n, np.int32), off(target), off(tol)


def _compile(arg, problem, state):
    """Compile the iterations for ``(arg, problem, state)`` (``arg``: the solver as
    :func:`~solvers.protocol.as_argument` gives it): ``(run, names, seconds)``.

    ``run(problem, state, *_call_args(n, target, tol))`` runs a call (jit's cache then holds the
    program: nothing is compiled twice, and a later solve of the same structure compiles
    nothing); ``names`` are the ``info`` keys in the order of each row (:func:`_unpack`).
    """
    t0 = time.perf_counter()
    _run_jit.lower(arg, problem, state, *_call_args(1)).compile()
    seconds = time.perf_counter() - t0

    def run(problem, state, n, target, tol):
        return _run_jit(arg, problem, state, n, target, tol)

    return run, _NAMES[jax.tree_util.tree_structure((arg, problem, state))], seconds


def _unpack(names, rows):
    """``[(info, finite), ...]`` on the host, one per iteration run, from a
    call of :func:`_run`'s ``rows`` (one transfer)."""
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
    (:func:`_run`), so bit for bit the iterate the failed call passed through.

    ``k = -1`` is the iterate before ``start``: ``before = (state, m)``, the previous call's
    start and its iteration count, replayed ``m - 1`` iterations (``None``: ``start`` was the
    first iterate of the solve, which is then kept)."""
    if k < 0:
        if before is None:
            return start
        start, k = before[0], before[1] - 1
    return start if k == 0 else run(problem, start, *_call_args(k))[0]


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
    number (:func:`_run`); the host then logs every iteration of the call and runs the
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
    A loss above ``budget.divergence_factor`` times its best (and above its first value) for
    ``budget.divergence_patience`` consecutive iterations, ending at iterate ``j``, keeps the
    iterate of the lowest loss seen (:mod:`solvers.divergence`; after a resume, the lowest
    since the resume: earlier iterates are not kept). Either way the status is ``"diverged"``,
    ``info["diverged_at"]`` is ``j`` (``j+1`` for a non-finite next iterate), and
    ``info["kept_iteration"]`` is the iterate returned (for any status). SIGINT (Ctrl-C)
    finishes the current call, then stops with ``"interrupted"``, keeping (and checkpointing)
    the last completed iterate; a second SIGINT raises ``KeyboardInterrupt`` at once (the
    periodic checkpoints stay).

    Every argument is checked before anything is compiled or written: the solver's kind
    (:func:`solvers.protocol.solver_kind`), the budget and checkpoint options, the controls,
    the test split and the checkpoint file's directory.
    """
    kind = solver_kind(solver)
    budget = grouped(Budget, "budget", budget, max_iters=max_iters, max_seconds=max_seconds, tol=tol,
                      target_loss=target_loss)
    ck = grouped(Checkpoints, "checkpoints", checkpoints, path=checkpoint, every=checkpoint_every,
                  resume=resume, meta=checkpoint_meta)
    if steps_per_call is not None and not (is_count(steps_per_call, 1) and steps_per_call <= MAX_STEPS_PER_CALL):
        raise ValueError(f"steps_per_call must be an integer from 1 to {MAX_STEPS_PER_CALL}, "
                         f"got {steps_per_call!r}")
    check_controls(problem, controls)
    check_test(problem, test)
    name = solver_name(solver)
    if kind is OneShotSolver:
        if ck.path is not None or ck.resume is not None:
            raise ValueError(f"solver {name!r} is one solve with no state to checkpoint; drop "
                             "checkpoint/resume")
        return solver.run(problem, controls, budget, key=key, seed=seed, test=test, progress=progress,
                          callback=callback)
    check_checkpoint_path(ck.path)
    arg = as_argument(solver)
    key = jax.random.PRNGKey(seed) if key is None else key
    state = solver.init(problem, controls, key=key)
    problem_fingerprint = fingerprint(problem)
    state, start_it, history = resumed(ck.resume, state, name, problem_fingerprint)
    meta = {"solver": name, "problem": problem_fingerprint, **(ck.meta or {})}
    save = checkpoint_writer(ck.path, history, meta)

    with SigintFlag() as stop:
        step, names, compile_time = _compile(arg, problem, state)  # timed apart
        loop = _Loop(step, names, problem, state, start_it, history, callback, budget)
        bar = _progress_bar(progress, budget.max_iters, start_it, name)
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
        "solver": name,
        "iterations": len(history.get("loss", [])),
        "wall_time": wall,
        "compile_time": compile_time,
        "diverged_at": loop.diverged_at,
        "kept_iteration": loop.kept if loop.status == "diverged" else loop.it,
        "resumed_from": start_it if ck.resume is not None else None,
        "problem": problem.describe(),
    }
    summary.update(cn.evaluate(problem, final, test))
    if loop.status == "diverged":
        warnings.warn(f"{name} diverged at iteration {loop.diverged_at} ({loop.why}); keeping iterate "
                      f"{loop.kept}, {loop.which}", RuntimeWarning, stacklevel=2)
    hist = {k: np.asarray(v) for k, v in history.items()}
    return cn.Result(final, hist, loop.status, summary)


def _progress_bar(progress, max_iters, start_it, name):
    from tqdm.auto import tqdm

    return tqdm(total=max_iters, initial=min(start_it, max_iters),
                disable=(None if progress is None else not progress), desc=name, leave=False)


class _Loop:
    """The iterations of one solve, in calls (module doc, "Calls"): ``state`` is the last iterate
    completed (``it`` iterations), ``status`` how the loop stands; after a divergence ``keep``
    is the iterate kept, ``kept`` its number and ``why`` the reason. ``before`` is the previous
    call's ``(start state, iterations)`` and ``best`` the ``(call start state, row, iterate,
    loss)`` of the lowest loss since this solve started, both for :func:`_replay`."""

    def __init__(self, step, names, problem, state, it, history, callback, budget):
        self.step, self.names, self.problem = step, names, problem
        self.state, self.it, self.history, self.callback = state, it, history, callback
        self.target_loss, self.tol = budget.target_loss, budget.tol
        self.max_iters, self.max_seconds = budget.max_iters, budget.max_seconds
        self.status, self.diverged_at, self.keep, self.before = "max_iters", None, None, None
        self.kept, self.why, self.which, self.best = None, None, None, None
        self.watch = DivergenceWatch(budget.divergence_factor, budget.divergence_patience)
        for loss in history.get("loss", []):  # a resumed run decides as an uninterrupted one
            self.watch.see(loss)

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
        """One compiled call of up to ``n`` iterations, then :func:`_run`'s checks replayed row
        by row on the host, and the trend of the loss (:mod:`solvers.divergence`); returns
        ``(iterations, seconds each, last info)``."""
        t = time.perf_counter()
        limits = _call_args(n, self.target_loss, self.tol)
        new_state, rows = self.step(self.problem, self.state, *limits)
        done = _unpack(self.names, rows)  # one transfer for all numbers of the call
        seconds = (time.perf_counter() - t) / len(done)
        info = None
        for row, (info, finite) in enumerate(done):
            info["time"] = seconds
            if not np.isfinite(info["loss"]):
                kept = self.it if row == 0 and self.before is None else self.it - 1
                self._diverged(self.it, row - 1, kept, "non-finite loss")  # iterate j−1
                return len(done), seconds, info
            for k, v in info.items():
                self.history.setdefault(k, []).append(v)
            if not np.isfinite(info.get("grad_norm", 0.0)) or not finite:
                self._diverged(self.it + (0 if finite else 1), row, self.it,
                               "non-finite gradient or iterate")  # iterate j
                return len(done), seconds, info
            if self.best is None or info["loss"] < self.best[3]:
                self.best = (self.state, row, self.it, info["loss"])
            if self.watch.see(info["loss"]):
                self._diverged_by_trend()
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

    def _diverged(self, at, row, kept, why):
        self.status, self.diverged_at, self.kept, self.why = "diverged", at, kept, why
        self.which = "the last finite one"
        self.keep = _replay(self.step, self.problem, self.state, row, self.before)

    def _diverged_by_trend(self):
        start, row, kept, loss = self.best
        w = self.watch
        self.status, self.diverged_at, self.kept = "diverged", self.it, kept
        self.why = f"loss above {w.factor:g} x its best {w.best:.4g} for {w.patience} iterations"
        self.which = f"the lowest loss since this solve started ({loss:.4g})"
        self.keep = _replay(self.step, self.problem, start, row)
