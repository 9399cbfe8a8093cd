"""The ``controlnet`` command line.

The application layer (:mod:`controlnet_cli`): it imports :mod:`controlnet`, :mod:`problems` and
:mod:`solvers`, and nothing imports it. Each subcommand is a ``_<name>_parser`` that
adds its options and a ``_<name>`` handler. Bad input prints one line ``controlnet: error: ...``
(no traceback) and exits with status 2; a diverged solve exits with status 3, an interrupted one
(Ctrl-C, its last iterate saved and resumable) with 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controlnet.io import atomic_write, to_json

from .arguments import (Parser, UsageError, batch_size, comma_list, name, nonneg_float, positive_float,
                        positive_int, seed)
from .lock import output_lock

__all__ = ["main", "build_parser"]


def _add_problem_options(p):
    from problems import PROBLEMS

    g = p.add_argument_group("problem")
    g.add_argument("--problem", default="ring", choices=PROBLEMS, help="data set and default settings (default: ring)")
    g.add_argument("--samples", type=positive_int, help="training samples (default: the problem's, 500 for synthetic data); the test split has as many (digits: the rest)")
    g.add_argument("--width", type=positive_int, help="state width d; data are zero-padded to it (default: the problem's)")
    g.add_argument("--layers", type=positive_int, help="number of layers N (default: the problem's)")
    g.add_argument("--horizon", type=positive_float, help="time horizon T, step h = T/N (default: the problem's)")
    g.add_argument("--dynamics", help="vector field: inner σ(Wz+b), outer Wσ(z)+b, two_layer Bσ(Az+a), or a structured one: antisymmetric, hamiltonian, volume_preserving, mass_preserving, lipschitz")
    g.add_argument("--hidden", type=positive_int, help="inner width m of two_layer dynamics")
    g.add_argument("--activation", default="tanh", help="tanh, relu, softplus, sigmoid or identity (default: tanh)")
    g.add_argument("--integrator", default="euler", help="euler (a ResNet), rk4, no_residual (an MLP), lie/symplectic_euler or strang/leapfrog (splitting, for the structured fields) (default: euler)")
    g.add_argument("--l2", type=nonneg_float, help="weight α of (α/2)‖θ‖² in the running cost")
    g.add_argument("--l1", type=nonneg_float, default=0.0, help="weight of ‖θ‖₁ in the running cost")
    g.add_argument("--smoothness", type=nonneg_float, default=0.0, help="weight β of (β/2h)Σ‖θ_{k+1}−θ_k‖²")
    g.add_argument("--tracking", type=nonneg_float, default=0.0, help="weight γ of the loss at every layer")
    g.add_argument("--seed", type=seed, default=0, help="seed for data and initial controls (default: 0)")
    g.add_argument("--float64", action="store_true", help="compute in float64 (default: float32)")


def _task_from_args(args):
    import problems

    return problems.make(
        args.problem, samples=args.samples, seed=args.seed, width=args.width, layers=args.layers,
        horizon=args.horizon, dynamics=args.dynamics, hidden=args.hidden, activation=args.activation,
        integrator=args.integrator, l2=args.l2, l1=args.l1, smoothness=args.smoothness,
        tracking=args.tracking,
    )


def _check_out(out: Path):
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory; pick another path")


# -- train --------------------------------------------------------------------------------------
def _train_parser(sub):
    p = sub.add_parser("train", help="train one problem with one solver and save the result",
                       description="Train a problem with a solver; write result.json, the controls, "
                                   "a loss curve and a picture of the data flowing through the layers.")
    _add_problem_options(p)
    p.add_argument("--solver", default="gd", help="solver name (default: gd)")
    _add_training_options(p)
    p.add_argument("--seconds", type=positive_float, help="wall-time budget in seconds")
    _add_msa_options(p)
    p.add_argument("--out", type=Path, help="output directory (default: the --resume directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    p.add_argument("--animate", action="store_true",
                   help="also write flow.gif: the data moving through the layers, one frame per layer "
                        "(with the grid of the input plane for 2-D inputs)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="K",
                   help="save the whole solver state to OUT/checkpoint.npz every K iterations "
                        "(it is also saved on Ctrl-C and at the end)")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the run saved in DIR/checkpoint.npz; pass the same problem and "
                        "solver options (--iters counts from the start of the original run)")
    p.set_defaults(handler=_train)


def _add_training_options(p, each=""):
    """``--iters``, ``--lr``, ``--schedule``, ``--batch-size``: unset ones take the problem's
    :data:`problems.TRAINING` (filled in by :func:`_fill_training_defaults`)."""
    p.add_argument("--iters", type=positive_int, help=f"iteration budget{each} (default: the problem's; 500 for the toys, 1500 for the conv nets)")
    p.add_argument("--lr", type=positive_float,
                   help="learning rate of gd's Adam, or pgd's first step (default: the problem's; 0.01 for the toys)")
    p.add_argument("--schedule", choices=("constant", "cosine"),
                   help="gd's learning rate: constant, or cosine-decayed to 0 over --iters (default: the problem's)")
    p.add_argument("--batch-size", type=batch_size,
                   help="minibatch size, or 'full' (default: the problem's; the full batch for the toys, 128 for the conv nets)")


def _fill_training_defaults(args):
    """Unset training options take the problem's defaults; ``--batch-size full`` is ``None``."""
    import problems

    for k, v in problems.training_defaults(args.problem).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.batch_size == "full":
        args.batch_size = None
    return args


