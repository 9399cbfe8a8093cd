"""Test accuracy of the convolutional ResNets: MNIST-1D and the digits as images, GD and E-MSA.

    python -m scripts.conv_accuracy --problem mnist1d --solvers gd,emsa --seeds 0,1,2 \
        --out runs/conv_accuracy

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
from controlnet.io import atomic_write


def make_solver(name, steps, batch_size, lr):
    """``gd``: Adam with ``lr`` decayed to 0 over ``steps`` (cosine); ``emsa``: extended MSA on
    the same minibatches, one safeguarded inner step per iteration by the same Adam and
    schedule (its state carried across iterations), ``ρ`` adapted from 0.1 down to 1e-3 (the
    default 5 down to 1, set for the dense toys, holds a conv layer's step far below Adam's),
    the read-out and lift by gd's schedule."""
    schedule = optax.cosine_decay_schedule(lr, steps)
    if name == "gd":
        return solvers.GradientDescent(optax.adam(schedule), batch_size=batch_size)
    if name == "emsa":
        return solvers.ExtendedMSA(rho=0.1, rho_min=1e-3, batch_size=batch_size, inner_steps=1,
                                   inner_optimizer=optax.adam(schedule), readout_optimizer=optax.adam(schedule))
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
    ap.add_argument("--epochs", type=float, default=None,
                    help="passes over the training set (default: the problem's training defaults, "
                         "problems.TRAINING: 1,500 steps of 128, 48 epochs of MNIST-1D)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--out", type=Path, default=Path("runs/conv_accuracy"))
    a = ap.parse_args(argv)
    if a.epochs is None:
        t = problems.training_defaults(a.problem)
        a.epochs = t["iters"] * t["batch_size"] / problems.make(a.problem).problem.S
    names = a.solvers.split(",")
    for name in names:
        make_solver(name, 1, a.batch_size, a.lr)  # an unknown name fails before any training
    runs = []
    a.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for seed in (int(s) for s in a.seeds.split(",")):
            r = run(a.problem, name, seed, a.epochs, a.batch_size, a.lr)
            runs.append(r)
            print(json.dumps(r), flush=True)
            # Rewritten after every run (atomically), so an interrupted study keeps what it ran.
            text = json.dumps({"runs": runs, "summary": summarize(runs)}, indent=1)
            atomic_write(a.out / f"{a.problem}.json", lambda f, text=text: f.write(text.encode()))
    for name, s in summarize(runs).items():
        print(f"{a.problem} {name}: test accuracy {100 * s['mean']:.1f} ± {100 * s['std']:.1f} % "
              f"over {len(s['runs'])} seeds")


def summarize(runs):
    """Per solver: the mean and sample standard deviation of the test accuracies, and the runs'."""
    summary = {}
    for name in dict.fromkeys(r["solver"] for r in runs):
        acc = np.array([r["test_accuracy"] for r in runs if r["solver"] == name])
        summary[name] = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                         "runs": acc.tolist()}
    return summary


if __name__ == "__main__":
    main()
