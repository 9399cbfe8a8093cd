"""Apply trained controls to new inputs: the read-out scores and, for classification, labels.

For inputs ``x`` (no labels) the network is the problem's own forward pass::

    z_0 = λ1(x),   z_{k+1} = Ψ_h(z_k, θ_k)  (k = 0..N−1),   scores = λ2(z_N; w)

and the labels are those the loss's accuracy counts as predicted: ``1[scores > 0]`` for the
logistic loss (one score per sample), ``argmax`` of the scores for softmax cross-entropy; a
regression (squared error) has no labels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .costs import Logistic, SoftmaxCrossEntropy
from .problem import ControlProblem, Controls
from .state import final_state

__all__ = ["predict", "Prediction"]


class Prediction(NamedTuple):
    """``scores`` ``(n, n_out)``: the read-out ``λ2(z_N; w)``; ``labels`` ``(n,)`` (integers) for
    classification, ``None`` for a regression."""

    scores: jax.Array
    labels: Any


@jax.jit
def _scores(problem, controls, x):
    p = problem.replace_data(x, problem.y)  # only x is read: z_0, the layers, the read-out
    zN = final_state(p, controls.theta, p.z0(controls.lift))
    return p.readout(zN, controls.w)


def _labels(loss, scores):
    if isinstance(loss, Logistic):
        return (scores[..., 0] > 0).astype(jnp.int32)
    if isinstance(loss, SoftmaxCrossEntropy):
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return None


def predict(problem: ControlProblem, controls: Controls, x) -> Prediction:
    """The scores (and labels, for classification) of the network ``(problem, controls)`` on
    the new inputs ``x`` (formulas in the module doc).

    ``x`` has one row per sample and each sample the shape of the problem's own
    (``problem.x.shape[1:]``: ``(d_in,)``, ``(C, L)`` or ``(C, H, W)``). A wrong per-sample
    shape, or a non-finite input, raises ``ValueError`` before anything is computed.
    """
    if not isinstance(problem, ControlProblem):
        raise TypeError(f"problem must be a ControlProblem, got {type(problem).__name__}")
    x = np.asarray(x)
    want = tuple(problem.x.shape[1:])
    if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
        hint = "; add a leading sample axis, x[None]" if tuple(x.shape) == want else ""
        raise ValueError(f"x must have shape (n, {', '.join(map(str, want))}) (one row per sample, each "
                         f"shaped like the problem's inputs), got {tuple(x.shape)}{hint}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ValueError("x must hold finite numbers (found NaN, inf or a non-number)")
    scores = _scores(problem, controls, jnp.asarray(x, problem.x.dtype))
    return Prediction(scores, _labels(problem.loss, scores))
