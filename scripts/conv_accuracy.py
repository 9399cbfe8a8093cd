"""Test accuracy of the convolutional ResNets: MNIST-1D and the digits as images, GD and E-MSA.

    python -m scripts.conv_accuracy --problem mnist1d --solvers gd,emsa --seeds 0,1,2 \
        --out runs/conv_accuracy [--ray]

Each run starts from the seed's random controls and trains for the same number of epochs
(passes over the training set in minibatches): gradient descent with Adam and a cosine-decayed
learning rate, extended MSA with the problem's defaults (:func:`problems.solver_defaults`: one
inner Adam step per iteration on the same schedule). The runs are run specs of a sweep
(:func:`studies.sweep`, in this process or with ``--ray`` on a local Ray) into
``OUT/<problem>/runs/<hash>``, so a rerun skips the finished runs. Prints one line per run and
the mean ± standard deviation per solver, computed from the run folders, and writes
``OUT/<problem>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

import controlnet as cn
import problems
import studies
from controlnet.io import atomic_write


def solver_spec(problem_name, name, batch_size, lr):
    """The run spec's ``solver``: ``gd``, Adam at ``lr`` decayed to 0 over the run (cosine);
    ``emsa``, extended MSA with the problem's defaults (its inner and read-out Adam at ``lr`` on
    the same schedule, ``ρ`` adapted from 0.1 down to 1e-3), both on minibatches of ``batch_size``."""
    if name == "gd":
        return {"name": "gd", "lr": lr, "schedule": "cosine", "batch_size": batch_size}
    if name == "emsa":
        options = problems.solver_defaults(problem_name, "emsa")
        for key in ("inner_optimizer", "readout_optimizer"):
            if isinstance(options.get(key), dict):
                options[key]["lr"] = lr
        return {"name": "emsa", **options, "batch_size": batch_size}
    raise ValueError(f"unknown solver {name!r}; choose gd or emsa")


def run_spec(problem_name, solver_name, seed, epochs, batch_size, lr):
    """The run spec of one training: ``ceil(epochs · S / batch_size)`` iterations, float32."""
    samples = problems.make(problem_name, test_samples=0).problem.S
    steps = math.ceil(epochs * samples / batch_size)
    return {"problem": {"name": problem_name}, "solver": solver_spec(problem_name, solver_name, batch_size, lr),
            "seed": seed, "budget": {"max_iters": steps}}


def _row(spec, result, epochs):
    info = result.info
    return {"solver": spec["solver"]["name"], "seed": spec["seed"], "epochs": epochs,
            "iterations": int(info["iterations"]), "seconds": float(info["wall_time"] + info.get("compile_time", 0.0)),
            "status": result.status, "train_accuracy": float(info["accuracy"]),
            "test_accuracy": float(info["test_accuracy"])}


def run(problem_name, solver_name, seed, epochs, batch_size, lr):
    """Train once in this process (no folder); returns the run's summary (accuracies, iterations,
    seconds)."""
    spec = run_spec(problem_name, solver_name, seed, epochs, batch_size, lr)
    return _row(spec, studies.train(spec), epochs)


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
    ap.add_argument("--ray", action="store_true", help="run the seeds as Ray tasks on a local Ray (one per core)")
    a = ap.parse_args(argv)
    if a.epochs is None:
        t = problems.training_defaults(a.problem)
        a.epochs = t["iters"] * t["batch_size"] / problems.make(a.problem, test_samples=0).problem.S
    specs = [run_spec(a.problem, name, int(seed), a.epochs, a.batch_size, a.lr)
             for name in a.solvers.split(",") for seed in a.seeds.split(",")]  # an unknown name fails here
    folder = a.out / a.problem
    runs = []

    def report(outcome):
        spec = next(s for s in specs if studies.spec_hash(s) == outcome.run)
        if outcome.status == "failed":
            print(json.dumps({"solver": spec["solver"]["name"], "seed": spec["seed"], "status": "failed",
                              "error": outcome.error}), flush=True)
            return
        runs.append(_row(spec, cn.Result.load(folder / "runs" / outcome.run), a.epochs))
        print(json.dumps(runs[-1]), flush=True)
        # Rewritten after every run (atomically), so an interrupted study keeps what it ran.
        text = json.dumps({"runs": runs, "summary": summarize(runs)}, indent=1)
        atomic_write(a.out / f"{a.problem}.json", lambda f, text=text: f.write(text.encode()))

    executor = studies.RayExecutor() if a.ray else studies.SerialExecutor()
    a.out.mkdir(parents=True, exist_ok=True)
    studies.sweep(specs, folder, executor=executor, progress=False, on_run=report)
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
