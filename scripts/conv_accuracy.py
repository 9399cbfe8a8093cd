"""Test accuracy of the convolutional ResNets: MNIST-1D and the digits as images, GD and E-MSA.

    python -m scripts.conv_accuracy --problem mnist1d --solvers gd,emsa --seeds 0,1,2 \
        --epochs 48 --out runs/conv_accuracy

Each run starts from the seed's random controls and trains for the same number of epochs
(passes over the training set in minibatches): gradient descent with Adam and a cosine-decayed
learning rate, extended MSA on minibatches with one inner step. Prints one line per run and the
mean ± standard deviation per solver, and writes ``OUT/<problem>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
import optax

import problems
import solvers


def make_solver(name, steps, batch_size, lr):
    """``gd``: Adam with ``lr`` decayed to 0 over ``steps`` (cosine); ``emsa``: extended MSA on
    the same minibatches, one safeguarded inner step per iteration (Adam's first step, scaled
    per layer by the step size the iterations carry), the read-out and lift by gd's schedule."""
    schedule = optax.cosine_decay_schedule(lr, steps)
    if name == "gd":
        return solvers.GradientDescent(optax.adam(schedule), batch_size=batch_size)
    if name == "emsa":
        return solvers.ExtendedMSA(batch_size=batch_size, inner_steps=1, inner_optimizer=optax.adam(lr),
                                   readout_optimizer=optax.adam(schedule))
    raise ValueError(f"unknown solver {name!r}; choose gd or emsa")


def run(problem_name, solver_name, seed, epochs, batch_size, lr):
    """Train once; returns the run's summary (accuracies, iterations, seconds)."""
    task = problems.make(problem_name, seed=seed)
    p = task.problem
    steps = math.ceil(epochs * p.S / batch_size)
    controls = p.init_controls(jax.random.PRNGKey(seed))
    t0 = time.perf_counter()
    result = solvers.solve(make_solver(solver_name, steps, batch_size, lr), p, controls, max_iters=steps,
                           seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    ev = solvers.evaluate(p, result.controls, task.test)
    return {"solver": solver_name, "seed": seed, "epochs": epochs, "iterations": steps, "seconds": seconds,
            "status": result.status, "train_accuracy": float(ev["accuracy"]),
            "test_accuracy": float(ev["test_accuracy"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", default="mnist1d", choices=("mnist1d", "digits_image"))
    ap.add_argument("--solvers", default="gd,emsa")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=float, default=48)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--out", type=Path, default=Path("runs/conv_accuracy"))
    a = ap.parse_args(argv)
    runs = []
    for name in a.solvers.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            r = run(a.problem, name, seed, a.epochs, a.batch_size, a.lr)
            runs.append(r)
            print(json.dumps(r), flush=True)
    summary = {}
    for name in a.solvers.split(","):
        acc = np.array([r["test_accuracy"] for r in runs if r["solver"] == name])
        summary[name] = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                         "runs": acc.tolist()}
        print(f"{a.problem} {name}: test accuracy {100 * acc.mean():.1f} ± {100 * summary[name]['std']:.1f} % "
              f"over {acc.size} seeds")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.problem}.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
