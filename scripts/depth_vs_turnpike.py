"""Depth versus turnpike on the ring, from Python (the same study as `controlnet turnpike`), as sweeps.

    python scripts/depth_vs_turnpike.py --out runs/turnpike [--loss squared --dynamics outer] [--ray]

1. Sweeps the horizon T at a fixed step h (N = T/h; or N at a fixed T with --fixed-T), once with
   the L² running cost only and once with a tracking term; prints the training error against T
   with its log-log slope, the fitted turnpike rate μ and the share of the horizon inside the
   ε-band; writes summary.json and plots.
2. Sweeps the L² weight on the ring with label noise (problem ``noisy_ring``, held-out split):
   train and test error.
3. Loads the largest-horizon tracking run from its folder (no training again) and draws the
   stability and landscape diagnostics of that solution (flow with a grid, decision regions per
   layer, eigenvalues against the Euler disc, the loss landscape).

Every run is a run spec trained by ``studies.sweep`` into ``OUT/runs/<hash>/``: a second call
resumes (finished runs are skipped), ``--ray`` runs them on a local Ray (``--address`` a
cluster), and every run can be rebuilt from its folder (``studies.load_run``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import controlnet as cn  # noqa: E402
import studies  # noqa: E402
from controlnet import diagnostics as dg  # noqa: E402
from controlnet import plotting  # noqa: E402
from controlnet.io import atomic_write, to_json  # noqa: E402
from solvers.depth_study import study_summary  # noqa: E402


def _arguments():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--horizons", default="1,2,4,8,16")
    ap.add_argument("--step", type=float, default=0.25)
    ap.add_argument("--fixed-T", type=float, help="sweep N at this fixed T instead")
    ap.add_argument("--tracking", type=float, default=1.0)
    ap.add_argument("--loss", choices=("logistic", "squared"), default="logistic")
    ap.add_argument("--dynamics", default="inner")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--iters", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--l2-weights", default="0,1e-3,1e-2,1e-1", help="regularization sweep ('' to skip)")
    ap.add_argument("--skip-study", action="store_true")
    ap.add_argument("--ray", action="store_true", help="run the sweeps on a local Ray (a worker per core)")
    ap.add_argument("--address", help="run the sweeps on the Ray cluster at HOST:PORT")
    return ap.parse_args()


def turnpike_specs(args, horizons) -> dict:
    """The run specs of part 1: ``{"l2": [...], "tracking": [...]}`` in horizon order."""
    # Adam with a cosine decay to 1% over the budget: a constant rate leaves ‖θ(t)‖ jittering at ~lr.
    solver = {"name": "gd", "lr": args.lr, "schedule": "cosine", "floor": 0.01}
    options = {"samples": args.samples, "test_samples": 0, "dynamics": args.dynamics,
               **({"loss": "squared"} if args.loss == "squared" else {})}
    weights = {"l2": 0.0, **({"tracking": args.tracking} if args.tracking > 0 else {})}
    return {kind: studies.depth_specs("ring", horizons, step=args.step, fixed_T=args.fixed_T, solver=solver,
                                      tracking=w, max_iters=args.iters, problem_options=options)
            for kind, w in weights.items()}


def turnpike(args, horizons, executor) -> dict:
    specs = turnpike_specs(args, horizons)
    t0 = time.perf_counter()
    studies.sweep([s for ss in specs.values() for s in ss], args.out, executor=executor, summary=False)
    print(f"study: {time.perf_counter() - t0:.0f} s")
    summary = {}
    for kind, ss in specs.items():
        runs = [studies.measure_run(studies.run_dir(args.out, s), args.eps) for s in ss]
        summary[kind] = s = study_summary(runs, step=args.step, fixed_T=args.fixed_T, tracking=ss[0]["problem"]["tracking"],
                                          eps=args.eps)
        print(f"\n{kind}: slope of log(error) against log({s['slope_against']}) = {s['slope']:.3f}")
        print(f"  {'T':>5} {'N':>4} {'error':>10} {'‖θ‖_L2':>8} {'μ':>7} {'r2':>5} {'μ_free':>7} {'r2':>5}"
              f" {'band θ':>7} {'band v':>7} {'‖θ‖ mid':>8} {'v mid':>7}")
        for r in runs:
            print(f"  {r['T']:5g} {r['N']:4d} {r['training_error']:10.3g} {r['theta_l2']:8.3g} {r['mu']:7.3g}"
                  f" {r['mu_r2']:5.2f} {r['mu_free']:7.3g} {r['mu_free_r2']:5.2f} {r['band_fraction']:7.2f}"
                  f" {r['band_fraction_speed']:7.2f} {r['theta_norm_mid']:8.3g} {r['speed_mid']:7.3g}")
        for key in ("theta_norm", "speed"):
            plotting.plot_turnpike(runs, key, eps=args.eps, title=kind).savefig(args.out / f"{key}_{kind}.png", dpi=110)
    against = summary["l2"]["slope_against"]
    series = {kind: ([r[against] for r in s["runs"]], [r["training_error"] for r in s["runs"]])
              for kind, s in summary.items()}
    plotting.plot_error_vs_horizon(series, xlabel=against).savefig(args.out / "error.png", dpi=110)
    plt.close("all")
    return summary


def regularization(args, weights, executor) -> dict:
    """Part 2: the L² weight swept on the noisy ring; train/test error from the run folders."""
    base = {"problem": {"name": "noisy_ring", "samples": args.samples, "layers": 20, "horizon": 5.0},
            "solver": {"name": "gd", "lr": args.lr, "schedule": "cosine", "floor": 0.01},
            "budget": {"max_iters": args.iters}}
    specs = studies.grid(base, {"problem.l2": weights})
    studies.sweep(specs, args.out / "regularization", executor=executor, summary=False)
    runs = []
    for weight, spec in zip(weights, specs):
        run = studies.load_run(studies.run_dir(args.out / "regularization", spec))
        info = run.result.info
        reg = dg.regularization_summary(run.controls.theta, float(run.problem.h))
        runs.append({"weight": weight, "status": run.result.status, "train_loss": info["data_loss"],
                     "test_loss": info["test_loss"], "train_error": 1.0 - info["accuracy"],
                     "test_error": 1.0 - info["test_accuracy"], "theta_l2": reg["l2"]})
    print("\nL² weight sweep on the noisy ring (train/test error = 1 − accuracy):")
    for r in runs:
        print(f"  α={r['weight']:<8g} train {r['train_error']:.3f} test {r['test_error']:.3f}"
              f"  loss {r['train_loss']:.3f}/{r['test_loss']:.3f}  ‖θ‖_L2 {r['theta_l2']:.3g}")
    return {"kind": "l2", "runs": runs}


def diagnostics(args, folder) -> dict:
    """Part 3: the stability and landscape pictures of one trained run, loaded from its folder."""
    run = studies.load_run(folder)
    problem, c = run.problem, run.controls
    zs = cn.forward(problem, c.theta)
    lam = dg.jacobian_eigenvalues(problem, c.theta, zs)
    stable, amp = dg.euler_stable(lam, problem.h)
    inv = dg.invertibility(problem, c.theta, zs)
    flow = dg.flow_lipschitz(problem, c.theta)
    solution = {
        "run": Path(folder).name, "T": float(problem.T), "N": problem.N,
        "euler_stable_layers": int(np.sum(stable)), "max_amplification": float(np.max(amp)),
        "invertible_layers": int(np.sum(inv.get("invertible", np.zeros(0)))),
        "max_h_lip_bound": float(np.max(inv["h_lip_bound"])) if "h_lip_bound" in inv else None,
        "flow_lipschitz_local": float(flow["local"]), "flow_lipschitz_bound": float(flow.get("bound", np.nan)),
    }
    print("\nsolution diagnostics:", json.dumps(solution))
    d1, d2 = dg.random_directions(jax.random.PRNGKey(1), c.theta)
    a = np.linspace(-1, 1, 21)
    pics = {
        "flow_grid.png": plotting.plot_flow_grid(problem, c),
        "decision_regions.png": plotting.plot_decision_regions(problem, c),
        "eigenvalues.png": plotting.plot_eigenvalues(lam, problem.h),
        "landscape.png": plotting.plot_landscape(a, a, dg.landscape(problem, c, d1, d2, a, a)),
    }
    for name, fig in pics.items():
        fig.savefig(args.out / name, dpi=110)
    plt.close("all")
    return solution


def main():
    args = _arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    horizons = [float(s) for s in args.horizons.split(",")]
    weights = [float(w) for w in args.l2_weights.split(",") if w.strip()]
    executor = studies.RayExecutor(address=args.address) if args.ray or args.address else None
    summary = {"config": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_study:
        summary.update(turnpike(args, horizons, executor))
    if weights:
        summary["regularization"] = regularization(args, weights, executor)
    specs = turnpike_specs(args, [max(horizons)])
    kind = "tracking" if "tracking" in specs else "l2"
    folder = studies.run_dir(args.out, specs[kind][0])
    if not (folder / "result.json").is_file():  # --skip-study: train that one run
        studies.sweep(specs[kind], args.out, executor=executor, summary=False)
    summary["solution"] = diagnostics(args, folder)
    text = to_json(summary, indent=1)
    atomic_write(args.out / "summary.json", lambda f: f.write(text.encode()))
    print(f"wrote {args.out}/summary.json and pictures")


if __name__ == "__main__":
    main()
