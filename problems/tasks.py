"""Ready-made control problems on the data sets, with defaults that train well.

A :class:`Task` is a training problem (a :class:`controlnet.ControlProblem` on the training
data) plus a held-out test split: for synthetic data drawn from the same distribution with
another seed, for a fixed data set (digits) the samples left out of a seeded shuffle.

Each problem has a loss (logistic for two classes, cross-entropy for the digits, squared error
for the regressions ``x ↦ x²`` and ``sin x``), an input dimension fixed by its data, and default
settings in :data:`DEFAULTS`; every setting can be overridden in :func:`make`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from typing import Any, NamedTuple

import numpy as np

import controlnet as cn

from . import datasets

__all__ = ["Task", "make", "PROBLEMS", "DEFAULTS", "TRAINING", "training_defaults", "SOLVER_TRAINING",
           "solver_defaults", "LOSSES", "LIFTS"]


class Task(NamedTuple):
    """A named problem with its test split ``(x_test, y_test)`` (or ``None``)."""

    name: str
    problem: cn.ControlProblem
    test: Any = None


#: Per problem: samples, state width, layers, horizon, vector field and its settings.
DEFAULTS = {
    "ring": dict(width=3, layers=20, horizon=5.0, dynamics="inner", hidden=16, l2=1e-3),
    "spiral": dict(width=2, layers=40, horizon=10.0, dynamics="two_layer", hidden=16, l2=1e-4),
    "xor": dict(width=2, layers=20, horizon=5.0, dynamics="two_layer", hidden=8, l2=1e-3),
    # Label noise 10%, test split as noisy: a gap above 90% train accuracy is overfitting.
    "noisy_ring": dict(width=3, layers=20, horizon=5.0, dynamics="inner", hidden=16, l2=1e-3),
    "two_moons": dict(width=2, layers=20, horizon=5.0, dynamics="two_layer", hidden=16, l2=1e-3),
    # x ↦ x² needs the lift to 2-D; width=1 shows the non-augmented limit.
    "square": dict(samples=200, width=2, layers=20, horizon=2.0, dynamics="two_layer", hidden=16,
                   l2=1e-4),
    # Li, Chen, Tai & E (2018): 20 residual tanh layers of width 5.
    "sine": dict(samples=200, width=5, layers=20, horizon=2.0, dynamics="inner", hidden=16,
                 l2=1e-5),
    # 1797 images: 1347 for training, the other 450 for testing.
    "digits": dict(samples=1347, width=64, layers=10, horizon=1.0, dynamics="inner", hidden=16,
                   l2=1e-4),
    # Convolutional ResNets: the width is the number of channels, the lift a learned convolution.
    # MNIST-1D: its standard 4,000/1,000 split; signals (1, 40). The flattened read-out keeps
    # where along the signal a feature is (the global average loses it).
    "mnist1d": dict(samples=4000, width=32, layers=8, horizon=2.0, dynamics="conv", kernel=5,
                    lift="conv", lift_kernel=5, pooling="flatten", hidden=16, l2=1e-4),
    # The 8x8 digits as 1x8x8 images, split as "digits"; flattened like MNIST-1D (where a stroke
    # is tells the digits apart, which a global average would lose).
    "digits_image": dict(samples=1347, width=16, layers=6, horizon=1.5, dynamics="conv", kernel=3,
                         lift="conv", lift_kernel=3, pooling="flatten", hidden=16, l2=1e-4),
    # Two-stage conv nets (controlnet.StagedProblem): ``stage_layers`` layers per block, the
    # first block ``width`` channels at the data's resolution, the second twice the channels at
    # half the resolution, joined by 2x average pooling and a 1x1 convolution.
    # MNIST-1D: 32 channels at length 40, then 64 at length 20.
    "mnist1d_2stage": dict(dataset="mnist1d", samples=4000, width=32, stage_layers=(4, 2), horizon=1.0,
                           dynamics="conv", kernel=5, lift="conv", lift_kernel=5, pooling="flatten",
                           hidden=16, l2=1e-4),
    # The 8x8 digits: 16 channels at 8x8, then 32 at 4x4.
    "digits_image_2stage": dict(dataset="digits_image", samples=1347, width=16, stage_layers=(3, 3),
                                horizon=0.75, dynamics="conv", kernel=3, lift="conv", lift_kernel=3,
                                pooling="flatten", hidden=16, l2=1e-4),
}
PROBLEMS = tuple(DEFAULTS)

#: How to train each problem by default (``controlnet train`` takes these): iterations, Adam's
#: learning rate, its schedule (``constant`` or ``cosine``: decayed to 0 over the iterations) and
#: the minibatch size (``None``: the full batch). The conv nets train on minibatches of 128:
#: 1,500 steps are 48 epochs of MNIST-1D.
TRAINING = {
    "mnist1d": dict(iters=1500, lr=5e-3, schedule="cosine", batch_size=128),
    "digits_image": dict(iters=1500, lr=5e-3, schedule="cosine", batch_size=128),
    "mnist1d_2stage": dict(iters=1500, lr=5e-3, schedule="cosine", batch_size=128),
    "digits_image_2stage": dict(iters=1500, lr=5e-3, schedule="cosine", batch_size=128),
}
_TRAINING = dict(iters=500, lr=1e-2, schedule="constant", batch_size=None)


def training_defaults(name: str) -> dict:
    """The training settings of problem ``name``: :data:`TRAINING`'s, else the toys' (500 full-batch
    Adam steps at a constant rate 1e-2)."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(DEFAULTS)}")
    return {**_TRAINING, **TRAINING.get(name, {})}

