"""Several solvers on one problem from the same initial controls: one table, one summary, two plots.

    cmp = compare(problem, ["gd", "msa", "emsa"], controls, max_iters=300)
    print(format_table(cmp.summary)); save(cmp, "runs/cmp")

Solvers are given by their names in :data:`solvers.SOLVERS` (any solver registered there
appears without changes here), as solver objects, or as a dict label → name or object. Each runs through :func:`solvers.solve`
with the same controls, key and budget. The *time to target* is read off each history
afterwards (the solves are not stopped at the target, so the curves stay complete): the wall
time, summed over iterations, until the logged loss first reaches ``target_loss``; by default
the target is a tenfold cut of the initial loss, ``J(θ⁰)/10``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

import controlnet as cn

from .driver import solve

__all__ = ["Comparison", "compare", "entry", "time_to_target", "format_table", "save", "FIELDS"]

#: The fields of one summary entry, in the table's column order.
FIELDS = ("loss", "accuracy", "iterations", "wall_time", "time_to_target", "iters_to_target", "status")


class Comparison(NamedTuple):
    """``results`` (name → :class:`controlnet.Result`), ``summary`` (name → entry), ``target_loss``."""

    results: dict
    summary: dict
    target_loss: float


def time_to_target(history: dict, target: float):
    """``(seconds, iterations)`` until ``history["loss"]`` first is ``<= target``, else ``(None, None)``.

    ``history["loss"][j]`` is the loss of iterate ``j``, reached after the ``j`` steps before
    it: the time is the sum of ``history["time"][:j]`` (inside one of the driver's calls of many
    iterations, each has the call's mean time, so ``j`` inside a call is interpolated).
    """
    loss = np.asarray(history.get("loss", ()), dtype=float)
    hit = np.flatnonzero(loss <= target)
    if hit.size == 0:
        return None, None
    j = int(hit[0])
    return float(np.sum(np.asarray(history["time"], dtype=float)[:j])), j


def _solver(spec, options):
    from . import make_solver

    if isinstance(spec, str):
        return spec, make_solver(spec, **options.get(spec, {}))
    return getattr(spec, "name", type(spec).__name__), spec


def _finite(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def compare(problem: cn.ControlProblem, solvers, controls: cn.Controls, *, options=None,
            max_iters: int = 300, max_seconds: float | None = None, target_loss: float | None = None,
            seed: int = 0, test=None, progress: bool = False) -> Comparison:
    """Run every solver in ``solvers`` on ``problem`` from ``controls``.

    Args:
        solvers: names in :data:`solvers.SOLVERS`, solver objects (labelled by their ``name``),
            or a dict label → name or object.
        options: per solver name, keyword options for :func:`solvers.make_solver`.
        max_iters: the iteration budget of *each* solve.
        max_seconds: the time budget of *each* solve.
        target_loss: the loss level for the time-to-target columns (default ``J(θ⁰)/10``).
        seed: the solvers' PRNG seed (minibatches), the same for all.
        test: optional held-out ``(x, y)`` for ``test_accuracy``.
    """
    options = options or {}
    if isinstance(solvers, dict):
        named = [(label, _solver(s, options)[1]) for label, s in solvers.items()]
    else:
        named = [_solver(s, options) for s in ([solvers] if isinstance(solvers, str) else solvers)]
    if not named:
        raise ValueError("no solvers given; pass names such as ['gd', 'emsa']")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"solver names must be distinct, got {names}")
    if target_loss is None:
        target_loss = cn.evaluate(problem, controls)["loss"] / 10.0
    results, summary = {}, {}
    for name, solver in named:
        res = solve(solver, problem, controls, seed=seed, max_iters=max_iters,
                    max_seconds=max_seconds, test=test, progress=progress)
        results[name] = res
        summary[name] = entry(res, target_loss)
    return Comparison(results, summary, float(target_loss))


def entry(result: cn.Result, target_loss: float) -> dict:
    """One solver's summary entry from its result: final ``loss``, ``accuracy``,
    ``test_accuracy``, ``iterations``, ``wall_time`` (the iterations), ``compile_time``, the
    :func:`time_to_target` of ``target_loss`` (``time_to_target``, ``iters_to_target``),
    ``target_loss`` and ``status``; a number that is not finite is ``None``."""
    seconds, iters = time_to_target(result.history, target_loss)
    info = result.info
    return {
        "loss": _finite(info.get("loss")),
        "accuracy": _finite(info.get("accuracy")),
        "test_accuracy": _finite(info.get("test_accuracy")),
        "iterations": int(info.get("iterations", 0)),
        "wall_time": _finite(info.get("wall_time")),
        "compile_time": _finite(info.get("compile_time")),
        "time_to_target": seconds,
        "iters_to_target": iters,
        "target_loss": float(target_loss),
        "status": result.status,
    }


def format_table(summary: dict) -> str:
    """One plain-text table, a row per solver, the columns of :data:`FIELDS`."""
    head = ("solver", "final loss", "accuracy", "iters", "wall [s]", "to target [s]", "iters to target", "status")

    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [head]
    for name, e in summary.items():
        rows.append((name, cell(e["loss"], ".4g"), cell(e["accuracy"], ".3f"), str(e["iterations"]),
                     cell(e["wall_time"], ".2f"), cell(e["time_to_target"], ".2f"),
                     cell(e["iters_to_target"], "d"), e["status"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_loss(comparison: Comparison, against: str = "iteration"):
    """Loss of every solver against iterations or wall time, the target as a dashed line."""
    from controlnet import plotting

    hists = {n: r.history for n, r in comparison.results.items() if len(r.history.get("loss", ()))}
    fig = plotting.plot_history(hists, "loss", against=against)
    ax = fig.axes[0]
    ax.axhline(comparison.target_loss, color="gray", ls="--", lw=0.8, label="target loss")
    ax.legend()
    return fig


def save(comparison: Comparison, out) -> list[Path]:
    """Write ``summary.json`` (name → summary entry), ``loss_vs_iter.png``, ``loss_vs_time.png`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controlnet.io import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for against, fname in (("iteration", "loss_vs_iter.png"), ("time", "loss_vs_time.png")):
        fig = plot_loss(comparison, against)
        atomic_write(out / fname, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        paths.append(out / fname)
    text = cn.io.to_json(comparison.summary, indent=2)
    atomic_write(out / "summary.json", lambda f: f.write(text.encode()))
    return [out / "summary.json"] + paths
