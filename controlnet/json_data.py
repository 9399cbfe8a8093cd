"""JSON text of results and summaries: numbers and arrays of numpy and JAX, non-finite floats as null."""

from __future__ import annotations

import json

import jax
import numpy as np

__all__ = ["jsonable", "to_json"]


def jsonable(obj):
    """``obj`` as plain JSON data: numpy and JAX scalars and arrays as numbers and lists, tuples
    as lists, and non-finite floats (an accuracy of ``nan`` for a regression) as ``None``."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def to_json(obj, indent=None) -> str:
    """Strict JSON text of :func:`jsonable` ``(obj)`` (no ``NaN`` or ``Infinity`` tokens)."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False)