#: Extended MSA on the conv nets: one inner Adam step per iteration at gradient descent's rate and
#: cosine schedule (its state carried, so the step is an Adam step on ``J`` that the augmented
#: Hamiltonian and the ``J`` test may shorten or reject), ``ρ`` adapted from 0.1 down to 1e-3 (the
#: solver's own 5 down to 1, set for the dense toys, holds a conv layer's step far below Adam's),
#: the read-out and lift by the same Adam. A solver mapping (``solvers.options.from_json``); a
#: ``"cosine"`` schedule decays over the run's iterations.
_CONV_EMSA = {"rho": 0.1, "rho_min": 1e-3, "inner_steps": 1,
              "inner_optimizer": {"name": "adam", "lr": 5e-3, "schedule": "cosine"},
              "readout_optimizer": {"name": "adam", "lr": 5e-3, "schedule": "cosine"}}
#: Per problem and solver: options that replace the solver's own defaults (``controlnet train``
#: takes them where the command line gives none of its own; its minibatch size is
#: :data:`TRAINING`'s).
SOLVER_TRAINING = {
    "mnist1d": {"emsa": _CONV_EMSA},
    "digits_image": {"emsa": _CONV_EMSA},
}


def solver_defaults(name: str, solver: str) -> dict:
    """Options of ``solver`` (a name in ``solvers.SOLVERS``) for problem ``name``: a copy of
    :data:`SOLVER_TRAINING`'s, else ``{}`` (the solver's own defaults)."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(DEFAULTS)}")
    return copy.deepcopy(SOLVER_TRAINING.get(name, {}).get(solver, {}))

#: The per-sample loss of each problem.
LOSSES = {
    "ring": cn.Logistic(),
    "spiral": cn.Logistic(),
    "xor": cn.Logistic(),
    "noisy_ring": cn.Logistic(),
    "two_moons": cn.Logistic(),
    "square": cn.SquaredError(1),
    "sine": cn.SquaredError(1),
    "digits": cn.SoftmaxCrossEntropy(10),
    "mnist1d": cn.SoftmaxCrossEntropy(10),
    "digits_image": cn.SoftmaxCrossEntropy(10),
    "mnist1d_2stage": cn.SoftmaxCrossEntropy(10),
    "digits_image_2stage": cn.SoftmaxCrossEntropy(10),
}

#: Lifts by name: ``zero`` pads the channels with zeros, ``conv`` learns a convolution.
LIFTS = ("zero", "conv")


def _field_class(name, field_options=None):
    """``(cls, its constructor's options)`` for the vector field ``name``, after checking that
    it takes every key of ``field_options``."""
    if name not in cn.DYNAMICS:
        raise ValueError(f"unknown dynamics {name!r}; choose one of {sorted(cn.DYNAMICS)}")
    cls = cn.DYNAMICS[name]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(field_options or {}) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; its options are "
                         f"{', '.join(sorted(fields)) or 'none'}")
    return cls, fields


def _is_conv(dynamics: str) -> bool:
    return "kernel" in _field_class(dynamics)[1]  # a convolutional field has a kernel size


def _check_fits(name, dynamics, lift, field_options):
    """Refuse a vector field (or a learned lift) that does not act on the samples of ``name``:
    a convolutional one on vectors, a dense one on signals or images."""
    _field_class(dynamics, field_options)
    spatial = _is_conv(DEFAULTS[name]["dynamics"])
    if _is_conv(dynamics) != spatial:
        fits = sorted(k for k in cn.DYNAMICS if _is_conv(k) == spatial)
        raise ValueError(f"problems.make: dynamics {dynamics!r} is {'dense' if spatial else 'convolutional'} "
                         f"but the samples of {name} are {'signals or images' if spatial else 'vectors'}; "
                         f"choose one of {fits}")
    if lift == "conv" and not spatial:
        raise ValueError(f"problems.make: lift='conv' learns a convolution over signals or images; the "
                         f"samples of {name} are vectors: pass lift='zero' (or leave it out)")


def _dynamics(name, hidden, activation, kernel, ndim, field_options=None):
    cls, fields = _field_class(name, field_options)
    opts = {"activation": activation} if "activation" in fields else {}
    if "width" in fields:  # a hidden width (TwoLayer, Hamiltonian)
        opts["width"] = hidden
    if "kernel" in fields:  # a convolutional field, on the data's spatial axes
        opts.update(kernel=kernel, ndim=ndim)
    return cls(**{**opts, **(field_options or {})})


def _lift(name, kernel):
    if name not in LIFTS:
        raise ValueError(f"unknown lift {name!r}; choose one of {list(LIFTS)}")
    return None if name == "zero" else cn.ConvLift(kernel)


#: make's options that count something, with their least value.
_COUNTS = {"samples": 1, "test_samples": 0, "seed": 0, "width": 1, "layers": 1, "hidden": 1, "kernel": 1,
           "lift_kernel": 1}
#: make's options that are numbers: the horizon (> 0) and the weights (>= 0).
_NUMBERS = ("horizon", "l2", "l1", "smoothness", "tracking", "readout_l2", "lift_l2")
#: make's options that are names.
_NAMES = ("dynamics", "activation", "integrator", "lift", "pooling")


def _check_options(options: dict) -> None:
    """Refuse, naming the option, a count that is not an integer at least its least value, a
    number that is not a finite real (the horizon > 0, a weight >= 0), a name that is not a
    string, and ``field_options`` that is not a dict; ``None`` means the problem's default."""
    for key, value in options.items():
        if value is None:
            continue
        if key in _COUNTS and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                               or value < _COUNTS[key]):
            raise ValueError(f"problems.make: {key} must be an integer >= {_COUNTS[key]}, got {value!r}")
        if key in _NUMBERS:
            least = "> 0" if key == "horizon" else ">= 0"
            if not _is_real(value) or not np.isfinite(value) or value < 0 or (key == "horizon" and value == 0):
                raise ValueError(f"problems.make: {key} must be a finite number {least}, got {value!r}")
        if key in _NAMES and not isinstance(value, str):
            raise ValueError(f"problems.make: {key} must be a name (a string), got {value!r}")
    if not isinstance(options.get("field_options") or {}, dict):
        raise ValueError(f"problems.make: field_options must be a dict of the vector field's options, "
                         f"got {options['field_options']!r}")


