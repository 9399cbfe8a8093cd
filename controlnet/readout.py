"""The output layer ``λ2``: an affine read-out ``λ2(z; w) = A z + c`` of the state."""

from __future__ import annotations

import jax

__all__ = ["readout", "init_readout"]


def readout(z, w):
    """``λ2(z; w) = A z + c`` for a batch ``z (..., d)``; ``w = {"A": (n_out, d), "c": (n_out,)}``."""
    return z @ w["A"].T + w["c"]


def init_readout(key, d: int, n_out: int, scale: float = 1.0) -> dict:
    """Random read-out parameters, ``A`` with standard deviation ``scale/√d``, ``c = 0``."""
    A = scale / d**0.5 * jax.random.normal(key, (n_out, d))
    return {"A": A, "c": jax.numpy.zeros((n_out,))}
