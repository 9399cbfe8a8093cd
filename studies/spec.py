"""A run as data: the run spec, its checks, its hash, and what it builds.

A *run spec* is a plain JSON mapping that says everything one training run needs::

    {"problem": {"name": "ring", "horizon": 2.0, "layers": 8, "samples": 40},
     "solver": {"name": "gd", "lr": 0.01, "batch_size": null},
     "seed": 0,
     "budget": {"max_iters": 300},
     "init_scale": 1.0,
     "precision": "float64"}

- ``problem``: ``name`` (one of :data:`problems.PROBLEMS`) and any options of
  :func:`problems.make`; the data seed ``problem.seed`` defaults to the run's ``seed``.
  ``"loss": "squared"`` replaces a two-class problem's logistic loss by ``½(λ(z) − y)²`` on its
  0/1 labels (a minimum attained at finite states, as the turnpike theorem assumes).
- ``solver``: ``name`` (one of :data:`solvers.SOLVERS`) and its options as
  :func:`solvers.options.from_json` takes them; a bare name ``"gd"`` stands for ``{"name": "gd"}``.
  A learning-rate schedule (:mod:`solvers.schedules`) is an optimizer's ``schedule``
  (``{"name": "adam", "lr": 0.005, "schedule": {"name": "cosine", "floor": 0.01}}``); one
  without ``steps`` decays over ``budget.max_iters``. Gradient descent also takes ``schedule``
  (a name or a mapping) and ``floor`` beside its ``lr``, for its optimizer (default Adam).
- ``seed``: the initial controls ``init_controls(PRNGKey(seed), scale=init_scale)`` and the
  solver's key (minibatches); default 0.
- ``budget``: the fields of :class:`solvers.Budget` (``max_iters``, ``max_seconds``, ``tol``,
  ``target_loss``); default ``{"max_iters": 100}``.
- ``precision``: ``"float32"`` (default) or ``"float64"``.

:func:`normalize` checks a spec and fills in its defaults without building anything (no data,
no compile), so a sweep refuses a bad spec before any run starts; the error names the key and
the choices. :func:`spec_hash` is the SHA-256 of the normalized spec's canonical JSON (keys
sorted, no spaces), cut to 16 hex digits: the run's folder name.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import json
from typing import Any, NamedTuple

import jax

import problems
import solvers
from solvers.options import from_json
from solvers.schedules import RateSchedule, fill_steps

__all__ = ["normalize", "spec_hash", "canonical", "build", "Built", "make_solver", "TOP_KEYS",
           "PRECISIONS", "precision_scope"]

#: The keys a run spec may have.
TOP_KEYS = ("problem", "solver", "seed", "budget", "init_scale", "precision")
PRECISIONS = ("float32", "float64")
_BUDGET = ("max_iters", "max_seconds", "tol", "target_loss")
_MAKE = inspect.signature(problems.tasks.make).parameters  # the function itself, even where problems.make is wrapped
#: problems.make's options that are numbers with a fractional part: 2 and 2.0 mean the same run.
_FLOATS = {n for n, p in _MAKE.items() if str(p.annotation).startswith("float")}


def _refuse(key, message):
    raise ValueError(f"run spec, key {key!r}: {message}")


def canonical(spec: dict) -> str:
    """The canonical JSON text of ``spec``: keys sorted, no spaces, no NaN."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_hash(spec: dict) -> str:
    """16 hex digits of the SHA-256 of the normalized spec's canonical JSON."""
    return hashlib.sha256(canonical(normalize(spec)).encode()).hexdigest()[:16]


def _problem(value, seed):
    if not isinstance(value, dict) or "name" not in value:
        _refuse("problem", f"expected a mapping with a 'name' (one of {sorted(problems.PROBLEMS)}), got {value!r}")
    out = dict(value)
    if out["name"] not in problems.PROBLEMS:
        _refuse("problem.name", f"unknown problem {out['name']!r}; choose one of {sorted(problems.PROBLEMS)}")
    options = sorted(n for n in _MAKE if n != "name") + ["loss"]
    if "loss" in out:
        _check_loss(out["name"], out["loss"])
    for k, v in value.items():
        if k not in ("name", "loss") and k not in _MAKE:
            _refuse(f"problem.{k}", f"problems.make has no option {k!r}; its options are {options}")
        if k in _FLOATS and isinstance(v, int) and not isinstance(v, bool):
            out[k] = float(v)
    out.setdefault("seed", seed)
    return out


def _check_loss(name, loss):
    """``problem.loss``: only ``"squared"``, on a problem with a logistic (two-class) loss."""
    import controlnet as cn

    if loss != "squared":
        _refuse("problem.loss", f"the only loss a spec replaces is 'squared', got {loss!r}; drop the key for "
                                "the problem's own loss")
    if not isinstance(problems.LOSSES[name], cn.Logistic):
        _refuse("problem.loss", f"'squared' regresses the 0/1 labels of a two-class problem; {name!r} has a "
                                f"{type(problems.LOSSES[name]).__name__} loss")


def _solver(value):
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        _refuse("solver", f"expected a name or a mapping with a 'name' (one of {sorted(solvers.SOLVERS)}), "
                          f"got {value!r}")
    if value["name"] not in solvers.SOLVERS:
        _refuse("solver.name", f"unknown solver {value['name']!r}; choose one of {sorted(solvers.SOLVERS)}")
    return dict(value)


