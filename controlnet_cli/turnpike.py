"""``controlnet turnpike``: the depth-versus-turnpike study (:mod:`solvers.depth_study`), as a
sweep of runs (:mod:`studies`).

The study sets the number of layers (``N = T/h`` from ``--horizons`` and ``--step``) and the
tracking weight (0 for the L² sweep, ``--tracking-weight`` for the other), so the problem
options ``--layers`` and ``--tracking`` are not offered. Each ``(sweep, T, N)`` is a run spec;
its run goes to ``OUT/runs/<hash>`` and is measured from its folder
(:func:`studies.measure_run`), so running the same command again skips the finished runs and
rebuilds the same summary (``OUT/study.json`` marks the folder as this command's study; see
:func:`~controlnet_cli.sweep.prepare_study_out`). Every run is reported on stderr as it ends,
its compile time apart from its iterations' time. Writes ``OUT/summary.json`` and the plots of
the error against ``T`` and of ``‖θ(t)‖`` and the flow speed against ``t/T``.

``--warm-start`` chains each horizon to the previous one's solution, so its runs are not
independent: it trains in this process through :func:`solvers.depth_study.depth_study`,
without run folders or resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

from controlnet.io import atomic_write, to_json

from .arguments import UsageError, comma_list, nonneg_float, out_dir, positive_float, positive_int
from .figures import save_fig
from .guards import check_layers, check_out, check_size
from .lock import output_lock
from .problem_options import add_problem_options, fill_training_defaults, task_from_args
from .solver_options import add_solver_choice, add_solver_options, solver_from_args
from .sweep import add_executor_options, executor_from_args, mark_study, prepare_study_out, solver_spec

__all__ = ["add_parser", "run", "DEFAULTS"]

#: Training settings of the study where not given: Adam at 1e-2 decayed by a cosine schedule to
#: 1 % of it (a constant rate leaves a noise floor of about lr in ‖θ(t)‖), full batch.
DEFAULTS = {"lr": 1e-2, "schedule": "cosine", "batch_size": None}
COSINE_FLOOR = 0.01


def add_parser(sub):
    p = sub.add_parser("turnpike", help="sweep the horizon T (or N) and measure error, ‖θ(t)‖ and the turnpike",
                       description="The depth-versus-turnpike study: train the problem for every horizon T at a "
                                   "fixed step h (N = T/h layers) or, with --fixed-T, every N at a fixed T; "
                                   "once with the L² running cost only and once with tracking. Every run goes to "
                                   "OUT/runs/<hash>; rerunning the same command skips the finished runs. Reports "
                                   "each run as it ends; writes OUT/summary.json and plots of the error against T and "
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
                        "(continuation in T): for no sweep, the tracking sweep only, or both; the runs then "
                        "depend on each other and train in this process without resume (default: none)")
    p.add_argument("--out", type=out_dir, required=True,
                   help="output directory; a turnpike study already there is resumed (finished runs skipped)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds (a turnpike study there: train every run again)")
    add_executor_options(p)
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
    horizons = sorted(args.horizons)
    fixed_T = (args.horizon or max(horizons)) if args.fixed_T else None
    if args.warm_start != "none":
        if args.ray or args.address or args.workers:
            raise UsageError("--warm-start chains each horizon to the previous one, in this process: "
                             "drop --ray, --address and --workers, or drop --warm-start")
        check_out(args.out, overwrite=args.overwrite, can_resume=False)
    else:
        resume = prepare_study_out(args.out, "turnpike", overwrite=args.overwrite)
    _check(args, horizons, fixed_T)
    fill_training_defaults(args, DEFAULTS)
    factory = _factory(args)
    if args.warm_start != "none":
        solver = solver_from_args(args, floor=COSINE_FLOOR)
        factory(horizons[0], 1, 0.0)  # bad problem options fail here, before any training
        with output_lock(args.out, "turnpike"):
            return _finish(args, _chained(args, factory, solver, horizons, fixed_T))
    executor = executor_from_args(args)
    specs = _specs(args, horizons, fixed_T)
    factory(horizons[0], 1, 0.0)
    with output_lock(args.out, "turnpike"):
        mark_study(args.out, "turnpike")
        summary = _swept(args, specs, executor, resume, fixed_T)
        return 1 if summary is None else _finish(args, summary)


def _specs(args, horizons, fixed_T) -> dict:
    """``{"l2": [spec by horizon], "tracking": [...]}``: the study's run specs."""
    import studies
    from solvers.depth_study import horizon_grid

    solver = solver_spec(args, args.solver, floor=COSINE_FLOOR)
    problem = {k: getattr(args, k) for k in ("samples", "width", "dynamics", "hidden", "activation", "integrator",
                                             "l2", "l1", "smoothness") if getattr(args, k) is not None}
    problem.update(name=args.problem, seed=args.seed, test_samples=0, **({"loss": "squared"} if args.loss == "squared"
                                                                          else {}))
    weights = {"l2": 0.0, **({"tracking": args.tracking_weight} if args.tracking_weight > 0 else {})}
    specs = {kind: [{"problem": {**problem, "horizon": T, "layers": N, "tracking": w}, "solver": solver,
                     "seed": args.seed, "budget": {"max_iters": args.iters}, "init_scale": args.init_scale,
                     "precision": "float64" if args.float64 else "float32"}
                    for T, N in horizon_grid(horizons, args.step, fixed_T)]
             for kind, w in weights.items()}
    for kind in specs:
        try:
            specs[kind] = [studies.normalize(s) for s in specs[kind]]
        except ValueError as e:
            raise UsageError(str(e)) from None
    return specs


