"""``controlnet turnpike``: the depth-versus-turnpike study (:mod:`solvers.depth_study`).

The study sets the number of layers (``N = T/h`` from ``--horizons`` and ``--step``) and the
tracking weight (0 for the L² sweep, ``--tracking-weight`` for the other), so the problem
options ``--layers`` and ``--tracking`` are not offered. Every run is reported on stderr as it
finishes, with its time split into iterating and the rest (compiling, measuring). Writes
``OUT/summary.json`` and the plots of the error against ``T`` and of ``‖θ(t)‖`` and the flow
speed against ``t/T``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from controlnet.io import atomic_write, to_json

from .arguments import UsageError, comma_list, nonneg_float, out_dir, positive_float, positive_int
from .figures import save_fig
from .guards import check_layers, check_out, check_size
from .lock import output_lock
from .problem_options import add_problem_options, fill_training_defaults, task_from_args
from .solver_options import add_solver_choice, add_solver_options, solver_from_args

__all__ = ["add_parser", "run", "DEFAULTS"]

#: Training settings of the study where not given: Adam at 1e-2 decayed by a cosine schedule to
#: 1 % of it (a constant rate leaves a noise floor of about lr in ‖θ(t)‖), full batch.
DEFAULTS = {"lr": 1e-2, "schedule": "cosine", "batch_size": None}
COSINE_FLOOR = 0.01


def add_parser(sub):
    p = sub.add_parser("turnpike", help="sweep the horizon T (or N) and measure error, ‖θ(t)‖ and the turnpike",
                       description="The depth-versus-turnpike study: train the problem for every horizon T at a "
                                   "fixed step h (N = T/h layers) or, with --fixed-T, every N at a fixed T; "
                                   "once with the L² running cost only and once with tracking. Reports each run "
                                   "as it finishes; writes OUT/summary.json and plots of the error against T and "
                                   "of ‖θ(t)‖ and the flow speed against t/T. gd's learning rate decays to 1% "
                                   "of --lr over --iters (cosine) unless --schedule constant.")
    add_problem_options(p, exclude=("--layers", "--tracking"))
    p.add_argument("--horizons", type=comma_list(positive_float, what="horizons"), default="1,2,4,8,16", help="comma-separated horizons T (default: 1,2,4,8,16)")
    p.add_argument("--step", type=positive_float, default=0.25, help="step h; N = round(T/h) (default: 0.25)")
    p.add_argument("--fixed-T", action="store_true",
                   help="sweep N = round(T_j/h) at the fixed horizon --horizon (default: the largest of --horizons)")
    p.add_argument("--tracking-weight", type=nonneg_float, default=1.0,
                   help="weight γ of the loss at every layer in the tracking sweep; 0 runs the L² sweep only (default: 1)")
    p.add_argument("--loss", choices=("logistic", "squared"), default="logistic",
                   help="logistic, or squared: ½(λ2(z) − y)² on the 0/1 labels of a two-class problem, whose "
                        "minimum is attained at finite states as the turnpike theorem assumes (default: logistic)")
    add_solver_choice(p)
    p.add_argument("--iters", type=positive_int, default=2000, help="iterations per horizon (default: 2000)")
    p.add_argument("--init-scale", type=nonneg_float, default=0.1, help="scale of the random initial controls (default: 0.1)")
    p.add_argument("--eps", type=positive_float, default=0.1, help="band ‖θ(t)‖ ≤ ε (and flow speed ≤ ε) (default: 0.1)")
    p.add_argument("--warm-start", choices=("none", "tracking", "both"), default="none",
                   help="start each horizon from the previous solution, its new layers at θ = 0 "
                        "(continuation in T): for no sweep, the tracking sweep only, or both (default: none)")
    p.add_argument("--out", type=out_dir, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace the study already in --out")
    p.set_defaults(handler=run, solver_options=add_solver_options(p))


def _factory(args):
    """``factory(T, N, tracking)`` for the depth study, from the problem options."""
    import dataclasses

    import numpy as np

    import controlnet as cn

    def factory(T, N, tracking):
        p = task_from_args(args, layers=N, horizon=T, tracking=tracking, test_samples=0).problem
        if args.loss == "squared":
            p = dataclasses.replace(p, loss=cn.SquaredError(1), y=np.asarray(p.y, float)[:, None])
        return p

    return factory


def _check(args, horizons, fixed_T):
    """The refusals of the study's own options, before any data: the horizon options, the
    squared loss on a problem without two classes, the layer count and the memory."""
    import controlnet as cn
    import problems
    from solvers.depth_study import horizon_grid

    if args.horizon is not None and not args.fixed_T:
        raise UsageError("--horizon is the fixed T of --fixed-T; without it the horizons come from --horizons")
    if args.loss == "squared" and not isinstance(problems.LOSSES[args.problem], cn.Logistic):
        loss = type(problems.LOSSES[args.problem]).__name__
        raise UsageError(f"--loss squared regresses the 0/1 labels of a two-class problem; --problem {args.problem} "
                         f"has a {loss} loss: use --loss logistic or a two-class problem (ring, spiral, xor, ...)")
    N = max(n for _, n in horizon_grid(horizons, args.step, fixed_T))
    fix = "raise --step or lower --horizons"
    check_layers(N, f"--horizons {','.join(f'{T:g}' for T in horizons)} with --step {args.step:g}", fix)
    check_size(args.problem, {"samples": args.samples, "width": args.width, "layers": N},
               float64=args.float64, fix=fix)


def run(args):
    check_out(args.out, overwrite=args.overwrite, can_resume=False)
    horizons = sorted(args.horizons)
    fixed_T = (args.horizon or max(horizons)) if args.fixed_T else None
    _check(args, horizons, fixed_T)
    fill_training_defaults(args, DEFAULTS)
    solver = solver_from_args(args, floor=COSINE_FLOOR)
    factory = _factory(args)
    factory(horizons[0], 1, 0.0)  # bad problem options fail here, before any training
    with output_lock(args.out, "turnpike"):
        return _run(args, factory, solver, horizons, fixed_T)


def _reporter(args, horizons):
    """``callback(run)`` for the study: one line on stderr per finished run, its time split into
    the iterations and the rest (compile, measurements; the compile apart when the run has it)."""
    sweeps = 2 if args.tracking_weight > 0 else 1
    total, clock = sweeps * len(horizons), {"done": 0, "last": time.perf_counter()}

    def report(run):
        now = time.perf_counter()
        elapsed, clock["last"] = now - clock["last"], now
        clock["done"] += 1
        sweep = "L²" if clock["done"] <= len(horizons) else "tracking"
        rest = (f"compile {run['compile_time']:.1f} s" if run.get("compile_time") is not None
                else f"{max(elapsed - run['wall_time'], 0.0):.1f} s compiling and measuring")
        print(f"  [{clock['done']}/{total}] {sweep} T={run['T']:g} N={run['N']}: error {run['training_error']:.3g}, "
              f"‖θ‖_L2 {run['theta_l2']:.3g}, μ {run['mu']:.3g}, band {run['band_fraction']:.2f} "
              f"({elapsed:.1f} s: {run['iterations']} iterations in {run['wall_time']:.2f} s, {rest})",
              file=sys.stderr)

    return report


def _run(args, factory, solver, horizons, fixed_T):
    from solvers.depth_study import depth_study, depth_vs_turnpike

    options = dict(step=args.step, fixed_T=fixed_T, max_iters=args.iters, seed=args.seed,
                   init_scale=args.init_scale, eps=args.eps, callback=_reporter(args, horizons))
    if args.warm_start == "tracking" and args.tracking_weight > 0:
        summary = {"l2": depth_study(factory, solver, horizons, tracking=0.0, **options),
                   "tracking": depth_study(factory, solver, horizons, tracking=args.tracking_weight,
                                           warm_start=True, **options)}
    else:
        summary = depth_vs_turnpike(factory, solver, horizons, tracking=args.tracking_weight,
                                    warm_start=args.warm_start == "both", **options)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
              if k not in ("command", "handler", "solver_options") and not callable(v)}
    summary = {"config": config, **summary}
    text = to_json(summary, indent=1).encode()
    atomic_write(args.out / "summary.json", lambda f: f.write(text))
    names = _save_pictures(args.out, summary)
    for name in ("l2", "tracking"):
        if name in summary:
            s = summary[name]
            print(to_json({"cost": name, f"slope_vs_{s['slope_against']}": s["slope"],
                           "mu": [r["mu"] for r in s["runs"]],
                           "band_fraction": [r["band_fraction"] for r in s["runs"]]}))
    print(f"wrote {args.out}/summary.json, " + ", ".join(names))
    return 0


def _save_pictures(out: Path, summary: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controlnet import plotting

    names = []
    sweeps = {k: summary[k] for k in ("l2", "tracking") if k in summary}
    against = next(iter(sweeps.values()))["slope_against"]
    series = {("L² only" if k == "l2" else f"tracking γ={s['tracking']:g}"):
              ([r[against] for r in s["runs"]], [r["training_error"] for r in s["runs"]])
              for k, s in sweeps.items()}
    save_fig(plotting.plot_error_vs_horizon(series, xlabel="horizon T" if against == "T" else "layers N"),
             out / "error.png")
    names.append("error.png")
    for k, s in sweeps.items():
        for key in ("theta_norm", "speed"):
            fig = plotting.plot_turnpike(s["runs"], key, eps=s["eps"],
                                         title=f"{'L² only' if k == 'l2' else 'with tracking'}")
            save_fig(fig, out / f"{key}_{k}.png")
            names.append(f"{key}_{k}.png")
    plt.close("all")
    return names
