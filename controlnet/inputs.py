"""Checks on the numbers a user hands the library: data and labels, before any work starts.

Every check runs at Python time, on NumPy arrays, and raises an error that names the argument
and says what to pass. What is checked:

- the data are an array of real numbers (not strings or objects, which NumPy would carry as
  ``dtype=object`` or ``<U``, and not complex numbers, whose imaginary part a conversion to
  floats would drop without a word);
- every value is finite *in the computation dtype*: JAX computes in float32 unless
  ``jax_enable_x64`` is on, and ``1e39`` is finite in float64 but ``inf`` in float32.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["real_array", "check_finite", "computation_dtype"]


def computation_dtype() -> np.dtype:
    """The floating dtype JAX computes in: float64 with ``jax_enable_x64``, else float32."""
    return np.dtype(jnp.result_type(float))


def real_array(a, name: str, content: str = "numbers") -> np.ndarray:
    """``a`` as a NumPy array of real numbers (booleans, integers or floats), or a ``TypeError``
    naming ``name`` and what to pass; ``content`` says what the array holds (for the message)."""
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise TypeError(f"{name} must be a rectangular array of {content}, got {type(a).__name__} "
                        f"that NumPy cannot make one array of ({e})") from None
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} is complex ({arr.dtype}); the network computes on real numbers: pass "
                        f"real and imaginary parts as separate features, e.g. np.concatenate([x.real, "
                        f"x.imag], axis=1), or x.real if the imaginary part is not needed")
    if arr.dtype.kind not in "biuf":
        what = {"U": "strings", "S": "bytes", "O": "Python objects", "M": "dates", "m": "time spans"}
        held = what.get(arr.dtype.kind, f"dtype {arr.dtype}")
        raise TypeError(f"{name} must be an array of {content} (real numbers), got {type(a).__name__} "
                        f"holding {held}; convert it first, e.g. np.asarray({name.split()[-1]}, "
                        "dtype=float) (class names as integers: np.unique(y, return_inverse=True)[1])")
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """``ValueError`` unless every value of ``arr`` is finite and representable in the
    computation dtype (:func:`computation_dtype`); the message names ``name``, the dtype and
    ``jax_enable_x64``."""
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} holds NaN or Inf values ({bad} of them); clean or drop those samples")
    magnitude = np.abs(arr.astype(np.float64))
    largest = float(magnitude.max(initial=0.0))
    dtype = computation_dtype()
    big = float(np.finfo(dtype).max)
    if largest > big:
        n = int(np.sum(magnitude > big))
        raise ValueError(f"{name} holds {n} value{'s' * (n != 1)} beyond {big:.4g}, the largest {dtype} (the computation "
                         f"dtype; largest here {largest:.4g}): they would become inf. Rescale {name} (e.g. "
                         "standardize it), or compute in float64: jax.config.update('jax_enable_x64', True) "
                         "before building the problem")
