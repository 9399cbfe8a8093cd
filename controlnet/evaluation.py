"""The numbers a run reports at its end: loss, data loss and accuracy, on the training data and
on a test split.

One compiled function (:func:`train_metrics`, :func:`controlnet.metrics` under ``jax.jit``)
serves every solver and the driver: it compiles once per problem structure, and a test split of
another size is one more compile of the same function.
"""

from __future__ import annotations

import jax

from .problem import ControlProblem, Controls, metrics

__all__ = ["evaluate", "train_metrics"]

#: :func:`controlnet.metrics` compiled: ``{"loss", "data_loss", "accuracy"}`` as 0-d arrays.
train_metrics = jax.jit(metrics)


def evaluate(problem: ControlProblem, controls: Controls, test=None) -> dict:
    """``loss`` (``J``), ``data_loss`` and ``accuracy`` on the training data, as floats; with a
    test split ``test = (x, y)`` also ``test_loss`` (its data loss, no regularization) and
    ``test_accuracy``. The split is checked first (:meth:`ControlProblem.check_inputs`)."""
    if test is not None:
        test_problem = problem.with_data(*_pair(test))
    out = {k: float(v) for k, v in train_metrics(problem, controls).items()}
    if test is not None:
        m = train_metrics(test_problem, controls)
        out["test_loss"] = float(m["data_loss"])
        out["test_accuracy"] = float(m["accuracy"])
    return out


def _pair(test):
    """``(x, y)`` from a test split, or a ``TypeError`` saying what to pass."""
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise TypeError(f"test must be a pair (x, y) of inputs and labels, got {type(test).__name__}"
                        + (f" of length {len(test)}" if isinstance(test, (tuple, list)) else "")
                        + "; pass test=(x, y)")
    return test
