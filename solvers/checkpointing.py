"""A solve's checkpoints: what identifies its problem, writing the state, and resuming from it.

A checkpoint (:func:`controlnet.io.save_checkpoint`) holds the whole solver state, the iteration
count and the history so far, with ``meta`` naming the solver and the problem's
:func:`fingerprint`; :func:`resumed` refuses a checkpoint of another solver or problem, so a
resumed run continues the same history as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import numpy as np

import controlnet as cn

from .sharding import to_host

__all__ = ["fingerprint", "resumed", "checkpoint_writer", "check_checkpoint_path"]


def fingerprint(problem) -> dict:
    """The problem's description and a hash of its data: what a checkpoint must match."""
    h = hashlib.sha256()
    for a in (problem.x, problem.y):
        a = np.ascontiguousarray(to_host(a))  # a multi-process run hashes the global data
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return json.loads(json.dumps({**problem.describe(), "data_sha256": h.hexdigest()}))


def resumed(resume, state, solver_name, problem_fingerprint):
    """``(state, iteration, history)`` to start from: the checkpoint ``resume`` (checked against
    the solver and the problem), or ``state`` at iteration 0 with an empty history."""
    if resume is None:
        return state, 0, {}
    ck = cn.io.load_checkpoint(resume, like=state)
    if ck.meta.get("solver") != solver_name:
        raise ValueError(f"checkpoint {resume} was written by solver {ck.meta.get('solver')!r}, "
                         f"not {solver_name!r}; resume with the same solver")
    saved = ck.meta.get("problem") or {}
    if saved != problem_fingerprint:
        diff = sorted(k for k in set(problem_fingerprint) | set(saved)
                      if saved.get(k) != problem_fingerprint.get(k))
        raise ValueError(f"checkpoint {resume} was written for another problem (differs in "
                         f"{', '.join(diff)}); resume with the same problem and data")
    return ck.state, ck.iteration, {k: [float(x) for x in v] for k, v in ck.history.items()}


def checkpoint_writer(checkpoint, history, meta):
    """``save(state, iteration)`` writing ``checkpoint`` with the history so far, or ``None``."""
    if checkpoint is None:
        return None

    def save(state, n):
        if jax.process_index() != 0:  # several processes (jax.distributed): one writer
            return
        cn.io.save_checkpoint(checkpoint, state, iteration=n, history=history, meta=meta)

    return save


def check_checkpoint_path(path, what: str = "checkpoint") -> None:
    """Refuse, before any work, a checkpoint file whose directory does not exist (or that is a
    directory itself): the first save would fail only after the iterations it should keep."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is a directory; pass a file path such as {str(p / 'run.ckpt')!r}")
    parent = p.parent
    if not parent.is_dir():
        raise ValueError(f"{what} {str(p)!r}: directory {str(parent)!r} does not exist; create it "
                         f"first (Path({str(parent)!r}).mkdir(parents=True)) or pass another {what} path")
