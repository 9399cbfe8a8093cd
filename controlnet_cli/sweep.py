"""``controlnet sweep``: a grid of runs (horizons × seeds × solvers) over any problem, resumable,
on one machine or a Ray cluster; ``controlnet sweep summarize OUT`` summarizes a study folder.

    controlnet sweep --problem ring --horizons 1,2,4,8 --seeds 0,1,2 --solvers gd,emsa \\
        --iters 300 --out runs/ring                        # a local Ray, one worker per core
    controlnet sweep ... --serial                          # one process, no Ray
    controlnet sweep ... --address 10.0.0.1:6379           # a running cluster (ray start --head)
    controlnet sweep summarize runs/ring                   # while it runs, or after it was killed

Every run lands in ``OUT/runs/<hash>/`` (:mod:`studies.run`); running the same command again
skips the finished runs. The summary goes to ``OUT/summary.json`` and ``OUT/summary.csv``; in
the folder of a ``turnpike`` or ``compare`` study (which keeps its own ``summary.json``),
``summarize`` writes ``OUT/runs_summary.json`` and ``.csv``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .arguments import Parser, UsageError, comma_list, nonneg_float, positive_float, positive_int, seed

__all__ = ["add_parser", "run", "main", "specs_from_args", "add_executor_options", "executor_from_args",
           "prepare_study_out", "solver_spec", "STUDY_FILE"]

#: The file that names the command whose study a folder holds (``{"command": "turnpike"}``).
STUDY_FILE = "study.json"

#: Why ``turnpike`` and ``compare`` run in this process unless told otherwise.
SERIAL_WHY = ("runs in this process by default: a local Ray takes about 10 s to start, load its workers and "
              "stop, and each worker compiles the programs again, so it pays off only when the runs are long "
              "or there are more cores")


def add_parser(subparsers):
    """Add the ``sweep`` subcommand to ``subparsers`` (its handler: :func:`run`)."""
    from problems import PROBLEMS

    p = subparsers.add_parser(
        "sweep", help="run a grid of runs (horizons x seeds x solvers), resumable, locally or on Ray",
        description="Train every combination of --horizons, --seeds and --solvers, each run into "
                    "OUT/runs/<hash> (finished runs are skipped on a rerun), on a local Ray with one "
                    "worker per core (--serial: in this process; --address: a running Ray cluster), then "
                    "write OUT/summary.json and OUT/summary.csv. `controlnet sweep summarize OUT` only "
                    "summarizes.")
    p.add_argument("action", nargs="*", metavar="summarize OUT", help="summarize the study in OUT instead")
    p.add_argument("--problem", default="ring", choices=PROBLEMS, help="the problem (default: ring)")
    p.add_argument("--horizons", type=comma_list(positive_float, what="horizons"),
                   help="horizons T (default: the problem's)")
    p.add_argument("--step", type=positive_float,
                   help="fixed step h: each horizon gets N = round(T/h) layers (default: the problem's N)")
    p.add_argument("--layers", type=positive_int, help="layers N (default: the problem's; not with --step)")
    p.add_argument("--samples", type=positive_int, help="training samples (default: the problem's)")
    p.add_argument("--seeds", type=comma_list(seed, what="seeds"), default=[0], help="seeds (default: 0)")
    p.add_argument("--solvers", type=comma_list(str, what="solvers"), default=["gd"],
                   help="solver names (default: gd)")
    p.add_argument("--iters", type=positive_int, default=300, help="iterations per run (default: 300)")
    p.add_argument("--lr", type=positive_float, help="gd's Adam learning rate (default: 0.01)")
    p.add_argument("--init-scale", type=positive_float, default=1.0, help="scale of the initial controls (default: 1)")
    p.add_argument("--l2", type=nonneg_float, help="weight of (α/2)‖θ‖² (default: the problem's)")
    p.add_argument("--float64", action="store_true", help="compute in float64 (default: float32)")
    p.add_argument("--out", type=Path, help="the study folder")
    p.add_argument("--address", help="join the Ray cluster at HOST:PORT (default: start a local Ray)")
    p.add_argument("--workers", type=positive_int, help="local Ray workers (default: one per core)")
    p.add_argument("--serial", action="store_true", help="run in this process, without Ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)
    return p


def specs_from_args(args) -> list[dict]:
    """The run specs of the command line's grid."""
    import studies

    if args.step is not None and args.layers is not None:
        raise UsageError("--step sets the layers of each horizon (N = round(T/h)); drop --layers")
    if args.step is not None and not args.horizons:
        raise UsageError("--step needs --horizons")
    problem = {"name": args.problem}
    for key, value in (("layers", args.layers), ("samples", args.samples), ("l2", args.l2)):
        if value is not None:
            problem[key] = value
    base = {"problem": problem, "solver": "gd", "budget": {"max_iters": args.iters},
            "init_scale": args.init_scale, "precision": "float64" if args.float64 else "float32"}
    solver_values = [({"name": s, "lr": args.lr} if (s == "gd" and args.lr is not None) else s) for s in args.solvers]
    if args.lr is not None and "gd" not in args.solvers:
        raise UsageError("--lr is gd's learning rate; add gd to --solvers or drop --lr")
    axes = {}
    if args.horizons:
        if args.step is not None:
            axes[("problem.horizon", "problem.layers")] = [(T, max(1, round(T / args.step))) for T in args.horizons]
        else:
            axes["problem.horizon"] = args.horizons
    axes["seed"] = args.seeds
    axes["solver"] = solver_values
    return studies.grid(base, axes)


