"""Pictures of trained networks. Each function returns a matplotlib ``Figure``; none shows it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_flow", "plot_history", "layer_choice"]


def layer_choice(N: int, count: int = 4) -> list[int]:
    """``count`` layer indices spread evenly over ``0..N`` (always 0 and N)."""
    return sorted({int(round(k)) for k in np.linspace(0, N, min(count, N + 1))})


def plot_flow(zs, y, layers=None, *, T: float | None = None, title: str | None = None):
    """The data moving through the layers: states ``z_k`` at a few layers, coloured by label.

    ``zs`` has shape ``(N+1, S, d)``; 2-D states are drawn in the plane, wider ones in 3-D
    (first three coordinates).
    """
    zs = np.asarray(zs)
    y = np.asarray(y)
    N = zs.shape[0] - 1
    layers = layer_choice(N) if layers is None else list(layers)
    d = zs.shape[-1]
    three = d >= 3
    fig = plt.figure(figsize=(3.6 * len(layers), 3.6))
    for j, k in enumerate(layers):
        ax = fig.add_subplot(1, len(layers), j + 1, projection="3d" if three else None)
        z = zs[k]
        coords = (z[:, 0], z[:, 1], z[:, 2]) if three else (z[:, 0], z[:, 1] if d > 1 else np.zeros(len(z)))
        ax.scatter(*coords, c=y, cmap="coolwarm", s=6, vmin=y.min(), vmax=y.max())
        label = f"layer {k}" + (f", t = {k * T / N:.2g}" if T is not None else "")
        ax.set_title(label, fontsize=10)
        if not three:
            ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(histories: dict, key: str = "loss", *, against: str = "iteration", logy: bool = True):
    """``key`` of one or several solve histories against iterations or wall time.

    ``histories`` maps a label to a history dict (as in ``Result.history``).
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, hist in histories.items():
        v = np.asarray(hist[key])
        x = np.cumsum(hist["time"]) if against == "time" else np.arange(1, len(v) + 1)
        ax.plot(x, v, label=label)
    ax.set_xlabel("wall time [s]" if against == "time" else "iteration")
    ax.set_ylabel(key)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