def _solver_from_args(args):
    import optax

    import solvers

    _fill_training_defaults(args)  # idempotent: the handlers have usually filled them already
    opts = {}
    if args.solver == "gd":
        lr = optax.cosine_decay_schedule(args.lr, args.iters) if args.schedule == "cosine" else args.lr
        opts = dict(optimizer=optax.adam(lr), batch_size=args.batch_size)
    if args.solver == "pgd":  # --lr is the first step, which backtracking then adapts
        opts = dict(lr=args.lr)
    if args.solver in ("msa", "emsa", "discrete"):
        opts = {"batch_size": args.batch_size}
        if args.solver != "discrete":
            opts.update(inner_steps=getattr(args, "inner_steps", None), inner_lr=getattr(args, "inner_lr", None),
                        inner=getattr(args, "inner", None))
        if args.solver == "emsa":
            opts["rho"] = getattr(args, "rho", None)
        opts = {k: v for k, v in opts.items() if v is not None}
    return solvers.make_solver(args.solver, **opts)


def _add_msa_options(p):
    g = p.add_argument_group("MSA (solvers msa, emsa)")
    g.add_argument("--rho", type=positive_float, help="E-MSA penalty ρ, the initial value (default: 5, then adapted)")
    g.add_argument("--inner-steps", type=positive_int, help="Hamiltonian-maximization steps per iteration (default: 1 Newton or 3 optax steps for emsa, 10 for msa)")
    g.add_argument("--inner-lr", type=positive_float,
                   help="inner step: E-MSA's dimensionless step (default 0.5), basic MSA's Adam rate (default 0.05)")
    g.add_argument("--inner", choices=("auto", "optax", "newton", "ipopt"),
                   help="the Hamiltonian maximization: a few optimizer steps for all layers at once "
                        "(optax), a Newton step per layer (newton), or every layer exactly with "
                        "CasADi + IPOPT (ipopt; small problems); auto takes newton where its Hessian has a "
                        "closed form (inner and outer dynamics), else optax (default: auto for emsa, optax for msa)")


#: ``train`` options that may change between a run and its resumption (budget and output).
_RUN_OPTIONS = ("command", "handler", "out", "resume", "checkpoint_every", "iters", "seconds", "quiet", "animate")


