"""Solver options on the command line, read off the solvers' own dataclass fields.

Every init field of every class in :data:`solvers.SOLVERS` that a command line can spell becomes
an option ``--field-name`` (fields of the same name in several solvers share one option):

- ``bool`` -> ``--field`` / ``--no-field``;
- ``int``, ``float``, ``str`` (``None`` allowed where the annotation allows it, typed ``none``),
  also as members of a union with things that have no spelling (``float | Callable`` takes a
  number); an ``Any`` field takes the type of its default (``rho: Any = 5.0`` is a number);
- a field holding a strategy object (its annotation or default a :class:`solvers.options.Family`)
  -> ``--field {names in the family's registry}``;
- anything else (an optax transformation, a callable, a mapping) has no spelling and is left
  out: it stays at the solver's default.

So a solver added to :data:`solvers.SOLVERS` gets its options with no change here. A few flags
belong to some solvers only (:data:`SHARED`): the same field name elsewhere is spelled
``--<solver>-<field>`` (discrete MSA's accumulator weight ``lr`` is ``--discrete-lr``, since
``--lr`` is a learning rate), as is a field whose flag the command itself uses. Gradient
descent's ``--schedule`` is its optimizer's (:func:`_optimizer`). The MSA solvers' optimizers
carry their own learning rates and have no one-word spelling (:data:`UNSPELLED`): a problem's
:func:`problems.solver_defaults` set them. An option given for a solver without that field is
refused with one line (:func:`check_applicable`); the solver itself is built through
:func:`solvers.options.from_json`, so its own checks run before any compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any, Callable, NamedTuple

from .arguments import UsageError, batch_size, finite_float, positive_float

__all__ = ["SHARED", "PARSE", "SolverOption", "solver_options", "add_solver_options", "check_applicable", "solver_mapping",
           "build_solver", "given_solver_options", "solver_name", "add_solver_choice", "solver_from_args",
           "problem_solver_defaults", "UNSPELLED"]

#: Flags that only these solvers' fields take: flag -> {solver name: field}. ``--lr`` is a
#: learning rate (gd's, pgd_at's and yopo's; pgd's first step), ``--schedule`` gd's optimizer's (:func:`_optimizer`).
SHARED = {
    "--lr": {"gd": "lr", "pgd": "lr", "pgd_at": "lr", "yopo": "lr"},
    "--schedule": {"gd": "schedule"},
}

#: Value types narrower than the field's annotation says.
PARSE = {"--lr": positive_float, "--batch-size": batch_size}

#: Help of the options that predate the mechanism (the others take their docstring's line).
HELP = {
    "--lr": "learning rate of gd's optimizer (Adam), or pgd's first step (default: the problem's; "
            "0.01 for the toys)",
    "--schedule": "gd's learning rate: constant, or cosine-decayed to 0 over --iters (default: the problem's)",
    "--batch-size": "minibatch size, or 'full' (default: the problem's; the full batch for the toys, "
                    "128 for the conv nets)",
    "--rho": "E-MSA penalty ρ, the initial value (default: 5, then adapted); discrete MSA's error control",
    "--inner-steps": "Hamiltonian-maximization steps per iteration (default: 1 Newton or 3 optax steps "
                     "for emsa, 10 for msa)",
    "--inner-lr": "inner step: E-MSA's dimensionless step (default 0.5), basic MSA's Adam rate (default 0.05)",
    "--inner": "the Hamiltonian maximization: a few optimizer steps for all layers at once (optax), a "
               "Newton step per layer (newton), or every layer exactly with CasADi + IPOPT (ipopt; small "
               "problems); auto takes newton where its Hessian has a closed form, else optax",
}

#: Choices of options whose field is still a plain string (a strategy family gives its own).
CHOICES = {"--schedule": ("constant", "cosine"), "--inner": ("auto", "optax", "newton", "ipopt")}

#: Fields the command line leaves out: an optimizer that must carry its own learning rate is
#: more than a name (the problem's solver defaults, :func:`problems.solver_defaults`, set them).
UNSPELLED = frozenset({"inner_optimizer", "readout_optimizer"})


class SolverOption(NamedTuple):
    """One command-line option: its ``flag``, the ``fields`` it sets (solver name -> field),
    how its text is read (``parse``; ``None`` for a bool), its ``choices`` and ``help``."""

    flag: str
    fields: dict
    parse: Callable | None
    choices: tuple | None
    help: str

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _type_hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: read each field's own
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _family(t, default):
    from solvers.options import Family

    for c in (t, *typing.get_args(t), type(default)):
        if isinstance(c, type) and issubclass(c, Family):
            return c.family()
    return None


def _scalar_types(t, default) -> tuple[list, bool]:
    """``(types, none_allowed)`` of a field's annotation: its plain scalar members, in order (a
    ``float | Callable`` field takes a number here; the callable has no spelling)."""
    if t is Any or t is None:
        t = type(default) if isinstance(default, (bool, int, float, str)) else object
    args = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    return [a for a in args if a in (bool, int, float, str)], type(None) in args


def _reader(kinds, none_allowed):
    """Text -> the first of ``kinds`` that reads it (``none`` -> ``None`` where allowed)."""
    names = {int: "an integer", float: "a finite number", str: "a word"}
    what = " or ".join([names[k] for k in kinds] + (["none"] if none_allowed else []))

    def parse(s):
        if none_allowed and s.strip().lower() == "none":
            return None
        for k in kinds:
            if k is int and re.fullmatch(r"\s*[+-]?\d+\s*", s):
                return int(s)
            if k is float:
                try:
                    return finite_float(s)  # finite in the computation dtype
                except argparse.ArgumentTypeError:
                    continue
            if k is str:
                return s.strip()
        raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")

    return parse


def _field_help(cls) -> dict:
    """``field -> first sentence`` from the ``Args:`` section of ``cls``'s docstring, without
    its reST markup."""
    out, doc = {}, (cls.__doc__ or "")
    for m in re.finditer(r"^\s+(\w+): (.+?)(?:\.\s|\n\s*\n|\n\s+\w+: |\Z)", doc.split("Args:", 1)[-1], re.M | re.S):
        text = re.sub(r":\w+:`~?([^`]+)`", r"\1", " ".join(m.group(2).split())).replace("``", "")
        out.setdefault(m.group(1), text)
    return out


def _spelling(field, hints):
    """``(parse, choices)`` of one field (``parse`` is ``None`` for a bool), or ``None`` if the
    command line cannot spell its values."""
    default = field.default if field.default is not dataclasses.MISSING else None
    family = _family(hints.get(field.name), default)
    if family is not None:
        return str, tuple(sorted(family.registry))
    kinds, none_allowed = _scalar_types(hints.get(field.name, Any), default)
    if kinds == [bool]:
        return None, None
    if not kinds or bool in kinds:
        return None
    return _reader(kinds, none_allowed), None


def solver_options(registry: dict, reserved=frozenset()) -> list[SolverOption]:
    """The options of every solver in ``registry`` (module doc), one per flag, in field order.

    ``reserved``: the command's own flags; a field whose plain flag is one of them is spelled
    ``--<solver>-<field>``.
    """
    options: dict[str, SolverOption] = {}
    for name, cls in registry.items():
        hints, docs = _type_hints(cls), _field_help(cls)
        for field in dataclasses.fields(cls):
            if not field.init or field.name.startswith("_") or field.name in UNSPELLED:
                continue
            spelled = _spelling(field, hints)
            if spelled is None:
                continue
            flag = "--" + field.name.replace("_", "-")
            if flag in reserved or flag in SHARED and name not in SHARED[flag]:
                flag = f"--{name}-{field.name.replace('_', '-')}"
            parse, choices = spelled
            parse = PARSE.get(flag, parse)
            choices = choices or CHOICES.get(flag)
            old = options.get(flag)
            if old is not None:
                merged = tuple(sorted(set(old.choices or ()) | set(choices or ()))) or None
                options[flag] = old._replace(fields={**old.fields, name: field.name}, choices=merged)
                continue
            text = HELP.get(flag) or docs.get(field.name, field.name.replace("_", " "))
            options[flag] = SolverOption(flag, {name: field.name}, parse, choices, text)
    _optimizer_options(registry, options)
    return list(options.values())


def _init_fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _optimizer_options(registry, options):
    """The :data:`SHARED` options of a solver with an ``optimizer`` field but not the field
    they name (gradient descent's ``--schedule``; its ``--lr`` if it has no ``lr``): they build
    its optimizer (:func:`_optimizer`)."""
    for flag, row in SHARED.items():
        for name, field in row.items():
            cls = registry.get(name)
            old = options.get(flag)
            if cls is None or (old is not None and name in old.fields) or "optimizer" not in _init_fields(cls):
                continue
            fields = {**(old.fields if old else {}), name: field}
            options[flag] = SolverOption(flag, fields, PARSE.get(flag, str), CHOICES.get(flag), HELP[flag])


def add_solver_options(parser) -> list[SolverOption]:
    """Add the options of :data:`solvers.SOLVERS` to ``parser`` as one group, every default
    ``None`` (not given); returns them."""
    import solvers

    # argparse lists no options publicly; its table of option strings is the one place.
    options = solver_options(solvers.SOLVERS, reserved=set(parser._option_string_actions))
    g = parser.add_argument_group("solver options (each applies to the solvers named in brackets)")
    for o in options:
        text = f"{o.help} [{', '.join(o.fields)}]".replace("%", "%%")
        if o.parse is None:
            g.add_argument(o.flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            g.add_argument(o.flag, type=o.parse, choices=o.choices, default=None, help=text)
    return options


def given_solver_options(args, options: list[SolverOption]) -> dict:
    """``flag -> value`` of the solver options given on this command line."""
    return {o.flag: getattr(args, o.dest) for o in options if getattr(args, o.dest, None) is not None}


def check_applicable(given: dict, options: list[SolverOption], names: list[str], what: str):
    """Refuse an option given for solvers none of which has it: one line naming the option, the
    solvers it belongs to and what to drop. ``what`` names the solver option (``--solver``)."""
    by_flag = {o.flag: o for o in options}
    for flag in given:
        owners = by_flag[flag].fields
        if not set(owners) & set(names):
            own = [f"{n}'s own is --{n}-{flag[2:]}" for n in names if f"--{n}-{flag[2:]}" in by_flag]
            hint = f" ({'; '.join(own)})" if own else ""
            raise UsageError(f"{flag} does not apply to {what} {','.join(names)}: it is an option of "
                             f"{', '.join(owners)}; drop {flag} or choose one of those solvers{hint}")


def solver_mapping(name: str, given: dict, defaults: dict, options: list[SolverOption],
                   solver_defaults: dict | None = None) -> dict:
    """``{"name": name, field: value, ...}``: the ``given`` options (``flag -> value``) solver
    ``name`` has, and the problem's training ``defaults`` for the ones not given, by field name
    (``--batch-size full`` is ``None``: the whole batch), over the problem's ``solver_defaults``
    for this solver (:func:`problems.solver_defaults`: field -> value)."""
    spec = {"name": name, **(solver_defaults or {})}
    for o in options:
        value = given.get(o.flag, defaults.get(o.flag))
        value = None if o.flag == "--batch-size" and value == "full" else value
        if name in o.fields and (o.flag in given or o.flag in defaults):
            spec[o.fields[name]] = value
    return spec


def build_solver(name: str, given: dict, defaults: dict, options: list[SolverOption], *, iters: int,
                 floor: float = 0.0, solver_defaults: dict | None = None):
    """The solver ``name`` with the ``given`` options (``flag -> value``) it has, the problem's
    training ``defaults`` (``flag -> value``) for the ones not given, over the problem's
    ``solver_defaults`` (field -> value, :func:`problems.solver_defaults`).

    Built through :func:`solvers.options.from_json`: strategy names become their objects and the
    solver checks its values now, before any compile. A schedule without ``steps`` (gradient
    descent's ``--schedule cosine``, ending at ``floor·lr``) decays over ``iters``
    (:func:`solvers.schedules.fill_steps`).
    """
    import solvers
    from solvers.options import from_json
    from solvers.schedules import fill_steps

    spec = solver_mapping(name, given, defaults, options, solver_defaults)
    spec = _optimizer(solvers.SOLVERS[name], spec, floor)
    return from_json(solvers.SOLVERS, fill_steps(spec, iters))


def _optimizer(cls, spec: dict, floor: float) -> dict:
    """``spec`` with gradient descent's ``schedule`` (``--schedule``) moved to its optimizer
    (default Adam), a cosine ending at ``floor·lr``; where the solver has an optimizer but no
    ``lr`` field, ``lr`` moves there too."""
    fields = _init_fields(cls)
    if "optimizer" not in fields or "schedule" in fields:
        return spec
    spec = dict(spec)
    schedule, lr = spec.pop("schedule", None), spec.get("lr")
    if lr is None:
        return spec
    optimizer = {"name": spec.get("optimizer") or "adam"}
    if schedule == "cosine":
        optimizer["schedule"] = {"name": "cosine", "floor": floor}
    if "lr" not in fields:
        optimizer["lr"] = spec.pop("lr")
    if len(optimizer) > 1 or "optimizer" in spec:
        spec["optimizer"] = optimizer
    return spec


def solver_name(s: str) -> str:
    """An argparse type: a name in :data:`solvers.SOLVERS`."""
    import solvers

    if s not in solvers.SOLVERS:
        raise argparse.ArgumentTypeError(f"unknown solver {s!r}; choose one of {sorted(solvers.SOLVERS)}")
    return s


def add_solver_choice(p):
    """``--solver``, its help listing the solvers of :data:`solvers.SOLVERS`."""
    import solvers

    p.add_argument("--solver", default="gd", type=solver_name,
                   help=f"the solver: {', '.join(solvers.SOLVERS)} (default: gd)")


def problem_solver_defaults(args, name: str) -> dict:
    """The options of solver ``name`` for ``args.problem`` (:func:`problems.solver_defaults`:
    extended MSA's on the conv nets), field -> value; the typed options replace them one by one."""
    import problems

    return problems.solver_defaults(args.problem, name) if getattr(args, "problem", None) else {}


def solver_from_args(args, name: str | None = None, *, among: list | None = None, floor: float = 0.0):
    """The solver ``name`` (default ``args.solver``) with the solver options typed on the command
    line, the problem's training defaults (:func:`problem_options.fill_training_defaults`) and
    its options for this solver (:func:`problem_solver_defaults`) for the rest; refused in one
    line if a typed option applies to none of ``among`` (the solvers of the command:
    ``args.solvers`` of ``compare``, else ``[name]``): a solver takes those of them it has."""
    from .problem_options import TRAINING_FLAGS, fill_training_defaults

    name = name or args.solver
    options = args.solver_options
    defaulted = set(getattr(args, "defaulted", ()))
    given = {f: v for f, v in given_solver_options(args, options).items() if f[2:].replace("-", "_") not in defaulted}
    among = among or getattr(args, "solvers", None) or [name]  # compare: the options' solvers
    check_applicable(given, options, among, "--solver" if among == [name] else "--solvers")
    fill_training_defaults(args)
    defaults = {TRAINING_FLAGS[k]: getattr(args, k) for k in args.defaulted if k in TRAINING_FLAGS}
    return build_solver(name, given, defaults, options, iters=args.iters, floor=floor,
                        solver_defaults=problem_solver_defaults(args, name))