def add_executor_options(p):
    """``--ray``, ``--address``, ``--workers`` of a study command that runs serially by default
    (:data:`SERIAL_WHY`)."""
    g = p.add_argument_group("where the runs go", f"The study {SERIAL_WHY}. Each run is written to "
                                                   "OUT/runs/<hash> wherever it trains.")
    g.add_argument("--ray", action="store_true", help="run the study's runs on a local Ray, one worker per core")
    g.add_argument("--address", help="run them on the Ray cluster at HOST:PORT (ray start --head)")
    g.add_argument("--workers", type=positive_int, help="workers of the local Ray (default: one per core)")


def executor_from_args(args):
    """The executor ``--ray``/``--address``/``--workers`` ask for (default: serial); Ray missing
    is one line naming the extra."""
    import studies

    if args.workers is not None and args.address is not None:
        raise UsageError("--workers sizes a local Ray; a cluster at --address has its own: drop --workers")
    if not (args.ray or args.address or args.workers):
        return studies.SerialExecutor()
    try:
        return studies.RayExecutor(address=args.address, workers=args.workers)
    except ImportError as e:
        raise UsageError(str(e)) from None


def prepare_study_out(out: Path, command: str, *, overwrite: bool) -> bool:
    """Check ``--out`` for a study command; ``True`` when it continues the study there.

    A folder holding this command's study (:data:`STUDY_FILE` says ``command``, and it has
    ``runs/``) is resumed: finished runs are skipped, the others trained, the summary rebuilt.
    Any other result (another command's study, a ``train`` result, a ``summary.json``) is
    refused unless ``--overwrite``, as :func:`~controlnet_cli.guards.check_out` says. With
    ``--overwrite`` every run of the study is trained again."""
    import json

    from .guards import check_out

    study = out / STUDY_FILE
    if out.is_dir() and study.is_file() and (out / "runs").is_dir():
        try:
            held = json.loads(study.read_text()).get("command")
        except (ValueError, AttributeError):
            held = None
        if held == command:
            return not overwrite
        if not overwrite:
            raise UsageError(f"--out {out} holds a study of `controlnet {held}`; pass --overwrite to write a "
                             f"`controlnet {command}` study there, or choose another --out")
        return False
    check_out(out, overwrite=overwrite, can_resume=False)
    return False


def mark_study(out: Path, command: str) -> None:
    """Write :data:`STUDY_FILE` naming ``command`` (before the first run, so a killed study resumes)."""
    from controlnet.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / STUDY_FILE, lambda f: f.write(f'{{"command": "{command}"}}\n'.encode()))


