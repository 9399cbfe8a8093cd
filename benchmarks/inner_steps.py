"""How many inner steps should an E-MSA iteration take? Loss reached in equal wall time.

Every E-MSA iteration pays a fixed cost (forward, read-out, backward, acceptance) and then
``inner_steps`` evaluations of the augmented Hamiltonian's gradient over all layers and samples;
more inner steps make more progress per iteration but cost more. The fair comparison is the loss
reached in the same wall time, so every configuration runs ``solvers.solve`` with the same
``max_seconds`` (compile excluded, the driver's own per-iteration overhead included, as a user
sees it), on several problems and seeds, with Adam at the same budget for reference, and with
E-MSA's Newton step per layer (``inner="newton"``, one step with a Hessian; the default where
its Hessian has a closed form, the ``σ(Wz+b)`` rings and ``sin x``; by autodiff on the spiral).

Problems: the reference ring (1,000 points, width 3, 50 layers, ``T = 5``, ``l2 = 1e-3``); the
spiral (500 points); a small ring (120 points, 10 layers); Li et al.'s ``sin x`` regression.
Seeds change the data and the initial controls. The configurations run in a different order
for every seed, so machine load does not favour one.

    python -m benchmarks.inner_steps [--seeds 3] [--scale 1.0] [--save]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

import problems
import solvers
from solvers.msa import ExtendedMSA

from .msa_cost import sin_problem
from .peers import merge_results

INNER = (1, 2, 3, 5, 10)


def cases(seed):
    """``(name, problem, wall-time budget in seconds)``."""
    ring = problems.make("ring", samples=1000, width=3, layers=50, horizon=5.0, l2=1e-3, seed=seed)
    spiral = problems.make("spiral", samples=500, seed=seed)
    small = problems.make("ring", samples=120, layers=10, seed=seed)
    return [("ring 1000x50", ring.problem, 1.0), ("spiral 500", spiral.problem, 1.5),
            ("ring 120x10", small.problem, 0.3), ("sin x", sin_problem(seed=seed), 0.4)]


def run(seeds: int = 3, scale: float = 1.0) -> dict:
    configs = {f"emsa {k} inner": ExtendedMSA(inner="optax", inner_steps=k) for k in INNER}
    configs["emsa newton"] = ExtendedMSA(inner="newton")
    configs["adam"] = solvers.GradientDescent(optax.adam(1e-2))
    names = list(configs)
    out: dict = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        for case, problem, budget in cases(seed):
            controls = problem.init_controls(jax.random.PRNGKey(seed))
            for name in rng.permutation(names):
                res = solvers.solve(configs[name], problem, controls, max_iters=100_000,
                                    max_seconds=budget * scale, progress=False)
                row = out.setdefault(case, {}).setdefault(name, {"loss": [], "accuracy": [], "iterations": []})
                row["loss"].append(res.info["loss"])
                row["accuracy"].append(res.info["accuracy"])
                row["iterations"].append(res.info["iterations"])
    return out


def report(out: dict) -> None:
    for case, rows in out.items():
        print(f"\n{case}: final J at equal wall time (per seed), accuracy, iterations")
        ref = np.asarray(rows["emsa 10 inner"]["loss"])
        for name, r in rows.items():
            loss = np.asarray(r["loss"])
            print(f"  {name:15s} J " + " ".join(f"{v:9.3e}" for v in loss)
                  + f"   J/J(10 inner) median {np.median(loss / ref):5.2f}"
                  + "   acc " + " ".join("-" if np.isnan(a) else f"{a:.3f}" for a in r["accuracy"])
                  + "   its " + " ".join(str(i) for i in r["iterations"]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every wall-time budget")
    ap.add_argument("--save", action="store_true", help="write the numbers to benchmarks/results.json")
    a = ap.parse_args()
    res = run(a.seeds, a.scale)
    report(res)
    if a.save:
        merge_results("inner_steps", {"seeds": a.seeds, "scale": a.scale, "cases": res})
