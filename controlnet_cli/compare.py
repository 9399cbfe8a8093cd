"""``controlnet compare``: several solvers on one problem from the same initial controls.

Each solver runs through :func:`solvers.compare.compare` in turn, with the same controls, key,
budget and target loss, and a line on stderr reports it as it finishes: its compile time apart
from its iterations' time. Then one table (both times as columns), ``OUT/summary.json``,
``loss_vs_iter.png`` and ``loss_vs_time.png`` (a log time axis when the times span decades).
"""

from __future__ import annotations

import sys

from controlnet.io import atomic_write, to_json

from .arguments import UsageError, comma_list, name, out_dir, positive_float
from .figures import log_time_axis, save_fig
from .guards import check_out
from .lock import output_lock
from .problem_options import add_budget_options, add_problem_options, fill_training_defaults, task_from_args
from .solver_options import add_solver_options, solver_from_args

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
    p.add_argument("--out", type=out_dir, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace the comparison already in --out")
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
    import jax

    import solvers

    check_out(args.out, overwrite=args.overwrite, can_resume=False)
    names = args.solvers  # a list without empty or repeated entries (arguments.comma_list)
    unknown = [n for n in names if n not in solvers.SOLVERS]
    if unknown:
        raise UsageError(f"--solvers: unknown solver(s) {', '.join(unknown)}; choose from {sorted(solvers.SOLVERS)}")
    fill_training_defaults(args)
    built = {n: solver_from_args(args, n, among=names) for n in names}
    task = task_from_args(args)
    controls = jax.jit(lambda problem, key: problem.init_controls(key))(task.problem, jax.random.PRNGKey(args.seed))
    with output_lock(args.out, "compare"):
        cmp = _compare_each(args, task, built, controls)
        print(table(cmp.summary))
        written = _save(cmp, args.out)
    print(f"target loss {cmp.target_loss:.4g}; wrote " + ", ".join(str(w) for w in written))
    return 0


def _compare_each(args, task, built, controls):
    """:func:`solvers.compare.compare` one solver at a time (the same target for all), a line
    on stderr after each."""
    import solvers
    from solvers import compare

    target = args.target_loss
    if target is None:
        target = solvers.evaluate(task.problem, controls)["loss"] / 10.0
    results, summary = {}, {}
    for label, solver in built.items():
        one = compare.compare(task.problem, {label: solver}, controls, max_iters=args.iters,
                              max_seconds=args.seconds, target_loss=target, seed=args.seed, test=task.test)
        results.update(one.results)
        summary.update(one.summary)
        print(f"  [{len(summary)}/{len(built)}] " + run_line(label, one.summary[label]), file=sys.stderr)
    return compare.Comparison(results, summary, float(target))


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
