"""Pictures of trained networks. Each function returns a matplotlib ``Figure``; none shows it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .animation import animate_flow, save_animation

__all__ = ["plot_flow", "plot_history", "layer_choice"]


def _finish(fig, ax, title=None, *, grid=True):
    """The common end of a one-axis figure: grid, small legend, title, tight layout."""
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def layer_choice(N: int, count: int = 4) -> list[int]:
    """``count`` layer indices spread evenly over ``0..N`` (always 0 and N)."""
    return sorted({int(round(k)) for k in np.linspace(0, N, min(count, N + 1))})


def _layer_panels(zs, y, layers, title_of, size, grid=None):
    """One panel per layer ``k`` in ``layers``: the states ``zs[k] (S, d)`` coloured by ``y``, in
    the plane or in 3-D (``d ≥ 3``, first three coordinates), over the lines ``grid[k]`` if
    given; panel titles ``title_of(k)``."""
    d = zs.shape[-1]
    three = d >= 3
    fig = plt.figure(figsize=(size * len(layers), size))
    for j, k in enumerate(layers):
        ax = fig.add_subplot(1, len(layers), j + 1, projection="3d" if three else None)
        for line in () if grid is None else grid[k]:
            ax.plot(*line[:, : 3 if three else 2].T, color="0.6", lw=0.5)
        z = zs[k]
        coords = (z[:, 0], z[:, 1], z[:, 2]) if three else (z[:, 0], z[:, 1] if d > 1 else np.zeros(len(z)))
        points = ax.scatter(*coords, c=y, cmap="coolwarm", s=6, vmin=y.min(), vmax=y.max())
        ax.set_title(title_of(k), fontsize=10)
        ax.set_xlabel("z₁")
        ax.set_ylabel("z₂")
        if three:
            ax.set_zlabel("z₃")
            ax.set_box_aspect(None, zoom=0.8)  # room for the tick labels tight_layout ignores in 3-D
        else:
            ax.set_aspect("equal", adjustable="datalim")
        if j == 0:
            _class_legend(ax, points, y)
    return fig


def _class_legend(ax, points, y):
    """A legend of the classes (a few distinct labels: not for a regression's targets)."""
    classes = np.unique(y)
    if len(classes) <= 10 and np.all(classes == np.round(classes)):
        handles, _ = points.legend_elements()
        ax.legend(handles, [f"class {int(c)}" for c in classes], fontsize=7, loc="best")


def _layout(fig):
    """``tight_layout``, or for 3-D panels (whose tick labels it ignores) fixed margins."""
    if any(getattr(ax, "name", "") == "3d" for ax in fig.axes):
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.05, top=0.88, wspace=0.15)
    else:
        fig.tight_layout()


def plot_flow(zs, y, layers=None, *, T: float | None = None, title: str | None = None):
    """The data moving through the layers: states ``z_k`` at a few layers, coloured by label.

    ``zs`` has shape ``(N+1, S, d)``; 2-D states are drawn in the plane, wider ones in 3-D
    (first three coordinates).
    """
    zs = np.asarray(zs)
    y = np.asarray(y)
    N = zs.shape[0] - 1
    layers = layer_choice(N) if layers is None else list(layers)
    fig = _layer_panels(zs, y, layers, lambda k: f"layer {k}" + (f", t = {k * T / N:.2g}" if T is not None else ""),
                        3.6)
    if title:
        fig.suptitle(title)
    _layout(fig)
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


# -- diagnostics pictures (turnpike, stability, landscape) --------------------------------------
__all__ += [
    "plot_flow_grid",
    "plot_decision_regions",
    "plot_turnpike",
    "plot_error_vs_horizon",
    "plot_eigenvalues",
    "plot_landscape",
]


def _input_box(x, margin=0.15):
    lo, hi = x.min(axis=0), x.max(axis=0)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def _grid_states(problem, controls, lines: int, points: int):
    """Grid lines ``x₁ = const`` and ``x₂ = const`` over the data's bounding box (2-D inputs),
    lifted and moved by the flow: ``(N+1, 2·lines, points, d)``."""
    from .lift import lift
    from .state import forward

    x = np.asarray(problem.x)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"the grid of the input plane needs 2-D inputs, got data of shape {x.shape[1:]}")
    (x0, y0), (x1, y1) = _input_box(x)
    s = np.linspace(0.0, 1.0, points)
    grid = [np.stack([np.full(points, a), y0 + s * (y1 - y0)], 1) for a in np.linspace(x0, x1, lines)]
    grid += [np.stack([x0 + s * (x1 - x0), np.full(points, b)], 1) for b in np.linspace(y0, y1, lines)]
    g = np.concatenate(grid)
    zg = np.asarray(forward(problem, controls.theta, z0=lift(g.astype(x.dtype), problem.width)))
    return zg.reshape(zg.shape[0], 2 * lines, points, -1)


