"""The adversarial-training study as a sweep: defences × seeds, clean and robust test accuracy
against training wall time.

    studies.adversarial_study("runs/adv", {"name": "mnist1d"},
                              {"none": {"name": "gd", "lr": 5e-3, "batch_size": 128},
                               "pgd": {"name": "pgd_at", "eps": 0.1, "steps": 10, "batch_size": 128},
                               "yopo": {"name": "yopo", "eps": 0.1, "m": 5, "n": 3, "batch_size": 128}},
                              eps={"inf": [0.05, 0.1], "2": [0.5, 1.0]}, seeds=[0, 1, 2], max_iters=1500)

Every (defence, seed) is a run spec trained into ``OUT/runs/<hash>`` like any sweep (so the
study resumes); then each finished run's test split is attacked by the projected gradient attack
of :func:`controlnet.diagnostics.robustness.robust_accuracy` (``steps`` steps, no random start)
at every radius of every norm. ``OUT/adversarial.json`` holds the rows (one per run: clean and
robust accuracy, training wall time without compilation) and, per defence, the mean and standard
deviation over seeds.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from controlnet.diagnostics import robustness as rb
from controlnet.io import atomic_write, to_json

from .run import is_finished, load_run, run_dir
from .sweep import sweep

__all__ = ["adversarial_specs", "adversarial_study", "measure_robustness"]


def adversarial_specs(problem: dict, defences: dict, *, seeds=(0, 1, 2), max_iters: int = 1000,
                      precision: str = "float32") -> dict:
    """``(label, seed) -> run spec``: the problem mapping (``name`` and :func:`problems.make`
    options) trained by each defence's solver mapping with each seed."""
    if not isinstance(defences, dict) or not defences:
        raise ValueError("defences must be a non-empty mapping of labels to solver mappings")
    return {(label, int(seed)): {"problem": dict(problem), "solver": solver, "seed": int(seed),
                                 "budget": {"max_iters": max_iters}, "precision": precision}
            for label, solver in defences.items() for seed in seeds}


def _radii(eps) -> dict:
    if not isinstance(eps, dict) or not eps or set(eps) - set(rb.NORMS):
        raise ValueError(f"eps must map a norm ('inf' or '2') to its attack radii, got {eps!r}")
    out = {norm: [float(e) for e in radii] for norm, radii in eps.items()}
    if any(not e > 0 for radii in out.values() for e in radii):
        raise ValueError(f"attack radii must be > 0, got {eps!r}")
    return out


def measure_robustness(problem, controls, test, eps: dict, *, steps: int = 40) -> dict:
    """``{"clean": accuracy, "robust": {norm: [accuracy at each radius]}}`` on ``test = (x, y)``."""
    x, y = (jnp.asarray(a) for a in test)
    clean = float(jnp.mean(rb.margins(problem, controls, x, y) > 0))
    robust = {norm: [rb.robust_accuracy(problem, controls, x, y, e, norm=norm, steps=steps) for e in radii]
              for norm, radii in _radii(eps).items()}
    return {"clean": clean, "robust": robust}


def _stats(values) -> dict:
    a = np.asarray(values, float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def _table(rows, eps) -> dict:
    table = {}
    for label in dict.fromkeys(r["defence"] for r in rows):
        mine = [r for r in rows if r["defence"] == label and "clean" in r]
        if not mine:
            continue
        table[label] = {"clean": _stats([r["clean"] for r in mine]),
                        "wall_time": _stats([r["wall_time"] for r in mine]),
                        "robust": {norm: [_stats([r["robust"][norm][i] for r in mine]) for i in range(len(radii))]
                                   for norm, radii in eps.items()}}
    return table


def adversarial_study(out, problem: dict, defences: dict, eps: dict, *, seeds=(0, 1, 2), max_iters: int = 1000,
                      steps: int = 40, precision: str = "float32", executor=None,
                      progress: bool | None = None) -> dict:
    """Train every defence with every seed as a sweep into ``out`` and attack each on its test
    split (module doc). Returns and writes ``OUT/adversarial.json``: ``{"eps", "rows", "table"}``.
    Bad radii are refused before any run."""
    eps = _radii(eps)
    out = Path(out)
    specs = adversarial_specs(problem, defences, seeds=seeds, max_iters=max_iters, precision=precision)
    sweep(list(specs.values()), out, executor=executor, progress=progress, summary=False)
    rows = []
    for (label, seed), spec in specs.items():
        folder = run_dir(out, spec)
        row = {"defence": label, "seed": seed, "run": folder.name}
        if not is_finished(folder):
            rows.append({**row, "status": "failed"})
            continue
        loaded = load_run(folder)
        if loaded.test is None:
            raise ValueError(f"defence {label!r} has no test split to attack; give its problem test_samples")
        info = loaded.result.info
        rows.append({**row, "status": loaded.result.status, "wall_time": float(info["wall_time"]),
                     "iterations": int(info["iterations"]),
                     **measure_robustness(loaded.problem, loaded.controls, loaded.test, eps, steps=steps)})
    result = {"eps": eps, "rows": rows, "table": _table(rows, eps)}
    atomic_write(out / "adversarial.json", lambda f: f.write(to_json(result, indent=1).encode()))
    return result
