"""Figures the commands write: PNG files written atomically, and a time axis that stays readable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controlnet.io import atomic_write

__all__ = ["save_fig", "log_time_axis"]


def save_fig(fig, path: Path):
    """``fig`` as a PNG at ``path``, all of it or nothing."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def log_time_axis(ax, times) -> bool:
    """A logarithmic x axis on ``ax`` when the positive ``times`` plotted span more than a
    decade (a linear axis squashes the fast curves against the left edge); whether it is set."""
    t = np.concatenate([np.ravel(np.asarray(v, float)) for v in times]) if len(times) else np.zeros(0)
    t = t[np.isfinite(t) & (t > 0)]
    if t.size < 2 or t.max() <= 10 * t.min():
        return False
    ax.set_xscale("log")
    return True
