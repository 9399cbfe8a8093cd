"""The options of :func:`solvers.solve` that belong together, as frozen configuration objects.

``Budget`` says when a solve stops, ``Checkpoints`` where its state is saved and where it
resumes from. Each checks its values when built, so a bad option fails before any compile::

    solvers.solve(solver, problem, controls,
                  budget=Budget(max_iters=2000, max_seconds=60, target_loss=0.05),
                  checkpoints=Checkpoints("run.ckpt", every=100))

The same options may be passed one by one (``solve(..., max_iters=2000, checkpoint="run.ckpt")``);
``solve`` then builds these objects from them. A solver that runs itself (the direct solver's
``run``) receives the ``Budget``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

__all__ = ["Budget", "Checkpoints", "MAX_STEPS_PER_CALL", "grouped"]

#: A compiled call runs at most this many iterations (``solve(steps_per_call=...)``).
MAX_STEPS_PER_CALL = 128


def is_count(v, low=0) -> bool:
    """Whether ``v`` is an integer (not a bool) of at least ``low``."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low


def _number(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class Budget:
    """When a solve stops, with the status it then has.

    Args:
        max_iters: at most this many iterations (``"max_iters"``); on resume counted from the
            start of the original run.
        max_seconds: wall time, checked between compiled calls (``"max_seconds"``).
        tol: stop once ``info["grad_norm"] <= tol`` (``"converged"``); the direct solver passes
            it to IPOPT as its tolerance on the scaled KKT error.
        target_loss: stop once the loss is ``<= target_loss`` (``"target"``).
        divergence_factor: stop with ``"diverged"`` once the loss has been above
            ``divergence_factor`` times its best (and above its first value) for
            ``divergence_patience`` consecutive iterations, keeping the best iterate
            (:mod:`solvers.divergence`); ``None`` turns this off. A non-finite number stops a
            solve whatever these say.
        divergence_patience: the number of consecutive iterations of that test.

    ``max_seconds=math.inf`` is no limit, as ``None`` is.
    """

    max_iters: int = 100
    max_seconds: float | None = None
    tol: float | None = None
    target_loss: float | None = None
    divergence_factor: float | None = 10.0
    divergence_patience: int = 20

    def __post_init__(self):
        if not is_count(self.max_iters):
            raise ValueError(f"max_iters must be an integer >= 0, got {self.max_iters!r}")
        if self.max_seconds is not None and not (_number(self.max_seconds) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be positive (or None: no limit), got {self.max_seconds!r}")
        if self.max_seconds is not None and math.isinf(self.max_seconds):
            object.__setattr__(self, "max_seconds", None)  # no limit, as None
        if self.tol is not None and not (_number(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0 or None, got {self.tol!r}")
        if self.target_loss is not None and not (_number(self.target_loss) and not math.isnan(self.target_loss)):
            raise ValueError(f"target_loss must be a number (not NaN) or None, got {self.target_loss!r}")
        f = self.divergence_factor
        if f is not None and not (_number(f) and math.isfinite(f) and f > 1):
            raise ValueError(f"divergence_factor must be a finite number > 1 (or None: off), got {f!r}")
        if not is_count(self.divergence_patience, 1):
            raise ValueError(f"divergence_patience must be an integer >= 1, got {self.divergence_patience!r}")


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where the whole solver state is saved, and where a solve resumes (:mod:`controlnet.io`).

    Args:
        path: the file written every ``every`` iterations, on Ctrl-C and at the end (not after
            a divergence: the last periodic checkpoint stays); ``None``: none is written. In a
            multi-process run only process 0 writes it.
        every: iterations between periodic checkpoints (``None``: only on Ctrl-C and at the end).
        resume: a checkpoint file to continue from; the solve's ``controls`` and ``key`` then
            only fix the state's structure, and the run continues the same history as an
            uninterrupted one, bit for bit on the same machine.
        meta: extra JSON-able entries stored with each checkpoint (e.g. the CLI's options).
    """

    path: Any = None
    every: int | None = None
    resume: Any = None
    meta: dict | None = None

    def __post_init__(self):
        for name in ("path", "resume"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise TypeError(f"checkpoint {name} must be a file path (str or Path) or None, got {v!r}")
        if self.every is not None and not is_count(self.every, 1):
            raise ValueError(f"checkpoint_every must be a positive integer, got {self.every!r}")
        if self.every is not None and self.path is None:
            raise ValueError("checkpoint_every needs a checkpoint file; pass checkpoint=path")
        if self.meta is not None and not isinstance(self.meta, dict):
            raise TypeError(f"checkpoint meta must be a dict, got {type(self.meta).__name__}")


#: ``solve``'s one-by-one spelling of the configuration objects' fields, for error messages.
SPELLED = {"path": "checkpoint", "every": "checkpoint_every", "resume": "resume", "meta": "checkpoint_meta"}


def grouped(cls, name, given, **fields):
    """``given`` (an instance of ``cls``), or ``cls`` built from the options passed one by one;
    both at once is an error (which would win is not obvious)."""
    loose = {k: v for k, v in fields.items() if v is not None}
    if given is None:
        return cls(**loose)
    if not isinstance(given, cls):
        raise TypeError(f"{name} must be a solvers.{cls.__name__}, got {type(given).__name__}")
    if loose:
        spelled = ", ".join(SPELLED.get(k, k) for k in loose)
        raise TypeError(f"pass {spelled} inside {name}={cls.__name__}(...) or on its own, not both")
    return given
