"""Solvers compared over seeds, as a sweep: solvers × seeds on one problem, each seed's solvers
from the same initial controls.

Per solver, the mean and standard deviation over seeds of the final loss, accuracies and wall
time, and the time to a tenfold cut of the run's initial loss
(:func:`solvers.compare.time_to_target`), in ``OUT/compare.json``, computed from the run folders.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import controlnet as cn
from controlnet.io import atomic_write, to_json
from solvers.compare import time_to_target

from .run import is_finished, run_dir
from .sweep import grid, sweep

__all__ = ["compare"]


def _label(solver) -> str:
    """``gd`` for a name, ``gd(lr=0.05)`` for a mapping with options."""
    if isinstance(solver, str):
        return solver
    options = ", ".join(f"{k}={v}" for k, v in sorted(solver.items()) if k != "name")
    return f"{solver['name']}({options})" if options else solver["name"]


def _stats(values) -> dict:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None, "n": len(v)}


def compare(out, problem: str = "ring", solvers=("gd", "emsa"), *, seeds=(0, 1, 2), max_iters: int = 300,
            precision: str = "float32", problem_options: dict | None = None, executor=None,
            progress: bool | None = None) -> dict:
    """Every solver of ``solvers`` (names or spec mappings) on ``problem`` over ``seeds``, each
    seed's solvers from the same initial controls (module doc). Returns and writes
    ``OUT/compare.json``: per solver label, ``{metric: {"mean", "std", "n"}}`` over seeds for
    ``loss``, ``accuracy``, ``test_accuracy``, ``wall_time``, ``time_to_target``, with the
    statuses."""
    labels = [_label(s) for s in solvers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"solvers must be distinct, got {labels}")
    out = Path(out)
    base = {"problem": {"name": problem, **(problem_options or {})}, "solver": "gd",
            "budget": {"max_iters": max_iters}, "precision": precision}
    specs = grid(base, {"solver": list(solvers), "seed": list(seeds)})
    sweep(specs, out, executor=executor, progress=progress)
    rows = {}
    for spec in specs:
        label = _label(spec["solver"])
        folder = run_dir(out, spec)
        if not is_finished(folder):
            rows.setdefault(label, []).append({"status": "failed or pending"})
            continue
        result = cn.Result.load(folder)
        seconds, _ = time_to_target(result.history, float(result.history["loss"][0]) / 10.0)
        rows.setdefault(label, []).append({**{k: result.info.get(k) for k in ("loss", "accuracy", "test_accuracy",
                                                                              "wall_time")},
                                           "time_to_target": seconds, "status": result.status})
    summary = {label: {**{k: _stats(r.get(k) for r in rs) for k in ("loss", "accuracy", "test_accuracy",
                                                                     "wall_time", "time_to_target")},
                       "statuses": [r["status"] for r in rs]} for label, rs in rows.items()}
    atomic_write(out / "compare.json", lambda f: f.write(to_json(summary, indent=1).encode()))
    return summary
