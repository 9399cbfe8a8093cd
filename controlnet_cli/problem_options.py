"""The problem and training options every subcommand shares, and the task they build.

``--problem`` and its settings go to :func:`problems.make`; ``--iters``, ``--lr``,
``--schedule`` and ``--batch-size`` left unset take the problem's :func:`problems.training_defaults`
(:func:`fill_training_defaults`), a solver's options not typed take the problem's
:func:`problems.solver_defaults` (extended MSA's on the conv nets), and only the options typed on
the command line are checked against the solver (:mod:`controlnet_cli.solver_options`).
"""

from __future__ import annotations

from .arguments import UsageError, nonneg_float, positive_float, positive_int, seed
from .guards import check_problem_options, check_size

__all__ = ["add_problem_options", "add_budget_options", "fill_training_defaults", "task_from_args",
           "TRAINING_FLAGS"]

#: The training settings a problem gives defaults for: ``args`` attribute -> flag.
TRAINING_FLAGS = {"iters": "--iters", "lr": "--lr", "schedule": "--schedule", "batch_size": "--batch-size"}


def add_problem_options(p, exclude=()):
    """``--problem`` and its settings; ``exclude`` names options a subcommand sets itself."""
    from problems import PROBLEMS

    g = p.add_argument_group("problem")
    options = [
        ("--problem", dict(default="ring", choices=PROBLEMS, help="data set and default settings (default: ring)")),
        ("--samples", dict(type=positive_int, help="training samples (default: the problem's, 500 for synthetic data); the test split has as many (digits: the rest)")),
        ("--width", dict(type=positive_int, help="state width d; data are zero-padded to it (default: the problem's)")),
        ("--layers", dict(type=positive_int, help="number of layers N (default: the problem's)")),
        ("--horizon", dict(type=positive_float, help="time horizon T, step h = T/N (default: the problem's)")),
        ("--dynamics", dict(help="vector field: inner σ(Wz+b), outer Wσ(z)+b, two_layer Bσ(Az+a), or a structured one: antisymmetric, hamiltonian, volume_preserving, mass_preserving, lipschitz")),
        ("--hidden", dict(type=positive_int, help="hidden width m of a field that has one (two_layer Bσ(Az+a), hamiltonian)")),
        ("--activation", dict(default="tanh", help="tanh, relu, softplus, sigmoid or identity (default: tanh)")),
        ("--integrator", dict(default="euler", help="euler (a ResNet), rk4, no_residual (an MLP), lie/symplectic_euler or strang/leapfrog (splitting, for the structured fields) (default: euler)")),
        ("--l2", dict(type=nonneg_float, help="weight α of (α/2)‖θ‖² in the running cost")),
        ("--l1", dict(type=nonneg_float, default=0.0, help="weight of ‖θ‖₁ in the running cost")),
        ("--smoothness", dict(type=nonneg_float, default=0.0, help="weight β of (β/2h)Σ‖θ_{k+1}−θ_k‖²")),
        ("--tracking", dict(type=nonneg_float, default=0.0, help="weight γ of the loss at every layer")),
        ("--seed", dict(type=seed, default=0, help="seed for data and initial controls (default: 0)")),
        ("--float64", dict(action="store_true", help="compute in float64 (default: float32)")),
    ]
    for flag, kwargs in options:
        if flag not in exclude:
            g.add_argument(flag, **kwargs)


def add_budget_options(p, each=""):
    """``--iters`` (the problem's default when unset)."""
    p.add_argument("--iters", type=positive_int,
                   help=f"iteration budget{each} (default: the problem's; 500 for the toys, 1500 for the conv nets)")


def fill_training_defaults(args, defaults: dict | None = None):
    """Unset training options take ``defaults`` (default: the problem's); ``--batch-size full``
    is ``None``. ``args.defaulted`` lists the ones filled in, which were not typed (idempotent)."""
    import problems

    filled = set(getattr(args, "defaulted", ()))
    defaults = problems.training_defaults(args.problem) if defaults is None else defaults
    for k, v in defaults.items():
        if hasattr(args, k) and getattr(args, k) is None:
            setattr(args, k, v)
            filled.add(k)
    if getattr(args, "batch_size", None) == "full":
        args.batch_size = None
    args.defaulted = sorted(filled)
    return args


def task_from_args(args, **overrides):
    """The :class:`problems.Task` of the problem options (``overrides`` replace some), after
    the checks that need no data: options the problem does not have, and the size guards. A
    data set whose package is missing is one line naming the ``data`` extra."""
    import problems

    options = dict(
        samples=args.samples, seed=args.seed, width=args.width, layers=getattr(args, "layers", None),
        horizon=args.horizon, dynamics=args.dynamics, hidden=args.hidden, activation=args.activation,
        integrator=args.integrator, l2=args.l2, l1=args.l1, smoothness=args.smoothness,
        tracking=getattr(args, "tracking", 0.0),
    )
    options.update(overrides)
    check_problem_options(args.problem, options)
    check_size(args.problem, options, float64=args.float64)
    try:
        return problems.make(args.problem, **options)
    except ImportError as e:
        raise UsageError(f"--problem {args.problem} needs a package that is not installed ({e}); "
                         "install the data extra: pip install 'controlnet-oc[data]'") from None