def _train_config(args) -> dict:
    """The problem and solver options of a ``train`` run: what a resumed run must repeat."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
            if k not in _RUN_OPTIONS and not callable(v)}


def _check_resume(args) -> Path:
    from controlnet.io import checkpoint_info

    path = args.resume / "checkpoint.npz"
    saved = checkpoint_info(path).get("cli")
    if saved is not None:
        now = _train_config(args)
        diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        if diff:
            opts = ", ".join(f"--{k.replace('_', '-')} {now.get(k)} (checkpoint: {saved.get(k)})"
                             for k in diff)
            raise UsageError(f"cannot resume from {args.resume}: {opts}; pass the same problem "
                             "and solver options as the original run")
    return path


def _train(args):
    import warnings

    import jax

    import solvers

    if args.out is None and args.resume is None:
        raise UsageError("train needs --out DIR (or --resume DIR to continue a run there)")
    if args.resume is not None and args.resume.exists() and not args.resume.is_dir():
        raise UsageError(f"--resume {args.resume} is not a directory; pass the --out directory "
                         "of the run to continue")
    out = args.out if args.out is not None else args.resume
    _check_out(out)
    _fill_training_defaults(args)
    solver = _solver_from_args(args)
    # A solver with run() (direct: one IPOPT solve) has no iterations to checkpoint.
    one_solve = callable(getattr(solver, "run", None))
    if one_solve and (args.checkpoint_every is not None or args.resume is not None):
        raise UsageError(f"--solver {args.solver} is one solve with no state to checkpoint; drop "
                         "--checkpoint-every and --resume")
    resume = _check_resume(args) if args.resume is not None else None
    task = _task_from_args(args)
    # One compiled function instead of one compile per eager op (seconds on a loaded machine).
    init = jax.jit(lambda problem, key: problem.init_controls(key))
    controls = init(task.problem, jax.random.PRNGKey(args.seed))
    with output_lock(out, "train"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*diverged at iteration", category=RuntimeWarning)
        result = solvers.solve(solver, task.problem, controls, seed=args.seed, max_iters=args.iters,
                               max_seconds=args.seconds, test=task.test, progress=False if args.quiet else None,
                               checkpoint=None if one_solve else out / "checkpoint.npz",
                               checkpoint_every=args.checkpoint_every,
                               resume=resume, checkpoint_meta={"cli": _train_config(args)})
        result.save(out)
        _save_pictures(out, task, result, animate=args.animate)
    summary = {k: result.info[k] for k in ("loss", "accuracy", "test_accuracy", "iterations", "wall_time") if k in result.info}
    print(to_json({"status": result.status, **summary}))
    print(f"wrote {out}/result.json, controls.npz, history.npz, {'' if one_solve else 'checkpoint.npz, '}"
          "flow.png, loss.png"
          + (", flow.gif" if args.animate else ""))
    if result.diverged:
        print(f"controlnet: error: {result.info['solver']} diverged at iteration "
              f"{result.info['diverged_at']} (non-finite loss, gradient or iterate); the last "
              f"finite iterate is saved in {out}", file=sys.stderr)
        return 3
    if result.status == "interrupted":
        print(f"controlnet: interrupted after {result.info['iterations']} iterations; saved in "
              f"{out}; continue with the same options and --resume {out}", file=sys.stderr)
        return 130
    return 0


def _save_pictures(out: Path, task, result, animate: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import jax
    import matplotlib.pyplot as plt

    import controlnet as cn
    from controlnet import plotting

    problem, controls = task.problem, result.controls
    zs = jax.jit(lambda p, c: cn.forward(p, c.theta, p.z0(c.lift)))(problem, controls)
    if zs.ndim > 3:  # channels × space: one sample's feature maps through the layers
        fig = plotting.plot_feature_maps(zs, T=float(problem.T),
                                         title=f"{task.name}: feature maps of sample 0 ({result.info['solver']})")
    else:
        fig = plotting.plot_flow(zs, problem.y, T=float(problem.T),
                                 title=f"{task.name}: data through the layers ({result.info['solver']})")
    _save_fig(fig, out / "flow.png")
    if animate:
        grid = plotting._grid_states(problem, controls, 11, 60) if problem.x.ndim == 2 and problem.x.shape[1] == 2 else None
        plotting.save_animation(plotting.animate_flow(zs, problem.y, grid=grid, T=float(problem.T),
                                                      title=f"{task.name} ({result.info['solver']})"), out / "flow.gif")
    if len(result.history.get("loss", ())):
        fig = plotting.plot_history({result.info["solver"]: result.history})
        _save_fig(fig, out / "loss.png")
    plt.close("all")


def _save_fig(fig, path: Path):

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


# -- turnpike: the depth-versus-turnpike study ---------------------------------------------------
def _turnpike_parser(sub):
    p = sub.add_parser("turnpike", help="sweep the horizon T (or N) and measure error, ‖θ(t)‖ and the turnpike",
                       description="The depth-versus-turnpike study: train the problem for every horizon T at a "
                                   "fixed step h (N = T/h layers) or, with --fixed-T, every N at a fixed T; "
                                   "once with the L² running cost only and once with tracking. Writes "
                                   "OUT/summary.json and plots of the error against T and of ‖θ(t)‖ and the "
                                   "flow speed against t/T.")
    _add_problem_options(p)
    p.set_defaults(tracking=1.0)
    p.add_argument("--horizons", type=comma_list(positive_float, what="horizons"), default="1,2,4,8,16", help="comma-separated horizons T (default: 1,2,4,8,16)")
    p.add_argument("--step", type=positive_float, default=0.25, help="step h; N = round(T/h) (default: 0.25)")
    p.add_argument("--fixed-T", action="store_true",
                   help="sweep N = round(T_j/h) at the fixed horizon --horizon (default: the largest of --horizons)")
    p.add_argument("--loss", choices=("logistic", "squared"), default="logistic",
                   help="logistic, or squared: ½(λ2(z) − y)² on the 0/1 labels, whose minimum is attained "
                        "at finite states as the turnpike theorem assumes (default: logistic)")
    p.add_argument("--solver", default="gd", help="solver name (default: gd)")
    p.add_argument("--iters", type=positive_int, default=2000, help="iterations per horizon (default: 2000)")
    p.add_argument("--lr", type=positive_float, default=1e-2,
                   help="initial learning rate of Adam, decayed to 1%% of it over --iters by a cosine schedule "
                        "(a constant rate leaves a noise floor of about lr in ‖θ(t)‖) (default: 0.01)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default: full batch)")
    p.add_argument("--init-scale", type=nonneg_float, default=0.1, help="scale of the random initial controls (default: 0.1)")
    p.add_argument("--eps", type=positive_float, default=0.1, help="band ‖θ(t)‖ ≤ ε (and flow speed ≤ ε) (default: 0.1)")
    p.add_argument("--warm-start", choices=("none", "tracking", "both"), default="none",
                   help="start each horizon from the previous solution, its new layers at θ = 0 "
                        "(continuation in T): for no sweep, the tracking sweep only, or both (default: none)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(handler=_turnpike)


def _turnpike_factory(args):
    """``factory(T, N, tracking)`` for the depth study, from the problem options."""
    import dataclasses

    import numpy as np

    import controlnet as cn
    import problems

    def factory(T, N, tracking):
        p = problems.make(
            args.problem, samples=args.samples, seed=args.seed, width=args.width, layers=N,
            horizon=T, dynamics=args.dynamics, hidden=args.hidden, activation=args.activation,
            integrator=args.integrator, l2=args.l2, l1=args.l1, smoothness=args.smoothness,
            tracking=tracking, test_samples=0,
        ).problem
        if args.loss == "squared":
            p = dataclasses.replace(p, loss=cn.SquaredError(1), y=np.asarray(p.y, float)[:, None])
        return p

    return factory


def _finite_or_none(v):
    import math

    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


def _turnpike(args):
    _check_out(args.out)
    if args.layers is not None:
        raise UsageError("turnpike sets N from --horizons and --step; drop --layers")
    horizons = sorted(args.horizons)
    fixed_T = (args.horizon or max(horizons)) if args.fixed_T else None
    if args.horizon is not None and not args.fixed_T:
        raise UsageError("--horizon is the fixed T of --fixed-T; without it the horizons come from --horizons")
    factory = _turnpike_factory(args)
    factory(horizons[0], 1, 0.0)  # bad problem options fail here, before any training
    if args.solver == "gd":
        import optax

        import solvers

        schedule = optax.cosine_decay_schedule(args.lr, args.iters, alpha=0.01)
        solver = solvers.make_solver("gd", optimizer=optax.adam(schedule), batch_size=args.batch_size)
    else:
        solver = _solver_from_args(args)
    with output_lock(args.out, "turnpike"):
        return _run_turnpike(args, factory, solver, horizons, fixed_T)


def _run_turnpike(args, factory, solver, horizons, fixed_T):
    from solvers.depth_study import depth_study, depth_vs_turnpike

    def report(run):
        print(f"  T={run['T']:g} N={run['N']}: error {run['training_error']:.3g}, ‖θ‖_L2 {run['theta_l2']:.3g}, "
              f"μ {run['mu']:.3g}, band {run['band_fraction']:.2f} ({run['wall_time']:.1f} s)", file=sys.stderr)

    options = dict(step=args.step, fixed_T=fixed_T, max_iters=args.iters, seed=args.seed,
                   init_scale=args.init_scale, eps=args.eps, callback=report)
    if args.warm_start == "tracking" and args.tracking > 0:
        summary = {"l2": depth_study(factory, solver, horizons, tracking=0.0, **options),
                   "tracking": depth_study(factory, solver, horizons, tracking=args.tracking,
                                           warm_start=True, **options)}
    else:
        summary = depth_vs_turnpike(factory, solver, horizons, tracking=args.tracking,
                                    warm_start=args.warm_start == "both", **options)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
              if k not in ("command", "handler") and not callable(v)}
    summary = _finite_or_none({"config": config, **summary})
    text = to_json(summary, indent=1).encode()
    atomic_write(args.out / "summary.json", lambda f: f.write(text))
    names = _save_turnpike_pictures(args.out, summary)
    for name in ("l2", "tracking"):
        if name in summary:
            s = summary[name]
            print(to_json({"cost": name, f"slope_vs_{s['slope_against']}": s["slope"],
                              "mu": [r["mu"] for r in s["runs"]],
                              "band_fraction": [r["band_fraction"] for r in s["runs"]]}))
    print(f"wrote {args.out}/summary.json, " + ", ".join(names))
    return 0


def _save_turnpike_pictures(out: Path, summary: dict) -> list[str]:
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
    _save_fig(plotting.plot_error_vs_horizon(series, xlabel="horizon T" if against == "T" else "layers N"),
              out / "error.png")
    names.append("error.png")
    for k, s in sweeps.items():
        for key in ("theta_norm", "speed"):
            fig = plotting.plot_turnpike(s["runs"], key, eps=s["eps"],
                                         title=f"{'L² only' if k == 'l2' else 'with tracking'}")
            _save_fig(fig, out / f"{key}_{k}.png")
            names.append(f"{key}_{k}.png")
    plt.close("all")
    return names

# -- compare: several solvers, one problem, the same initial controls ----------------------------
def _compare_parser(sub):
    p = sub.add_parser("compare", help="run several solvers on one problem from the same initial controls",
                       description="Run each solver on the same problem from the same initial controls; print "
                                   "one table (final loss, accuracy, iterations, wall time, time to reach the "
                                   "target loss) and write OUT/summary.json, loss_vs_iter.png, loss_vs_time.png.")
    _add_problem_options(p)
    p.add_argument("--solvers", type=comma_list(name, what="solver names"), default="gd,emsa",
                   help="comma-separated solver names from the registry (default: gd,emsa)")
    _add_training_options(p, each=" of each solver")
    p.add_argument("--seconds", type=positive_float, help="wall-time budget of each solver in seconds")
    p.add_argument("--target-loss", type=positive_float,
                   help="loss level for the time-to-target column (default: a tenth of the initial loss)")
    _add_msa_options(p)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(handler=_compare)


def _compare(args):
    import jax

    import solvers
    from solvers import compare

    _check_out(args.out)
    _fill_training_defaults(args)
    names = args.solvers  # a list without empty or repeated entries (arguments.comma_list)
    unknown = [n for n in names if n not in solvers.SOLVERS]
    if unknown:
        raise UsageError(f"--solvers: unknown solver(s) {', '.join(unknown)}; choose from {sorted(solvers.SOLVERS)}")
    built = [_solver_from_args(argparse.Namespace(**{**vars(args), "solver": n})) for n in names]
    task = _task_from_args(args)
    controls = jax.jit(lambda problem, key: problem.init_controls(key))(task.problem, jax.random.PRNGKey(args.seed))
    with output_lock(args.out, "compare"):
        cmp = compare.compare(task.problem, dict(zip(names, built)), controls, max_iters=args.iters,
                              max_seconds=args.seconds, target_loss=args.target_loss, seed=args.seed, test=task.test)
        print(compare.format_table(cmp.summary))
        written = compare.save(cmp, args.out)
    print(f"target loss {cmp.target_loss:.4g}; wrote " + ", ".join(str(w) for w in written))
    return 0


# -- entry point --------------------------------------------------------------------------------
SUBCOMMANDS = [_train_parser, _turnpike_parser]
SUBCOMMANDS.append(_compare_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="controlnet", description="Train neural networks as optimal control problems.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv``; returns the exit status (0 ok, 2 bad input, 3 diverged,
    130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "float64", False):
            import jax

            jax.config.update("jax_enable_x64", True)
        return args.handler(args)
    except (UsageError, ValueError, TypeError, OSError) as e:
        # Validation errors say what to change; a traceback would hide that line.
        print(f"controlnet: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a solve (which handles Ctrl-C itself): nothing to save
        print("controlnet: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
