"""Depth versus turnpike on the ring, from Python (the same study as `controlnet turnpike`).

    python scripts/depth_vs_turnpike.py --out runs/turnpike [--loss squared --dynamics outer]

1. Sweeps the horizon T at a fixed step h (N = T/h), once with the L² running cost only and once
   with a tracking term; prints the training error against T with its log-log slope, the fitted
   turnpike rate μ and the share of the horizon inside the ε-band; writes summary.json and plots.
2. Sweeps the L² weight on a ring with label noise and a held-out split (train/test error).
3. Trains the largest-horizon tracking problem once more and draws the stability and landscape
   diagnostics of the solution (flow with a grid, decision regions per layer, eigenvalues against
   the Euler disc, the loss landscape).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import controlnet as cn  # noqa: E402
import problems  # noqa: E402
import solvers  # noqa: E402
from controlnet import diagnostics as dg  # noqa: E402
from controlnet import plotting  # noqa: E402
from controlnet.io import atomic_write, to_json  # noqa: E402
from solvers.depth_study import depth_vs_turnpike, regularization_sweep  # noqa: E402


def main():
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
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    horizons = [float(s) for s in args.horizons.split(",")]
    # Adam with a cosine decay to 1% over the budget: a constant rate leaves ‖θ(t)‖ jittering at ~lr.
    solver = solvers.make_solver("gd", optimizer=optax.adam(optax.cosine_decay_schedule(args.lr, args.iters, alpha=0.01)))

    def factory(T, N, tracking, name="ring"):
        p = problems.make(name, samples=args.samples, layers=N, horizon=T, tracking=tracking,
                          dynamics=args.dynamics, test_samples=0).problem
        if args.loss == "squared":
            p = dataclasses.replace(p, loss=cn.SquaredError(1), y=np.asarray(p.y, float)[:, None])
        return p

    summary = {"config": {k: str(v) for k, v in vars(args).items()}}
    # -- 1. the sweep over horizons ------------------------------------------------------------
    if not args.skip_study:
        t0 = time.perf_counter()
        study = depth_vs_turnpike(factory, solver, horizons, tracking=args.tracking, step=args.step,
                                  fixed_T=args.fixed_T, max_iters=args.iters, eps=args.eps,
                                  callback=lambda r: print(f"  T={r['T']:g} N={r['N']} error {r['training_error']:.3g}"
                                                           f" μ {r['mu']:.3g} band {r['band_fraction']:.2f}", flush=True))
        summary.update(study)
        print(f"study: {time.perf_counter() - t0:.0f} s")
        against = study["l2"]["slope_against"]
        for name, s in study.items():
            print(f"\n{name}: slope of log(error) against log({against}) = {s['slope']:.3f}")
            print(f"  {'T':>5} {'N':>4} {'error':>10} {'‖θ‖_L2':>8} {'μ':>7} {'r2':>5} {'μ_free':>7} {'r2':>5}"
                  f" {'band θ':>7} {'band v':>7} {'‖θ‖ mid':>8} {'v mid':>7}")
            for r in s["runs"]:
                print(f"  {r['T']:5g} {r['N']:4d} {r['training_error']:10.3g} {r['theta_l2']:8.3g} {r['mu']:7.3g}"
                      f" {r['mu_r2']:5.2f} {r['mu_free']:7.3g} {r['mu_free_r2']:5.2f} {r['band_fraction']:7.2f}"
                      f" {r['band_fraction_speed']:7.2f} {r['theta_norm_mid']:8.3g} {r['speed_mid']:7.3g}")
            for key in ("theta_norm", "speed"):
                fig = plotting.plot_turnpike(s["runs"], key, eps=args.eps, title=name)
                fig.savefig(args.out / f"{key}_{name}.png", dpi=110)
        series = {name: ([r[against] for r in s["runs"]], [r["training_error"] for r in s["runs"]])
                  for name, s in study.items()}
        plotting.plot_error_vs_horizon(series, xlabel=against).savefig(args.out / "error.png", dpi=110)
        plt.close("all")

    # -- 2. regularization on noisy labels -----------------------------------------------------
    weights = [float(w) for w in args.l2_weights.split(",") if w.strip()]
    if weights:
        x, y = problems.noisy_ring(args.samples, seed=0)
        x_test, y_test = problems.noisy_ring(args.samples, seed=1)
        base = problems.make("ring", samples=args.samples, layers=20, horizon=5.0, test_samples=0).problem
        reg = regularization_sweep(base, solver, weights, (x, y, x_test, y_test), max_iters=args.iters)
        summary["regularization"] = reg
        print("\nL² weight sweep on the noisy ring (train/test error = 1 − accuracy):")
        for r in reg["runs"]:
            print(f"  α={r['weight']:<8g} train {r['train_error']:.3f} test {r['test_error']:.3f}"
                  f"  loss {r['train_loss']:.3f}/{r['test_loss']:.3f}  ‖θ‖_L2 {r['theta_l2']:.3g}")

    # -- 3. one solution, all the pictures -------------------------------------------------------
    T = max(horizons)
    problem = factory(T, max(1, round(T / args.step)), args.tracking)
    result = solvers.solve(solver, problem, problem.init_controls(jax.random.PRNGKey(0), 0.1),
                           max_iters=args.iters, progress=False)
    c = result.controls
    zs = cn.forward(problem, c.theta)
    lam = dg.jacobian_eigenvalues(problem, c.theta, zs)
    stable, amp = dg.euler_stable(lam, problem.h)
    inv = dg.invertibility(problem, c.theta, zs)
    flow = dg.flow_lipschitz(problem, c.theta)
    summary["solution"] = {
        "T": T, "N": problem.N, "euler_stable_layers": int(np.sum(stable)),
        "max_amplification": float(np.max(amp)),
        "invertible_layers": int(np.sum(inv.get("invertible", np.zeros(0)))),
        "max_h_lip_bound": float(np.max(inv["h_lip_bound"])) if "h_lip_bound" in inv else None,
        "flow_lipschitz_local": float(flow["local"]), "flow_lipschitz_bound": float(flow.get("bound", np.nan)),
    }
    print("\nsolution diagnostics:", json.dumps(summary["solution"]))
    d1, d2 = dg.random_directions(jax.random.PRNGKey(1), c.theta)
    a = np.linspace(-1, 1, 21)
    J = dg.landscape(problem, c, d1, d2, a, a)
    pics = {
        "flow_grid.png": plotting.plot_flow_grid(problem, c),
        "decision_regions.png": plotting.plot_decision_regions(problem, c),
        "eigenvalues.png": plotting.plot_eigenvalues(lam, problem.h),
        "landscape.png": plotting.plot_landscape(a, a, J),
    }
    for name, fig in pics.items():
        fig.savefig(args.out / name, dpi=110)
    plt.close("all")

    text = to_json(summary, indent=1)
    atomic_write(args.out / "summary.json", lambda f: f.write(text.encode()))
    print(f"wrote {args.out}/summary.json and pictures")


if __name__ == "__main__":
    main()