def _line(done, total, kind, record, how):
    """One run's line: its turnpike numbers and ``how`` (its time, compile apart)."""
    sweep = "L²" if kind == "l2" else "tracking"
    return (f"  [{done}/{total}] {sweep} T={record['T']:g} N={record['N']}: error {record['training_error']:.3g}, "
            f"‖θ‖_L2 {record['theta_l2']:.3g}, μ {record['mu']:.3g}, band {record['band_fraction']:.2f} ({how})")


def _swept(args, specs, executor, resume, fixed_T) -> dict:
    """Run the specs as a sweep into ``args.out``, each run measured from its folder and
    reported as it ends (a run finished before says so); the sweeps' summaries, or ``None``
    when a run failed."""
    import studies
    from solvers.depth_study import study_summary

    where = {studies.spec_hash(s): (kind, i) for kind, ss in specs.items() for i, s in enumerate(ss)}
    records, failed = {}, []

    def report(outcome):
        kind, i = where[outcome.run]
        total = len(where)
        done = len(records) + len(failed) + 1
        if outcome.error is not None:
            failed.append(outcome.run)
            print(f"  [{done}/{total}] {kind} run {outcome.run} failed: {outcome.error}", file=sys.stderr)
            return
        r = records[outcome.run] = studies.measure_run(args.out / "runs" / outcome.run, args.eps)
        times = f"{r['iterations']} iterations in {r['wall_time']:.2f} s"
        rest = (f"compile {r['compile_time']:.1f} s" if r.get("compile_time") is not None
                else f"{max(outcome.seconds - r['wall_time'], 0.0):.1f} s compiling and saving")
        how = f"{outcome.seconds:.1f} s: {times}, {rest}" if outcome.trained else f"finished before: {times}, {rest}"
        print(_line(done, total, kind, r, how), file=sys.stderr)

    ordered = [s for ss in specs.values() for s in ss]
    studies.sweep(ordered, args.out, executor=executor, progress=False, summary=False, on_run=report,
                  force=not resume and (args.out / "runs").is_dir())
    if failed:  # no summary of a study with holes; a rerun trains the failed runs again
        print(f"controlnet: error: {len(failed)} of {len(where)} runs failed ({', '.join(failed)}); their messages "
              f"are in {args.out}/runs/<run>/failed.json", file=sys.stderr)
        return None
    out = {}
    for kind, ss in specs.items():
        runs = [{**records[studies.spec_hash(s)], "warm_start": False} for s in ss]
        out[kind] = study_summary(runs, step=args.step, fixed_T=fixed_T, tracking=ss[0]["problem"]["tracking"],
                                  eps=args.eps)
    return out


def _chained(args, factory, solver, horizons, fixed_T) -> dict:
    """The warm-started study, in this process (its runs depend on each other)."""
    from solvers.depth_study import depth_study, depth_vs_turnpike

    total, done = (2 if args.tracking_weight > 0 else 1) * len(horizons), []

    def report(run):
        done.append(run)
        kind = "l2" if len(done) <= len(horizons) else "tracking"
        rest = f"compile {run['compile_time']:.1f} s" if run.get("compile_time") is not None else "no compile time"
        print(_line(len(done), total, kind, run, f"{run['iterations']} iterations in {run['wall_time']:.2f} s, "
                                                  f"{rest}"), file=sys.stderr)

    options = dict(step=args.step, fixed_T=fixed_T, max_iters=args.iters, seed=args.seed,
                   init_scale=args.init_scale, eps=args.eps, callback=report)
    if args.warm_start == "tracking" and args.tracking_weight > 0:
        return {"l2": depth_study(factory, solver, horizons, tracking=0.0, **options),
                "tracking": depth_study(factory, solver, horizons, tracking=args.tracking_weight,
                                        warm_start=True, **options)}
    return depth_vs_turnpike(factory, solver, horizons, tracking=args.tracking_weight,
                             warm_start=args.warm_start == "both", **options)


def _finish(args, summary) -> int:
    """Write ``summary.json`` (with the command's ``config``) and the figures; print the slopes."""
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