def solver_spec(args, name: str, *, among: list | None = None, floor: float = 0.0) -> dict:
    """The run spec's ``solver`` mapping of solver ``name`` from the command line: the options
    typed and the problem's training defaults, as :func:`~controlnet_cli.solver_options.
    solver_from_args` builds the object (called first, for its checks); gradient descent's
    ``--lr``/``--schedule`` as the spec's ``lr``/``schedule`` (a cosine ending at ``floor·lr``)."""
    import dataclasses

    import solvers

    from .problem_options import TRAINING_FLAGS
    from .solver_options import given_solver_options, problem_solver_defaults, solver_from_args, solver_mapping

    solver_from_args(args, name, among=among, floor=floor)
    options = args.solver_options
    defaulted = set(getattr(args, "defaulted", ()))
    given = {f: v for f, v in given_solver_options(args, options).items() if f[2:].replace("-", "_") not in defaulted}
    defaults = {TRAINING_FLAGS[k]: getattr(args, k) for k in args.defaulted if k in TRAINING_FLAGS}
    spec = solver_mapping(name, given, defaults, options, problem_solver_defaults(args, name))
    fields = {f.name for f in dataclasses.fields(solvers.SOLVERS[name]) if f.init}
    if "optimizer" in fields and "schedule" not in fields:  # lr and schedule build gd's Adam
        for k in ("lr", "schedule"):
            if spec.get(k) is None:
                spec.pop(k, None)
        if spec.get("schedule") == "cosine" and floor:
            spec["floor"] = floor
    return spec


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _print_summary(summary: dict) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items()))
    print(f"{len(summary['runs'])} runs: {counts}")
    for r in summary["runs"]:
        axes = " ".join(f"{k}={r.get(k)}" for k in summary["axes"] if k != "problem.seed")
        if r["status"] == "failed":
            print(f"  {r['run']} {axes} failed: {r['error']}")
        elif r["status"] != "pending":
            print(f"  {r['run']} {axes} {r['status']} loss {_num(r['loss'], '.4g')} accuracy "
                  f"{_num(r['accuracy'], '.3f')} ({_num(r['wall_time'], '.2f')} s + compile "
                  f"{_num(r['compile_time'], '.2f')} s)")


def run(args) -> int:
    """The handler: run the sweep (or summarize); returns the exit status."""
    import studies

    name = "summary"
    if args.action:
        if args.action[0] != "summarize" or len(args.action) != 2:
            raise UsageError(f"unknown sweep action {' '.join(args.action)!r}; use `controlnet sweep summarize OUT`")
        out = Path(args.action[1])
        if not out.is_dir():
            raise UsageError(f"{out} is not a directory; give the --out folder of a sweep")
        name = "runs_summary" if (out / STUDY_FILE).is_file() else "summary"  # keep the command's own summary
        summary = studies.summarize(out, name=name)
    else:
        if args.out is None:
            raise UsageError("--out is required: the folder the runs are written to")
        if args.out.exists() and not args.out.is_dir():
            raise UsageError(f"--out {args.out} exists and is not a directory; pick another path")
        if (args.out / STUDY_FILE).is_file():  # its summary.json is the command's, not a sweep's
            raise UsageError(f"--out {args.out} holds the study of another command ({STUDY_FILE}); rerun that "
                             "command to resume it, or choose another --out")
        if args.serial and (args.address or args.workers):
            raise UsageError("--serial runs in this process; drop --address and --workers")
        specs = specs_from_args(args)
        try:
            executor = (studies.SerialExecutor() if args.serial
                        else studies.RayExecutor(address=args.address, workers=args.workers))
        except ImportError as e:
            raise UsageError(str(e)) from None
        summary = studies.sweep(specs, args.out, executor=executor, progress=False if args.quiet else None)
    _print_summary(summary)
    out = Path(args.action[1] if args.action else args.out)
    print(f"wrote {out / (name + '.json')}, {out / (name + '.csv')}")
    return 0


def main(argv=None) -> int:
    """``controlnet sweep`` on its own (``python -m controlnet_cli.sweep ...``)."""
    parser = Parser(prog="controlnet")
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
        return args.handler(args)
    except (UsageError, ValueError, TypeError, OSError) as e:
        print(f"controlnet: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
