"""Data sets of the field: seeded synthetic ones and the 8×8 digits.

Each generator ``g(n, seed=…)`` returns ``(x, y)`` as numpy arrays, ``x`` of shape ``(n, d_in)``,
the same seed giving the same data. Classification sets (ring, noisy ring, spirals, XOR, two
moons) have integer labels ``y ∈ {0, 1}`` of shape ``(n,)``; regression sets (``x ↦ x²``,
``sin x``) have float targets of shape ``(n, 1)``. :func:`digits` is a fixed, real data set
(1797 images, 64 inputs, 10 classes), split into train and test by :func:`problems.make`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ring", "noisy_ring", "spirals", "xor", "two_moons", "square", "sine", "digits",
    "DATASETS", "FIXED_DATASETS",
]


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


def noisy_ring(n: int = 500, seed: int = 0, label_noise: float = 0.1):
    """:func:`ring` with each label flipped independently with probability ``label_noise``.

    A held-out split drawn with another seed carries the same noise, so the best test accuracy
    is ``1 − label_noise``; a training accuracy above it is memorised noise (overfitting).
    """
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_noise must lie in [0, 0.5), got {label_noise!r}")
    x, y = ring(n, seed=seed)
    flip = np.random.default_rng([seed, 1]).uniform(size=n) < label_noise
    return x, np.where(flip, 1 - y, y)


def two_moons(n: int = 500, seed: int = 0, noise: float = 0.1):
    """Two interleaved half circles: ``(cos t, sin t)`` (label 0) and ``(1 − cos t, ½ − sin t)`` (1).

    ``t`` uniform in ``[0, π]``, Gaussian noise of standard deviation ``noise`` (as scikit-learn's
    ``make_moons``), centred at the origin.
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = rng.uniform(0.0, np.pi, n)
    x = np.where(
        (y == 0)[:, None],
        np.stack([np.cos(t), np.sin(t)], axis=1),
        np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1),
    )
    x = x - np.array([0.5, 0.25]) + noise * rng.standard_normal((n, 2))
    perm = rng.permutation(n)
    return x[perm], y[perm]


def square(n: int = 200, seed: int = 0):
    """``y = x²`` for ``x`` uniform in ``[−1, 1]`` (1-D): not representable by a 1-D flow.

    A 1-D flow map is increasing, so any 1-D ODE network followed by an affine read-out is
    monotone; the best monotone fit leaves a mean ``½(g − x²)²`` of ``0.028125`` (the flat part
    at ``1/4`` on ``[−1, 1/2]``). Lifted to 2-D (augmented) it is representable.
    """
    _check_n(n)
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, (n, 1))
    return x, x**2


def sine(n: int = 200, seed: int = 0):
    """``y = sin x`` for ``x`` uniform in ``[−π, π]`` (the toy regression of Li, Chen, Tai & E, 2018)."""
    _check_n(n)
    x = np.random.default_rng(seed).uniform(-np.pi, np.pi, (n, 1))
    return x, np.sin(x)


def digits():
    """The 8×8 handwritten digits of scikit-learn (UCI): ``x`` (1797, 64) in ``[0, 1]``, ``y ∈ 0..9``.

    The data ship inside scikit-learn (no download); pixel intensities ``0..16`` are scaled by 1/16.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits data set comes with scikit-learn; install it with `pip install scikit-learn`"
        ) from None
    data = load_digits()
    return data.data.astype(np.float64) / 16.0, data.target.astype(np.int64)


def digits_image():
    """The 8×8 digits as one-channel images: ``x`` (1797, 1, 8, 8) in ``[0, 1]``, ``y ∈ 0..9``."""
    x, y = digits()
    return x.reshape(-1, 1, 8, 8), y


def mnist1d():
    """MNIST-1D (Greydanus, "Scaling down deep learning", 2020), generated locally by the
    ``mnist1d`` package with its standard arguments (seed 42): ``((x, y), (x_test, y_test))``,
    4,000 training and 1,000 test signals of length 40 as ``x (S, 1, 40)``, ``y ∈ 0..9``.

    ``mnist1d.data.make_dataset`` builds the set from its ten templates (no download; about 2 s).
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError("MNIST-1D is generated by the mnist1d package; install it with "
                          "`pip install mnist1d` (or this project's `data` extra)") from None
    d = make_dataset(get_dataset_args())
    as_signals = lambda a: np.asarray(a, dtype=np.float64)[:, None, :]  # noqa: E731
    return ((as_signals(d["x"]), np.asarray(d["y"], np.int64)),
            (as_signals(d["x_test"]), np.asarray(d["y_test"], np.int64)))


DATASETS = {
    "ring": ring,
    "spiral": spirals,
    "xor": xor,
    "noisy_ring": noisy_ring,
    "two_moons": two_moons,
    "square": square,
    "sine": sine,
}
#: Real data sets of fixed size, loaded whole and split by :func:`problems.make`.
FIXED_DATASETS = {"digits": digits, "digits_image": digits_image}
#: Real data sets with a standard train/test split of their own, ``() -> (train, test)``.
SPLIT_DATASETS = {"mnist1d": mnist1d}