def plot_flow_grid(problem, controls, layers=None, *, lines: int = 11, points: int = 60,
                   title: str | None = None):
    """The data and a grid of the input plane pushed through the layers (2-D inputs).

    The grid lines ``x₁ = const`` and ``x₂ = const`` over the data's bounding box are lifted and
    moved by the same flow ``z_{k+1} = Ψ_h(z_k, θ_k)`` as the data; states of width 3 or more
    are drawn in 3-D (first three coordinates).
    """
    from .state import forward

    x = np.asarray(problem.x)
    zg = _grid_states(problem, controls, lines, points)
    zs = np.asarray(forward(problem, controls.theta))
    y = np.asarray(problem.y).reshape(len(x), -1)[:, 0]
    N = zs.shape[0] - 1
    layers = layer_choice(N) if layers is None else list(layers)
    fig = _layer_panels(zs, y, layers, lambda k: f"layer {k}, t = {k * float(problem.T) / N:.2g}", 3.8, zg)
    if title:
        fig.suptitle(title)
    _layout(fig)
    return fig


def plot_decision_regions(problem, controls, layers=None, *, resolution: int = 120,
                          title: str | None = None):
    """Per layer ``k``, the read-out applied to ``z_k(x)`` over the input plane (2-D inputs).

    Colour is the first read-out output ``λ2(z_k(x); w)₁`` (the arg-max class for several
    outputs); the black line is the decision boundary (output ``0`` for the logistic loss,
    ``½`` for regression to 0/1 labels). Layer ``N`` is the trained classifier; earlier layers
    show what truncating the network there would decide.
    """
    from .costs import Logistic, SoftmaxCrossEntropy
    from .lift import lift
    from .readout import readout
    from .state import forward

    x = np.asarray(problem.x)
    if x.shape[1] != 2:
        raise ValueError(f"plot_decision_regions needs 2-D inputs, got {x.shape[1]}-D data")
    (x0, y0), (x1, y1) = _input_box(x)
    X, Y = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    g = np.stack([X.ravel(), Y.ravel()], 1).astype(x.dtype)
    zg = forward(problem, controls.theta, z0=lift(g, problem.width))
    out = np.asarray(readout(zg, controls.w))
    many = isinstance(problem.loss, SoftmaxCrossEntropy)
    value = out.argmax(-1) if many else out[..., 0]
    level = 0.0 if isinstance(problem.loss, Logistic) else 0.5
    y = np.asarray(problem.y).reshape(len(x), -1)[:, 0]
    N = out.shape[0] - 1
    layers = layer_choice(N) if layers is None else list(layers)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.6), squeeze=False)
    for ax, k in zip(axes[0], layers):
        V = value[k].reshape(X.shape)
        if many:
            ax.contourf(X, Y, V, levels=np.arange(-0.5, out.shape[-1]), cmap="coolwarm", alpha=0.5)
        else:
            span = max(np.max(np.abs(V - level)), 1e-12)
            ax.contourf(X, Y, V, levels=21, cmap="coolwarm", vmin=level - span, vmax=level + span, alpha=0.6)
            if V.min() < level < V.max():
                ax.contour(X, Y, V, levels=[level], colors="k", linewidths=1)
        points = ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=5, edgecolors="none")
        ax.set_title(f"read-out at layer {k}", fontsize=10)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_aspect("equal")
        if k == layers[0]:
            _class_legend(ax, points, y)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_turnpike(runs, key: str = "theta_norm", *, ylabel: str | None = None, logy: bool = True,
                  eps: float | None = None, title: str | None = None):
    """A per-layer curve against ``t/T`` for several horizons on one axis.

    ``runs`` is a list of dicts with ``T``, ``t`` (interval midpoints) and ``key`` (as written
    by the depth study); ``eps`` draws the band ``v ≤ ε``.
    """
    fig, ax = plt.subplots(figsize=(5.8, 3.9))
    cmap = plt.get_cmap("viridis")
    for j, r in enumerate(runs):
        t = np.asarray(r["t"], float) / float(r["T"])
        ax.plot(t, np.asarray(r[key], float), color=cmap(j / max(len(runs) - 1, 1)),
                label=f"T = {float(r['T']):g}, N = {r.get('N', len(t))}")
    if eps is not None:
        ax.axhline(eps, color="k", ls=":", lw=1, label=f"ε = {eps:g}")
    ax.set_xlabel("t / T")
    ax.set_ylabel(ylabel or {"theta_norm": "‖θ(t)‖", "speed": "flow speed ‖z_{k+1}−z_k‖/h"}.get(key, key))
    if logy:
        ax.set_yscale("log")
    return _finish(fig, ax, title)


