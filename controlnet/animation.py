"""The flow as a moving picture: the states layer by layer, one frame per layer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["animate_flow", "save_animation"]


def animate_flow(zs, y=None, *, grid=None, T: float | None = None, title: str | None = None, interval: int = 120):
    """The data moving through the layers as a film: one frame per layer ``k = 0..N``.

    ``zs (N+1, S, d)``: the samples coloured by ``y``, in the plane (``d ≤ 2``) or in 3-D (first
    three coordinates); ``grid``: the moving grid of the input plane, ``(N+1, lines, points, d)``
    (what :func:`controlnet.plotting.plot_flow_grid` draws). States with channels and space
    ``(N+1, S, C, L)`` show sample 0's feature maps. Returns a
    ``matplotlib.animation.FuncAnimation``; :func:`save_animation` writes it.
    """
    from matplotlib.animation import FuncAnimation

    zs = np.asarray(zs)
    N = zs.shape[0] - 1
    label = lambda k: f"layer {k}" + (f", t = {k * T / N:.2g}" if T is not None else "")  # noqa: E731
    if zs.ndim == 4:  # (N+1, S, C, L): sample 0's channels × positions
        fig, ax = plt.subplots(figsize=(5, 3.6))
        lim = float(np.max(np.abs(zs[:, 0])))
        im = ax.imshow(zs[0, 0], aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xlabel("position")
        ax.set_ylabel("channel")

        def frame(k):
            im.set_data(zs[k, 0])
            ax.set_title(label(k))
            return (im,)
    elif zs.ndim == 3:
        d = zs.shape[-1]
        three = d >= 3
        fig = plt.figure(figsize=(4.2, 4.2))
        ax = fig.add_subplot(1, 1, 1, projection="3d" if three else None)
        dims = 3 if three else 2
        pts = zs[..., :dims] if d >= 2 else np.concatenate([zs, np.zeros_like(zs)], -1)
        c = None if y is None else np.asarray(y).reshape(zs.shape[1], -1)[:, 0]
        lo, hi = pts.reshape(-1, dims).min(0), pts.reshape(-1, dims).max(0)

        def frame(k):
            ax.cla()
            if grid is not None:
                for line in np.asarray(grid)[k]:
                    ax.plot(*line[:, :dims].T, color="0.6", lw=0.5)
            ax.scatter(*pts[k].T, c=c, cmap="coolwarm", s=6)
            for setter, a, b in zip((ax.set_xlim, ax.set_ylim, getattr(ax, "set_zlim", None)), lo, hi):
                pad = 0.05 * (b - a) + 1e-9
                setter(a - pad, b + pad)
            ax.set_title(label(k), fontsize=10)
            return ()
    else:
        raise ValueError(f"animate_flow draws states (N+1, S, d) or (N+1, S, C, L), got shape {zs.shape}")
    if title:
        fig.suptitle(title)
    return FuncAnimation(fig, frame, frames=N + 1, interval=interval, blit=False)


def save_animation(anim, path, fps: int = 8):
    """Write ``anim`` as a GIF (Pillow, a matplotlib dependency) to ``path``, whole or not at all."""
    import pathlib
    import tempfile

    from matplotlib.animation import PillowWriter

    from .io import atomic_write

    path = pathlib.Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"save_animation writes GIF files; name the file *.gif, got {path.name}")
    with tempfile.TemporaryDirectory() as tmp:
        frames = pathlib.Path(tmp) / "film.gif"
        anim.save(frames, writer=PillowWriter(fps=fps))
        data = frames.read_bytes()
    atomic_write(path, lambda f: f.write(data))
    plt.close(anim._fig)
    return path
