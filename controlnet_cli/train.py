"""``controlnet train``: one problem, one solver, one result folder.

Writes ``OUT/result.json``, the controls, the history, the checkpoint (step solvers), a loss curve
and a picture of the data flowing through the layers. A folder holding a run or a result is
continued with ``--resume`` or replaced with ``--overwrite``, never silently
(:func:`controlnet_cli.guards.check_out`). Exit 3 when the solve diverges, 130 when interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

from controlnet.io import to_json

from .arguments import UsageError, out_dir, positive_float, positive_int
from .figures import save_fig
from .guards import check_out
from .lock import output_lock
from .problem_options import add_budget_options, add_problem_options, fill_training_defaults, task_from_args
from .solver_options import add_solver_choice, add_solver_options, solver_from_args

__all__ = ["add_parser", "run", "config_of"]

#: ``train`` options that may change between a run and its resumption (budget and output), and
#: the parser's own entries.
RUN_OPTIONS = ("command", "handler", "out", "resume", "overwrite", "checkpoint_every", "iters", "seconds", "quiet",
               "animate", "solver_options", "defaulted", "no_compile_cache")


def add_parser(sub):
    p = sub.add_parser("train", help="train one problem with one solver and save the result",
                       description="Train a problem with a solver; write result.json, the controls, "
                                   "a loss curve and a picture of the data flowing through the layers.")
    add_problem_options(p)
    add_solver_choice(p)
    add_budget_options(p)
    p.add_argument("--seconds", type=positive_float, help="wall-time budget in seconds")
    p.add_argument("--out", type=out_dir, help="output directory (default: the --resume directory)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run or result already in --out (without it such a folder is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    p.add_argument("--animate", action="store_true",
                   help="also write flow.gif: the data moving through the layers, one frame per layer "
                        "(with the grid of the input plane for 2-D inputs)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="K",
                   help="save the whole solver state to OUT/checkpoint.npz every K iterations "
                        "(it is also saved on Ctrl-C and at the end)")
    p.add_argument("--resume", type=out_dir, metavar="DIR",
                   help="continue the run saved in DIR/checkpoint.npz; pass the same problem and "
                        "solver options (--iters counts from the start of the original run)")
    p.set_defaults(handler=run, solver_options=add_solver_options(p))


def config_of(args) -> dict:
    """The problem and solver options of a ``train`` run: what a resumed run must repeat."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
            if k not in RUN_OPTIONS and not callable(v)}


def _check_resume(args) -> Path:
    from controlnet.io import checkpoint_info

    path = args.resume / "checkpoint.npz"
    saved = checkpoint_info(path).get("cli")
    if saved is not None:
        now = config_of(args)
        diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        if diff:
            opts = ", ".join(f"--{k.replace('_', '-')} {now.get(k)} (checkpoint: {saved.get(k)})"
                             for k in diff)
            raise UsageError(f"cannot resume from {args.resume}: {opts}; pass the same problem "
                             "and solver options as the original run")
    return path


def _out(args) -> Path:
    """The folder to write, after its checks (:func:`controlnet_cli.guards.check_out`)."""
    if args.out is None and args.resume is None:
        raise UsageError("train needs --out DIR (or --resume DIR to continue a run there)")
    if args.resume is not None and args.resume.exists() and not args.resume.is_dir():
        raise UsageError(f"--resume {args.resume} is not a directory; pass the --out directory "
                         "of the run to continue")
    if args.resume is not None and args.overwrite:
        raise UsageError("--resume continues the run in its folder and --overwrite replaces it; pass one of them")
    out = args.out if args.out is not None else args.resume
    continuing = args.resume is not None and out.resolve() == args.resume.resolve()
    check_out(out, overwrite=args.overwrite or continuing, can_resume=True)
    return out