def plot_error_vs_horizon(series: dict, *, xlabel: str = "horizon T", ylabel: str = "training error",
                          reference: float | None = -1.0, title: str | None = None):
    """Error against ``T`` (or ``N``) on log-log axes, one line per ``label: (x, error)``, each
    with its least-squares slope in the legend; ``reference`` draws a line of that slope."""
    fig, ax = plt.subplots(figsize=(5.2, 3.9))
    for label, (xv, ev) in series.items():
        xv, ev = np.asarray(xv, float), np.asarray(ev, float)
        ok = (xv > 0) & (ev > 0)
        slope = np.polyfit(np.log(xv[ok]), np.log(ev[ok]), 1)[0] if ok.sum() >= 2 else np.nan
        ax.plot(xv, ev, "o-", label=f"{label} (slope {slope:.2f})")
    if reference is not None and series:
        xv, ev = (np.asarray(a, float) for a in next(iter(series.values())))
        ref = ev[0] * (xv / xv[0]) ** reference
        ax.plot(xv, ref, "k--", lw=1, label=f"slope {reference:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, ax, title, grid=False)


def plot_eigenvalues(eigenvalues, h: float, *, title: str | None = None):
    """``hλ`` for the eigenvalues ``λ`` of ``∂_z f`` (shape ``(N, ...)``, coloured by layer)
    against the forward-Euler stability disc ``|1 + hλ| ≤ 1``."""
    lam = np.asarray(eigenvalues)
    N = lam.shape[0]
    hl = h * lam.reshape(N, -1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    s = np.linspace(0, 2 * np.pi, 200)
    ax.fill(-1 + np.cos(s), np.sin(s), color="0.9", label="|1 + hλ| ≤ 1")
    ax.plot(-1 + np.cos(s), np.sin(s), color="0.5", lw=1)
    layer = np.broadcast_to(np.arange(N)[:, None], hl.shape)
    sc = ax.scatter(hl.real.ravel(), hl.imag.ravel(), c=layer.ravel(), cmap="viridis", s=4)
    fig.colorbar(sc, ax=ax, label="layer k")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.axvline(0, color="0.7", lw=0.5)
    ax.set_xlabel("Re hλ")
    ax.set_ylabel("Im hλ")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_landscape(alphas, betas, J, *, log: bool = True, title: str | None = None):
    """Contours of ``J(θ + a δ₁ + b δ₂)`` over the grid (rows ``a``, columns ``b``); the trained
    controls sit at the origin."""
    A, B = np.meshgrid(np.asarray(alphas), np.asarray(betas), indexing="ij")
    V = np.asarray(J, float)
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    cs = ax.contourf(A, B, np.log10(V) if log else V, levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log₁₀ J" if log else "J")
    ax.plot([0], [0], "r*", ms=10)
    ax.set_xlabel("a (direction δ₁)")
    ax.set_ylabel("b (direction δ₂)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# -- notebooks 05-08: regularization sweeps, per-layer curves, 1-D fits ---------------------------
__all__ += ["plot_regularization_sweep", "plot_layer_curves", "plot_fit_1d"]


def plot_regularization_sweep(sweep, keys=("train_error", "test_error"), *, logx: bool = True,
                              title: str | None = None):
    """``keys`` of each run of a regularization sweep (``{"kind", "runs": [{"weight", ...}]}``,
    as :func:`solvers.depth_study.regularization_sweep` returns) against the weight."""
    runs = sweep["runs"]
    w = np.array([r["weight"] for r in runs], float)
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    for key in keys:
        ax.plot(w, [r[key] for r in runs], "o-", label=key.replace("_", " "))
    if logx:
        ax.set_xscale("symlog", linthresh=float(np.min(w[w > 0])) if np.any(w > 0) else 1.0)
    ax.set_xlabel({"l2": "L² weight α", "l1": "L¹ weight α₁", "smoothness": "smoothness weight β"}
                  .get(sweep.get("kind"), "weight"))
    return _finish(fig, ax, title)


def plot_layer_curves(curves: dict, *, T: float | None = None, ylabel: str = "", logy: bool = True,
                      title: str | None = None):
    """Per-layer values, one line per ``label: values`` (length ``N`` per layer or ``N+1`` per
    node), against the layer index, or against ``t/T = k/(len − 1)`` when ``T`` is given."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for label, v in curves.items():
        v = np.asarray(v, float)
        k = np.arange(len(v))
        ax.plot(k / (len(v) - 1 if len(v) > 1 else 1) if T is not None else k, v, "o-", ms=3, label=label)
    ax.set_xlabel("t / T" if T is not None else "layer k")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, ax, title, grid=False)


def plot_fit_1d(x, y, fits: dict, *, title: str | None = None):
    """A 1-D regression: the data ``(x, y)`` as points and each ``label: prediction`` (one value
    per sample) as a line over the sorted ``x``."""
    x, y = np.ravel(np.asarray(x, float)), np.ravel(np.asarray(y, float))
    order = np.argsort(x)
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    ax.scatter(x, y, s=8, color="0.5", label="data")
    for label, pred in fits.items():
        ax.plot(x[order], np.ravel(np.asarray(pred, float))[order], lw=2, label=label)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return _finish(fig, ax, title)


__all__ += ["plot_feature_maps"]


def plot_feature_maps(zs, sample: int = 0, layers=None, *, T: float | None = None, title: str | None = None):
    """One sample's feature maps through the layers of a convolutional network.

    ``zs (N+1, S, C, L)`` (signals: each panel is a channels × position image of ``z_k``) or
    ``(N+1, S, C, H, W)`` (images: each panel shows the channel mean of ``z_k``). ``layers``
    defaults to :func:`layer_choice`; one colour scale per panel.
    """
    zs = np.asarray(zs)
    if zs.ndim not in (4, 5):
        raise ValueError(f"feature maps need states (N+1, S, C, L) or (N+1, S, C, H, W), got shape {zs.shape}")
    N = zs.shape[0] - 1
    layers = layer_choice(N) if layers is None else list(layers)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.0), squeeze=False)
    for ax, k in zip(axes[0], layers):
        z = zs[k, sample]
        img = z if z.ndim == 2 else z.mean(axis=0)
        im = ax.imshow(img, aspect="auto", cmap="RdBu_r", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046)
        when = f", t = {k * T / N:.2g}" if T is not None else ""
        ax.set_title(f"layer {k}{when}", fontsize=10)
        ax.set_xlabel("position" if z.ndim == 2 else "width")
        ax.set_ylabel("channel" if z.ndim == 2 else "height")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_critical_points(F, points, lower, upper, *, resolution: int = 200, title: str | None = None):
    """The scalar map ``F`` over the box ``[lower, upper]`` (1-D: its graph; 2-D: its contours and
    the sign of ``F``, the decision regions of a score) with its critical points
    (:func:`controlnet.diagnostics.critical_points`) marked by index: minima ▲, maxima ▼,
    saddles ◆, degenerate ones hollow."""
    import jax

    lower, upper = np.atleast_1d(lower), np.atleast_1d(upper)
    Fv = jax.jit(jax.vmap(F))
    marker = lambda cp, n: "^" if cp.index == 0 else ("v" if cp.index == n else "D")  # noqa: E731
    fig, ax = plt.subplots(figsize=(5, 4))
    if lower.size == 1:
        xs = np.linspace(lower[0], upper[0], resolution)
        ax.plot(xs, np.asarray(Fv(xs[:, None])), color="k", lw=1)
        for cp in points:
            ax.plot(cp.x[0], cp.value, marker(cp, 1), ms=9, color="C3", mfc="none" if cp.degenerate else "C3")
        ax.set_xlabel("x")
        ax.set_ylabel("F(x)")
    elif lower.size == 2:
        a, b = np.meshgrid(*(np.linspace(lo, hi, resolution) for lo, hi in zip(lower, upper)), indexing="xy")
        v = np.asarray(Fv(np.stack([a.ravel(), b.ravel()], 1))).reshape(a.shape)
        ax.contourf(a, b, v > 0, levels=[-0.5, 0.5, 1.5], colors=["#c6dbef", "#fcbba1"], alpha=0.7)
        ax.contour(a, b, v, levels=15, colors="0.4", linewidths=0.5)
        for cp in points:
            ax.plot(*cp.x, marker(cp, 2), ms=9, color="k", mfc="none" if cp.degenerate else "k")
        ax.set_aspect("equal")
    else:
        raise ValueError(f"plot_critical_points draws maps of 1 or 2 inputs, got {lower.size}")
    ax.set_title(title or f"{len(points)} critical point{'' if len(points) == 1 else 's'}")
    fig.tight_layout()
    return fig


__all__ += ["animate_flow", "save_animation", "plot_critical_points"]  # the first two from .animation


def plot_robustness(curves: dict, *, norm: str = "2", title: str | None = None):
    """Accuracy against the attack radius ``ε``: ``curves[label] = {"eps": [...], "attacked":
    [...], "certified": [...] (optional)}``; attacked accuracies solid, certified ones dashed in
    the same colour (a certified accuracy is a lower bound of every attack's)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for j, (label, c) in enumerate(curves.items()):
        ax.plot(c["eps"], c["attacked"], "o-", color=f"C{j}", ms=4, label=f"{label}: attacked")
        if c.get("certified") is not None:
            ax.plot(c["eps"], c["certified"], "s--", color=f"C{j}", ms=4, label=f"{label}: certified")
    ax.set_xlabel(f"attack radius ε (ℓ{'∞' if norm == 'inf' else '2'})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, title)


__all__ += ["plot_robustness"]
