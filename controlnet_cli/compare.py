"""``controlnet compare``: several solvers on one problem from the same initial controls.

Each solver is a run spec (the same problem, seed, so initial controls and key, and budget) of
one sweep (:mod:`studies`): its run goes to ``OUT/runs/<hash>``, so running the same command
again skips the finished runs (``OUT/study.json`` marks the folder as this command's study; see
:func:`~controlnet_cli.sweep.prepare_study_out`). A line on stderr reports each run as it ends:
its compile time apart from its iterations' time; the numbers are
:func:`solvers.compare.entry`'s, read back from the run folders. Then one table (both times as
columns), ``OUT/summary.json``, ``loss_vs_iter.png`` and ``loss_vs_time.png`` (a log time axis
when the times span decades). ``--ray``/``--address`` run the solvers' runs on Ray.
"""

from __future__ import annotations

import sys

from controlnet.io import atomic_write, to_json

from .arguments import UsageError, comma_list, name, out_dir, positive_float
from .figures import log_time_axis, save_fig
from .lock import output_lock
from .problem_options import add_budget_options, add_problem_options, fill_training_defaults, task_from_args
from .solver_options import add_solver_options
from .sweep import add_executor_options, executor_from_args, mark_study, prepare_study_out, solver_spec

__all__ = ["add_parser", "run", "table", "run_line"]


def add_parser(sub):
    p = sub.add_parser("compare", help="run several solvers on one problem from the same initial controls",
                       description="Run each solver on the same problem from the same initial controls; report "
                                   "each as it finishes, then print one table (final loss, accuracy, iterations, "
                                   "compile and iteration time, time to reach the target loss) and write "
                                   "OUT/summary.json, loss_vs_iter.png, loss_vs_time.png.")
    add_problem_options(p)
    import solvers

    p.add_argument("--solvers", type=comma_list(name, what="solver names"), default="gd,emsa",
                   help=f"comma-separated solver names: {', '.join(solvers.SOLVERS)} (default: gd,emsa)")
    add_budget_options(p, each=" of each solver")
    p.add_argument("--seconds", type=positive_float, help="wall-time budget of each solver in seconds")
    p.add_argument("--target-loss", type=positive_float,
                   help="loss level for the time-to-target column (default: a tenth of the initial loss)")
    p.add_argument("--out", type=out_dir, required=True,
                   help="output directory; a comparison already there is resumed (finished runs skipped)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out holds (a comparison there: train every run again)")
    add_executor_options(p)
    p.set_defaults(handler=run, solver_options=add_solver_options(p))


def run_line(label: str, entry: dict) -> str:
    """One finished run: loss, accuracy, iterations with their time, the compile time apart."""
    cell = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    return (f"{label}: loss {cell(entry['loss'], '.4g')}, accuracy {cell(entry['accuracy'], '.3f')}, "
            f"{entry['iterations']} iterations in {cell(entry['wall_time'], '.2f')} s "
            f"(compile {cell(entry.get('compile_time'), '.2f')} s), {entry['status']}")


def table(summary: dict) -> str:
    """One plain-text table, a row per solver; compile and iteration seconds in two columns."""
    head = ("solver", "final loss", "accuracy", "iters", "compile [s]", "iterating [s]", "to target [s]",
            "iters to target", "status")
    cell = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    rows = [head] + [(n, cell(e["loss"], ".4g"), cell(e["accuracy"], ".3f"), str(e["iterations"]),
                      cell(e.get("compile_time"), ".2f"), cell(e["wall_time"], ".2f"),
                      cell(e["time_to_target"], ".2f"), cell(e["iters_to_target"], "d"), e["status"])
                     for n, e in summary.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args):
    import solvers

    resume = prepare_study_out(args.out, "compare", overwrite=args.overwrite)
    names = args.solvers  # a list without empty or repeated entries (arguments.comma_list)
    unknown = [n for n in names if n not in solvers.SOLVERS]
    if unknown:
        raise UsageError(f"--solvers: unknown solver(s) {', '.join(unknown)}; choose from {sorted(solvers.SOLVERS)}")
    fill_training_defaults(args)
    executor = executor_from_args(args)
    specs = _specs(args, names)
    task_from_args(args)  # the problem's checks and its data, before any run
    with output_lock(args.out, "compare"):
        mark_study(args.out, "compare")
        cmp = _compare_swept(args, specs, executor, resume)
        if cmp is None:
            return 1
        print(table(cmp.summary))
        written = _save(cmp, args.out)
    print(f"target loss {cmp.target_loss:.4g}; wrote " + ", ".join(str(w) for w in written))
    return 0