def _budget(value):
    if not isinstance(value, dict):
        _refuse("budget", f"expected a mapping with some of {list(_BUDGET)}, got {value!r}")
    for k in value:
        if k not in _BUDGET:
            _refuse(f"budget.{k}", f"unknown budget key; choose from {list(_BUDGET)}")
    out = {"max_iters": 100, **value}
    try:
        solvers.Budget(**out)
    except (TypeError, ValueError) as e:
        _refuse("budget", str(e))
    return out


def normalize(spec: dict) -> dict:
    """``spec`` checked and with its defaults filled in (a new dict; nothing is built).

    Raises ``ValueError`` naming the key at fault and the choices: an unknown key, problem,
    ``problems.make`` option, solver, solver option or budget key; a solver option or budget
    value its class refuses; a value JSON cannot hold.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a run spec is a mapping with keys {list(TOP_KEYS)}, got {type(spec).__name__}")
    for k in spec:
        if k not in TOP_KEYS:
            _refuse(k, f"unknown key; a run spec has {list(TOP_KEYS)}")
    for k in ("problem", "solver"):
        if k not in spec:
            _refuse(k, "missing; a run spec needs 'problem' and 'solver'")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        _refuse("seed", f"expected an integer >= 0, got {seed!r}")
    scale = spec.get("init_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 <= scale < float("inf")):
        _refuse("init_scale", f"expected a number >= 0 (0: zero controls), got {scale!r}")
    precision = spec.get("precision", "float32")
    if precision not in PRECISIONS:
        _refuse("precision", f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    out = {"problem": _problem(spec["problem"], seed), "solver": _solver(spec["solver"]), "seed": seed,
           "budget": _budget(spec.get("budget", {})), "init_scale": float(scale), "precision": precision}
    try:
        canonical(out)
    except (TypeError, ValueError) as e:
        raise ValueError(f"run spec is not plain JSON ({e}); use numbers, strings, bools, None, "
                         "lists and mappings") from None
    try:
        make_solver(out["solver"], out["budget"]["max_iters"])
    except (TypeError, ValueError) as e:
        _refuse("solver", str(e))
    return out


def _gd_schedule(options: dict) -> dict:
    """Gradient descent's ``schedule`` (and ``floor``) given beside ``lr`` moved to its optimizer
    (default Adam), where :class:`solvers.optimizers.Adam` takes it."""
    options = dict(options)
    schedule = options.pop("schedule", "constant")
    floor = options.pop("floor", None)
    schedule = {"name": schedule} if isinstance(schedule, str) else schedule
    if not isinstance(schedule, dict) or schedule.get("name") not in RateSchedule.registry:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(RateSchedule.registry)} "
                         "(a name, or a mapping with a 'name')")
    if floor is not None:
        if schedule["name"] != "cosine":
            raise ValueError("floor is the end of the cosine schedule; add schedule='cosine' or drop floor")
        schedule = {**schedule, "floor": floor}
    optimizer = options.get("optimizer", "adam")
    optimizer = {"name": optimizer} if isinstance(optimizer, str) else optimizer
    if not isinstance(optimizer, dict):
        raise ValueError(f"schedule applies to a named optimizer (a name or a mapping), got {optimizer!r}")
    if "schedule" in optimizer:
        raise ValueError("schedule is given twice, beside lr and in the optimizer; give it once")
    options["optimizer"] = {**optimizer, "schedule": schedule}
    return options


@functools.lru_cache(maxsize=256)
def _cached_solver(text: str):
    return from_json(solvers.SOLVERS, json.loads(text))


def make_solver(options: dict | str, max_iters: int = 100):
    """The solver a spec's ``solver`` (a mapping, or a bare name) describes.

    A schedule without ``steps`` (``"cosine"``) decays over ``max_iters``
    (:func:`solvers.schedules.fill_steps`). The same mapping gives the same object in one
    process, so the driver's compiled steps (cached per solver) serve every run of a sweep that a
    worker runs with it."""
    options = {"name": options} if isinstance(options, str) else options
    if options.get("name") == "gd" and ("schedule" in options or "floor" in options):
        options = _gd_schedule(options)
    return _cached_solver(canonical(fill_steps(options, max(int(max_iters), 1))))


class Built(NamedTuple):
    """What a run spec builds: the task (problem and test split), solver, budget and the initial
    controls."""

    task: Any
    solver: Any
    budget: Any
    controls: Any


def build(spec: dict) -> Built:
    """Build the run ``spec`` describes (call it inside :func:`precision_scope`)."""
    spec = normalize(spec)
    options = {k: copy.deepcopy(v) for k, v in spec["problem"].items() if k not in ("name", "loss")}
    task = problems.make(spec["problem"]["name"], **options)
    if spec["problem"].get("loss") == "squared":
        task = _squared(task)
    controls = task.problem.init_controls(jax.random.PRNGKey(spec["seed"]), scale=spec["init_scale"])
    return Built(task, make_solver(spec["solver"], spec["budget"]["max_iters"]),
                 solvers.Budget(**spec["budget"]), controls)


def _squared(task):
    """``task`` with ``½(λ(z) − y)²`` on the 0/1 labels (one output) instead of its logistic loss."""
    import numpy as np

    import controlnet as cn

    problem = dataclasses.replace(task.problem, loss=cn.SquaredError(1), y=np.asarray(task.problem.y, float)[:, None])
    test = task.test
    if test is not None:
        test = (test[0], np.asarray(test[1], float)[:, None])
    return task._replace(problem=problem, test=test)


def precision_scope(spec: dict):
    """A context in which ``spec``'s precision holds (``jax.enable_x64``)."""
    return jax.enable_x64(normalize(spec)["precision"] == "float64")
