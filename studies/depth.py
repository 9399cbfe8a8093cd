"""The depth-versus-turnpike study as a sweep: horizons ``T`` at a fixed step ``h``
(``N = round(T/h)`` layers) × seeds.

Per seed: the turnpike measurements of :func:`solvers.depth_study.measure` for every
horizon (``‖θ(t)‖``, the flow speed, the fitted rates ``μ``, the ε-band) and the slope of
``log(training error)`` against ``log T``; figures ``error.png`` (error against ``T``, a line per
seed), ``theta_norm_seed<s>.png`` and ``speed_seed<s>.png`` (against ``t/T``).

The runs go to ``OUT/runs/`` like any sweep (so the study resumes, and every run can be
rebuilt from its folder); the study's summary ``OUT/turnpike.json`` is computed from the run
folders. Runs are independent: no warm start from a shorter horizon (use
:func:`solvers.depth_study.depth_study` for that).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from controlnet.io import atomic_write, to_json
from solvers.depth_study import horizon_grid, loglog_slope, measure, run_record

from .run import load_run, run_dir
from .sweep import grid, sweep

__all__ = ["depth_study", "depth_specs", "measure_run"]


def depth_specs(problem: str = "ring", horizons=(1.0, 2.0, 4.0, 8.0), *, step: float = 0.25, seeds=(0,),
                solver="gd", tracking: float = 0.0, max_iters: int = 1000, init_scale: float = 0.1,
                precision: str = "float32", problem_options: dict | None = None,
                fixed_T: float | None = None) -> list[dict]:
    """The run specs of :func:`depth_study`: one per ``(T, N = round(T/h))`` and seed; with
    ``fixed_T`` every run has horizon ``fixed_T`` and ``N = round(T_j/h)`` layers (depth at a
    fixed horizon, :func:`solvers.depth_study.horizon_grid`)."""
    base = {"problem": {"name": problem, **(problem_options or {}), "tracking": float(tracking)},
            "solver": solver, "budget": {"max_iters": max_iters}, "init_scale": init_scale,
            "precision": precision}
    pairs = [(T, N) for T, N in horizon_grid(horizons, step, fixed_T)]
    return grid(base, {("problem.horizon", "problem.layers"): pairs, "seed": list(seeds)})


def measure_run(folder, eps: float = 0.1) -> dict:
    """The depth study's numbers for one finished run, from its folder, with no solver step
    compiled: :func:`solvers.depth_study.measure` of the saved controls (the turnpike profile,
    fits and norms) and :func:`solvers.depth_study.run_record` of its ``result.json`` (status,
    iterations, iteration and compile times, losses), its seed and folder name."""
    loaded = load_run(folder)
    m = {**measure(loaded.problem, loaded.controls, eps=eps), **run_record(loaded.result.status, loaded.result.info)}
    m.update(seed=loaded.spec["seed"], run=Path(folder).name)
    return m


def _save(fig, path):
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def depth_study(out, problem: str = "ring", horizons=(1.0, 2.0, 4.0, 8.0), *, step: float = 0.25, seeds=(0,),
                eps: float = 0.1, executor=None, progress: bool | None = None, **options) -> dict:
    """Sweep ``T`` at the fixed step ``step`` over ``seeds`` (module doc); ``options`` go to
    :func:`depth_specs` (``solver``, ``tracking``, ``max_iters``, ``init_scale``, ``precision``,
    ``problem_options``, ``fixed_T``: then the slope is against ``log N``). Returns and writes ``OUT/turnpike.json``: ``{"step", "eps",
    "seeds": {seed: {"runs": [...by T], "slope", "slope_against": "T"}}, "slope_mean"}``."""
    import matplotlib

    matplotlib.use("Agg")
    from controlnet import plotting

    out = Path(out)
    specs = depth_specs(problem, horizons, step=step, seeds=seeds, **options)
    sweep(specs, out, executor=executor, progress=progress)
    per_seed = {}
    for spec in specs:
        folder = run_dir(out, spec)
        if (folder / "result.json").is_file():
            per_seed.setdefault(spec["seed"], []).append(measure_run(folder, eps))
    studies, against = {}, "T" if options.get("fixed_T") is None else "N"
    for seed, runs in sorted(per_seed.items()):
        runs.sort(key=lambda r: r[against])
        studies[str(seed)] = {"runs": runs, "slope_against": against,
                              "slope": loglog_slope([r[against] for r in runs], [r["training_error"] for r in runs])}
    slopes = [s["slope"] for s in studies.values() if math.isfinite(s["slope"])]
    summary = {"step": float(step), "eps": eps, "seeds": studies,
               "slope_mean": float(np.mean(slopes)) if slopes else None}
    atomic_write(out / "turnpike.json", lambda f: f.write(to_json(summary, indent=1).encode()))
    if studies:
        series = {f"seed {s}": ([r[against] for r in st["runs"]], [r["training_error"] for r in st["runs"]])
                  for s, st in studies.items()}
        _save(plotting.plot_error_vs_horizon(series, xlabel="horizon T" if against == "T" else "layers N"),
              out / "error.png")
        for s, st in studies.items():
            for key in ("theta_norm", "speed"):
                _save(plotting.plot_turnpike(st["runs"], key, eps=eps, title=f"seed {s}"), out / f"{key}_seed{s}.png")
    return summary