def run(args):
    import warnings

    import jax

    import solvers

    out = _out(args)
    fill_training_defaults(args)
    solver = solver_from_args(args)
    # A one-shot solver (direct: one IPOPT solve) has no iterations to checkpoint.
    one_solve = solvers.protocol.solver_kind(solver) is solvers.OneShotSolver
    if one_solve and (args.checkpoint_every is not None or args.resume is not None):
        raise UsageError(f"--solver {args.solver} is one solve with no state to checkpoint; drop "
                         "--checkpoint-every and --resume")
    resume = _check_resume(args) if args.resume is not None else None
    task = task_from_args(args)
    # One compiled function instead of one compile per eager op (seconds on a loaded machine).
    init = jax.jit(lambda problem, key: problem.init_controls(key))
    controls = init(task.problem, jax.random.PRNGKey(args.seed))
    with output_lock(out, "train"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        old = _file_id(out / "checkpoint.npz") if args.overwrite else None
        result = solvers.solve(solver, task.problem, controls, seed=args.seed, max_iters=args.iters,
                               max_seconds=args.seconds, test=task.test, progress=False if args.quiet else None,
                               checkpoint=None if one_solve else out / "checkpoint.npz",
                               checkpoint_every=args.checkpoint_every,
                               resume=resume, checkpoint_meta={"cli": config_of(args)})
        result.save(out)
        if old is not None and _file_id(out / "checkpoint.npz") == old:
            # The replaced run's checkpoint, which this run did not write over (one-shot solver,
            # divergence): it must not be resumed later. Removed only once the new result is
            # saved, so a failed run leaves the old result and checkpoint as they were.
            (out / "checkpoint.npz").unlink()
        _save_pictures(out, task, result, animate=args.animate)
    return _report(args, out, result, one_solve, _divergence(caught))


def _file_id(path: Path):
    """``(device, inode, mtime)`` of ``path``, ``None`` if absent: whether a file was replaced."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _divergence(caught) -> str | None:
    """The solve's warning that it diverged (which iterate it kept, and why), taken out of the
    ``caught`` warnings; the others are shown as they would have been."""
    import warnings

    said = None
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "diverged at iteration" in str(w.message):
            said = " ".join(str(w.message).split())
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return said


def _report(args, out, result, one_solve, divergence) -> int:
    """Print the summary and the files; the exit status (3 diverged, 130 interrupted)."""
    info = result.info
    summary = {k: info[k] for k in ("loss", "accuracy", "test_accuracy", "iterations", "wall_time", "compile_time")
               if k in info}
    print(to_json({"status": result.status, **summary}))
    names = ["result.json", "controls.npz", "history.npz", "checkpoint.npz", "flow.png", "loss.png", "flow.gif"]
    # No checkpoint for a one-shot solver, nor after a divergence (a periodic one may stay).
    print(f"wrote {out}/" + ", ".join(n for n in names if (out / n).exists()
                                      and (n != "checkpoint.npz" or not one_solve)
                                      and (n != "flow.gif" or args.animate)))
    if result.diverged:
        said = divergence or f"{info['solver']} diverged at iteration {info['diverged_at']}"
        print(f"controlnet: error: {said}; saved in {out}", file=sys.stderr)
        return 3
    if result.status == "interrupted":
        print(f"controlnet: interrupted after {info['iterations']} iterations; saved in "
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
    if isinstance(problem, cn.StagedProblem):  # the first block's feature maps
        zs = jax.jit(lambda p, c: p.forward(c)[0])(problem, controls)
        T = float(problem.stages[0].T)
    else:
        zs = jax.jit(lambda p, c: cn.forward(p, c.theta, p.z0(c.lift)))(problem, controls)
        T = float(problem.T)
    if zs.ndim > 3:  # channels × space: one sample's feature maps through the layers
        fig = plotting.plot_feature_maps(zs, T=T,
                                         title=f"{task.name}: feature maps of sample 0 ({result.info['solver']})")
    else:
        fig = plotting.plot_flow(zs, problem.y, T=float(problem.T),
                                 title=f"{task.name}: data through the layers ({result.info['solver']})")
    save_fig(fig, out / "flow.png")
    if animate:
        grid = plotting._grid_states(problem, controls, 11, 60) if problem.x.ndim == 2 and problem.x.shape[1] == 2 else None
        plotting.save_animation(plotting.animate_flow(zs, problem.y, grid=grid, T=float(problem.T),
                                                      title=f"{task.name} ({result.info['solver']})"), out / "flow.gif")
    if len(result.history.get("loss", ())):
        save_fig(plotting.plot_history({result.info["solver"]: result.history}), out / "loss.png")
    plt.close("all")
