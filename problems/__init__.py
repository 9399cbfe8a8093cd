"""Data sets and ready-made control problems; imports :mod:`controlnet` only."""

from .datasets import (
    DATASETS, FIXED_DATASETS, SPLIT_DATASETS, digits, digits_image, mnist1d, noisy_ring, ring, sine,
    spirals, square, two_moons, xor,
)
from .tasks import DEFAULTS, LOSSES, PROBLEMS, TRAINING, Task, make, training_defaults
from .tasks import SOLVER_TRAINING, solver_defaults