def _specs(args, names) -> dict:
    """Solver name -> run spec: the same problem, seed (so the same initial controls) and budget."""
    import studies

    problem = {k: getattr(args, k) for k in ("samples", "width", "layers", "horizon", "dynamics", "hidden",
                                             "activation", "integrator", "l2", "l1", "smoothness", "tracking")
               if getattr(args, k) is not None}
    budget = {"max_iters": args.iters, **({"max_seconds": args.seconds} if args.seconds is not None else {})}
    specs = {n: {"problem": {"name": args.problem, "seed": args.seed, **problem},
                 "solver": solver_spec(args, n, among=names), "seed": args.seed, "budget": budget,
                 "init_scale": 1.0, "precision": "float64" if args.float64 else "float32"} for n in names}
    try:
        return {n: studies.normalize(s) for n, s in specs.items()}
    except ValueError as e:
        raise UsageError(str(e)) from None


def _target(args, spec) -> float:
    """``--target-loss``, or a tenth of the loss of the runs' common initial controls."""
    import solvers
    import studies

    if args.target_loss is not None:
        return float(args.target_loss)
    with studies.precision_scope(spec):
        built = studies.build(spec)
        return float(solvers.evaluate(built.task.problem, built.controls)["loss"]) / 10.0


def _compare_swept(args, specs, executor, resume):
    """The runs as a sweep into ``args.out`` (finished ones skipped), a line on stderr as each
    ends; the :class:`solvers.compare.Comparison` read back from the run folders, or ``None``
    when a run failed."""
    import controlnet as cn
    import studies
    from solvers import compare

    target = _target(args, next(iter(specs.values())))
    label = {studies.spec_hash(s): n for n, s in specs.items()}
    results, failed = {}, []

    def report(outcome):
        done = f"  [{len(results) + len(failed) + 1}/{len(specs)}] "
        if outcome.error is not None:
            failed.append(label[outcome.run])
            print(done + f"{label[outcome.run]}: failed: {outcome.error}", file=sys.stderr)
            return
        result = results[label[outcome.run]] = cn.Result.load(args.out / "runs" / outcome.run)
        line = run_line(label[outcome.run], compare.entry(result, target))
        print(done + line + ("" if outcome.trained else " (finished before)"), file=sys.stderr)

    studies.sweep(list(specs.values()), args.out, executor=executor, progress=False, summary=False, on_run=report,
                  force=not resume and (args.out / "runs").is_dir())
    if failed:  # no table with holes; a rerun trains the failed runs again
        print(f"controlnet: error: {', '.join(failed)} failed; the messages are in "
              f"{args.out}/runs/<run>/failed.json", file=sys.stderr)
        return None
    ordered = {n: results[n] for n in specs}
    return compare.Comparison(ordered, {n: compare.entry(r, target) for n, r in ordered.items()}, target)


def _save(cmp, out):
    """``summary.json``, ``loss_vs_iter.png``, ``loss_vs_time.png`` (log time axis where the
    times span decades) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from solvers import compare

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "loss_vs_iter.png", out / "loss_vs_time.png"]
    text = to_json(cmp.summary, indent=2).encode()
    atomic_write(paths[0], lambda f: f.write(text))
    save_fig(compare.plot_loss(cmp, "iteration"), paths[1])
    fig = compare.plot_loss(cmp, "time")
    log_time_axis(fig.axes[0], [np.cumsum(r.history["time"]) for r in cmp.results.values() if "time" in r.history])
    save_fig(fig, paths[2])
    plt.close("all")
    return paths
