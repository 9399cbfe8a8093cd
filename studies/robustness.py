"""The robustness study as a sweep: each network is a run spec; attacked and certified accuracy
against the attack radius, measured from the run folders.

    studies.robustness_study("runs/rob", {"resnet": {"name": "two_moons", "dynamics": "inner"},
                                          "lipschitz": {"name": "two_moons", "dynamics": "lipschitz",
                                                        "integrator": "lie"}},
                             eps=[0.0, 0.1, 0.3], max_iters=2000)

Every network trains with the same solver, seed (so ``init_controls(PRNGKey(seed))``) and
budget into ``OUT/runs/<hash>`` like any sweep (so the study resumes); then
:func:`solvers.robustness_study.measure` attacks its test split at every radius. The summary
``OUT/robustness.json`` maps each label to its row (with the run's ``status`` and ``run``).
"""

from __future__ import annotations

from pathlib import Path

from controlnet.io import atomic_write, to_json
from solvers.robustness_study import measure

from .run import is_finished, load_run, run_dir
from .sweep import sweep

__all__ = ["robustness_study", "robustness_specs"]


def robustness_specs(networks: dict, *, solver="gd", max_iters: int = 1000, seed: int = 0,
                     precision: str = "float32") -> dict:
    """Label -> run spec: ``networks`` maps a label to a ``problem`` mapping (``name`` and
    :func:`problems.make` options); all share ``solver``, ``seed`` and the budget."""
    if not isinstance(networks, dict) or not networks:
        raise ValueError("networks must be a non-empty mapping of labels to problem mappings")
    return {label: {"problem": dict(problem), "solver": solver, "seed": seed, "budget": {"max_iters": max_iters},
                    "init_scale": 1.0, "precision": precision} for label, problem in networks.items()}


def robustness_study(out, networks: dict, eps, *, steps: int = 40, norm: str = "2", executor=None,
                     progress: bool | None = None, **options) -> dict:
    """Train every network of ``networks`` (:func:`robustness_specs`; ``options``: ``solver``,
    ``max_iters``, ``seed``, ``precision``) as a sweep into ``out`` and measure each on its test
    split. Returns and writes ``OUT/robustness.json``: ``{label: row}`` (module doc); a run that
    failed has ``{"status": "failed", "run"}`` only. Bad radii are refused before any run."""
    eps = [float(e) for e in eps]
    if any(not e >= 0 for e in eps):
        raise ValueError(f"attack radii must be >= 0, got {eps}")
    out = Path(out)
    specs = robustness_specs(networks, **options)
    sweep(list(specs.values()), out, executor=executor, progress=progress, summary=False)
    rows = {}
    for label, spec in specs.items():
        folder = run_dir(out, spec)
        if not is_finished(folder):
            rows[label] = {"status": "failed", "run": folder.name}
            continue
        loaded = load_run(folder)
        if loaded.test is None:
            raise ValueError(f"network {label!r} has no test split to attack; give its problem test_samples")
        rows[label] = {**measure(loaded.problem, loaded.controls, loaded.test, eps, steps=steps, norm=norm),
                       "status": loaded.result.status, "run": folder.name}
    atomic_write(out / "robustness.json", lambda f: f.write(to_json(rows, indent=1).encode()))
    return rows
