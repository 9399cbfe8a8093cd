"""Data sets and ready-made control problems; imports :mod:`controlnet` only."""

from .datasets import DATASETS, ring, spirals, xor
from .tasks import DEFAULTS, PROBLEMS, Task, make
