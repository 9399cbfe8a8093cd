"""What :func:`solvers.solve` and :func:`solvers.evaluate` accept as data: controls and a test split.

Each check runs on the host, before anything is compiled, and says what to pass instead.
"""

from __future__ import annotations

import jax
import numpy as np

import controlnet as cn

__all__ = ["check_controls", "check_test", "require_single_block"]


def require_single_block(problem, solver) -> None:
    """``TypeError`` unless ``problem`` is a single-block :class:`controlnet.ControlProblem`:
    the solvers that work layer by layer on one stack of layers (the MSA family, the direct NLP)
    do not take a :class:`controlnet.StagedProblem`, whose blocks differ in shape."""
    if not isinstance(problem, cn.ControlProblem):
        raise TypeError(f"{type(solver).__name__} trains a single-block ControlProblem, got a "
                        f"{type(problem).__name__}; train multi-stage problems with gradient descent "
                        f"(solvers.GradientDescent, --solver gd)")


def check_controls(problem, controls) -> None:
    """Controls must have the problem's pytree structure and shapes, and be finite."""
    if not isinstance(controls, cn.Controls):
        raise TypeError(f"controls must be a controlnet.Controls, got {type(controls).__name__}; "
                        "use problem.init_controls(key)")
    want = jax.eval_shape(problem.init_controls, jax.random.PRNGKey(0))
    got_leaves, got_def = jax.tree_util.tree_flatten_with_path(controls)
    want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
    if got_def != want_def:
        raise ValueError(f"controls have structure {got_def}, the problem expects {want_def}; "
                         "build them with problem.init_controls(key)")
    for (path, g), (_, w) in zip(got_leaves, want_leaves):
        if np.shape(g) != w.shape:
            raise ValueError(f"controls{jax.tree_util.keystr(path)} has shape {np.shape(g)}, the "
                             f"problem (N={problem.N}, width={problem.width}) expects {w.shape}")
        if not np.all(np.isfinite(np.asarray(g))):
            raise ValueError(f"controls{jax.tree_util.keystr(path)} holds NaN or Inf; start from "
                             "finite controls")


def check_test(problem, test) -> None:
    """``test`` must be ``None`` or a pair ``(x, y)`` whose samples have the shape of the
    training samples and whose labels suit the loss (the problem's own validation)."""
    if test is None:
        return
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        got = type(test).__name__ + (f" of length {len(test)}" if isinstance(test, (tuple, list)) else "")
        raise TypeError(f"test must be a held-out split as a pair, got a {got}; pass test=(x, y)")
    problem.check_inputs(*test, what="test")
