"""Seeded synthetic data sets of the field: ring, two spirals, XOR.

Each generator returns ``(x, y)`` as numpy arrays, ``x`` of shape ``(n, 2)`` and integer labels
``y ∈ {0, 1}`` of shape ``(n,)``; the same seed gives the same data.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ring", "spirals", "xor", "DATASETS"]


def _check_n(n):
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"the number of samples must be an integer >= 2, got {n!r}")


def ring(n: int = 500, seed: int = 0, inner=(0.0, 0.5), outer=(0.75, 1.0)):
    """Two concentric rings with a gap: radius uniform in ``inner`` (label 0) or ``outer`` (1).

    Angles are uniform; radii are drawn so points are uniform in area within each ring. No 2-D
    homeomorphism separates the classes linearly: the inner ring must leave the plane.
    """
    _check_n(n)
    if not (0 <= inner[0] < inner[1] < outer[0] < outer[1]):
        raise ValueError(f"need 0 <= inner < outer radii with a gap, got {inner}, {outer}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    lo = np.where(y == 0, inner[0], outer[0])
    hi = np.where(y == 0, inner[1], outer[1])
    r = np.sqrt(rng.uniform(lo**2, hi**2))
    a = rng.uniform(0, 2 * np.pi, n)
    x = np.stack([r * np.cos(a), r * np.sin(a)], axis=1)
    perm = rng.permutation(n)
    return x[perm], y[perm]


def spirals(n: int = 500, seed: int = 0, turns: float = 1.0, noise: float = 0.02):
    """Two interleaved spirals ``r = t``, angle ``2π·turns·t + cπ`` for class ``c``, ``t ∈ [0.15, 1]``."""
    _check_n(n)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = rng.uniform(0.15, 1.0, n)
    a = 2 * np.pi * turns * t + np.pi * y
    x = np.stack([t * np.cos(a), t * np.sin(a)], axis=1) + noise * rng.standard_normal((n, 2))
    perm = rng.permutation(n)
    return x[perm], y[perm]


def xor(n: int = 500, seed: int = 0, margin: float = 0.1):
    """Points uniform in ``[−1, 1]²`` away from the axes by ``margin``; label ``[x₁ x₂ < 0]``."""
    _check_n(n)
    rng = np.random.default_rng(seed)
    mag = rng.uniform(margin, 1.0, (n, 2))
    sign = rng.choice([-1.0, 1.0], (n, 2))
    x = mag * sign
    y = (x[:, 0] * x[:, 1] < 0).astype(np.int64)
    return x, y


DATASETS = {"ring": ring, "spiral": spirals, "xor": xor}