def _is_real(value) -> bool:
    """A real number: a Python, numpy or JAX scalar of an integer or floating type, not a bool."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        return False
    kind = np.asarray(value).dtype
    return np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)


def _refuse_unknown(unknown: dict) -> None:
    accepted = [k for k in inspect.signature(make).parameters if k not in ("name", "unknown")]
    bad = sorted(unknown)
    close = list(dict.fromkeys(m for k in bad for m in difflib.get_close_matches(k, accepted, n=1, cutoff=0.75)))
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise TypeError(f"problems.make() has no option {', '.join(map(repr, bad))}{hint}; its options are "
                    f"{', '.join(accepted)}")


def _split(name, samples, test_samples, seed):
    """``(x, y), test``: generated with ``seed`` and ``seed + 10000``, or a shuffle of fixed data."""
    if name in datasets.SPLIT_DATASETS:
        (x, y), (xt, yt) = datasets.SPLIT_DATASETS[name]()
        if not 1 <= samples <= len(x):
            raise ValueError(f"{name} has {len(x)} training samples; ask for between 1 and {len(x)}")
        n_test = len(xt) if test_samples is None else test_samples
        if n_test > len(xt):
            raise ValueError(f"{name} has {len(xt)} test samples, not {n_test}; lower test_samples")
        return (x[:samples], y[:samples]), ((xt[:n_test], yt[:n_test]) if n_test else None)
    if name in datasets.FIXED_DATASETS:
        x, y = datasets.FIXED_DATASETS[name]()
        n = len(x)
        if not 1 <= samples < n:
            raise ValueError(f"{name} has {n} samples; ask for between 1 and {n - 1} training samples")
        n_test = n - samples if test_samples is None else test_samples
        if n_test > n - samples:
            raise ValueError(
                f"{name} has {n} samples: {samples} for training leave {n - samples} for testing, "
                f"not {n_test}; lower samples or test_samples"
            )
        perm = np.random.default_rng(seed).permutation(n)
        train, held = perm[:samples], perm[samples : samples + n_test]
        return (x[train], y[train]), ((x[held], y[held]) if n_test else None)
    generate = datasets.DATASETS[name]
    n_test = samples if test_samples is None else test_samples
    if samples < 2:
        raise ValueError(f"problems.make: samples: the number of samples must be an integer >= 2 for "
                         f"{name}, got {samples}")
    if n_test == 1:
        raise ValueError(f"problems.make: test_samples: the number of samples must be an integer >= 2 "
                         f"for {name}, or 0 for no test split, got 1")
    test = generate(n_test, seed=seed + 10_000) if n_test else None
    return generate(samples, seed=seed), test


def make(
    name: str = "ring",
    *,
    samples: int | None = None,
    test_samples: int | None = None,
    seed: int = 0,
    width: int | None = None,
    layers: int | None = None,
    horizon: float | None = None,
    dynamics: str | None = None,
    hidden: int | None = None,
    activation: str = "tanh",
    integrator: str = "euler",
    l2: float | None = None,
    l1: float = 0.0,
    smoothness: float = 0.0,
    tracking: float = 0.0,
    readout_l2: float = 1e-3,
    kernel: int | None = None,
    lift: str | None = None,
    lift_kernel: int | None = None,
    lift_l2: float = 1e-3,
    pooling: str | None = None,
    field_options: dict | None = None,
    **unknown,
) -> Task:
    """The problem ``name`` (one of :data:`PROBLEMS`); ``None`` options take :data:`DEFAULTS`.

    ``samples`` defaults to 500 (digits: 1347 of 1797; MNIST-1D: all 4,000 of its training
    split); ``test_samples`` to as many as ``samples`` for synthetic data, to the rest for
    digits and to MNIST-1D's 1,000 test signals (``0``: no test split).
    ``integrator="no_residual"`` turns the ResNet into an MLP ``z_{k+1} = f(z_k, θ_k)``.
    ``kernel`` is the kernel size of a convolutional field, ``lift`` one of :data:`LIFTS`
    (``lift_kernel`` the kernel of a learned one, ``lift_l2`` its weight), ``pooling`` the
    read-out of spatial states (``"mean"`` or ``"flatten"``). ``field_options`` are passed to the
    vector field's constructor, e.g. ``dynamics="lipschitz", field_options={"contractive_step":
    0.5, "expansive_step": 0.1547}``; they override ``activation`` and ``hidden``.

    Bad options are refused before any data are made: an unknown keyword (``TypeError`` listing
    the options), a size that is not a positive integer, a negative or non-finite weight.
    """
    if unknown:
        _refuse_unknown(unknown)
    _check_options({k: v for k, v in locals().items() if k not in ("name", "unknown")})
    if not isinstance(name, str) or name not in DEFAULTS:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(DEFAULTS)}")
    if integrator not in cn.INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(cn.INTEGRATORS)}")
    d = {"samples": 500, "kernel": 3, "lift": "zero", "lift_kernel": 1, "pooling": "mean", **DEFAULTS[name]}
    opt = lambda v, k: d[k] if v is None else v  # noqa: E731
    _check_fits(name, opt(dynamics, "dynamics"), opt(lift, "lift"), field_options)  # before the data are made
    (x, y), test = _split(d.get("dataset", name), opt(samples, "samples"), test_samples, seed)
    ndim = np.ndim(x) - 2
    if "stage_layers" in d:  # a multi-stage problem
        field = _dynamics(opt(dynamics, "dynamics"), opt(hidden, "hidden"), activation, opt(kernel, "kernel"), ndim,
                          field_options)
        costs = dict(l2=opt(l2, "l2"), l1=l1, smoothness=smoothness, tracking=tracking, readout_l2=readout_l2,
                     lift_l2=lift_l2)
        problem = _staged(d, field, cn.INTEGRATORS[integrator](), opt(width, "width"), layers, opt(horizon, "horizon"),
                          LOSSES[name], x, y, _lift(opt(lift, "lift"), opt(lift_kernel, "lift_kernel")), opt(pooling, "pooling"), costs)
        return Task(name, problem, test)
    problem = cn.ControlProblem(
        dynamics=_dynamics(opt(dynamics, "dynamics"), opt(hidden, "hidden"), activation, opt(kernel, "kernel"), ndim,
                           field_options),
        integrator=cn.INTEGRATORS[integrator](),
        N=opt(layers, "layers"),
        width=opt(width, "width"),
        loss=LOSSES[name],
        x=x,
        y=y,
        T=opt(horizon, "horizon"),
        l2=opt(l2, "l2"),
        l1=l1,
        smoothness=smoothness,
        tracking=tracking,
        readout_l2=readout_l2,
        lift=_lift(opt(lift, "lift"), opt(lift_kernel, "lift_kernel")),
        lift_l2=lift_l2,
        pooling=opt(pooling, "pooling"),
    )
    return Task(name, problem, test)


def _staged(d, field, integrator, width, layers, horizon, loss, x, y, lift, pooling, costs):
    """A :class:`controlnet.StagedProblem` for a ``stage_layers`` entry of :data:`DEFAULTS`: block
    ``s`` has ``width·2^s`` channels, ``layers`` layers (default: the entry's per-block counts) and
    horizon ``horizon``; between two blocks a 1x1 convolution after 2x average pooling."""
    if costs.pop("tracking"):
        raise ValueError("problems.make: a multi-stage problem has no tracking cost; pass tracking=0")
    counts = d["stage_layers"] if layers is None else (layers,) * len(d["stage_layers"])
    weights = {k: costs.pop(k) for k in ("l2", "l1", "smoothness")}
    blocks = tuple(cn.Block(field, N=n, width=width * 2**s, T=horizon, integrator=integrator, **weights)
                   for s, n in enumerate(counts))
    connectives = (cn.Connective(kernel=1, downsample="pool"),) * (len(blocks) - 1)
    return cn.StagedProblem(blocks, connectives, loss, x, y, lift=lift, pooling=pooling, **costs)
