"""One MNIST-1D epoch of the convolutional ResNet, controlnet against equinox and flax, in one run.

The network (``problems.make("mnist1d")``): a learned lift ``z_0 = K_0 ∗ x + b_0`` from 1 to 32
channels (kernel 5), 8 residual layers ``z_{k+1} = z_k + h tanh(K_k ∗ z_k + b_k)`` (32 → 32
channels, kernel 5, same padding, ``h = T/N = 0.25``), the state ``(32, 40)`` flattened into a
linear read-out to 10 classes, softmax cross-entropy;
``J = mean ℓ + h Σ_k ½α‖θ_k‖² + ½α_w‖w‖² + ½α_λ‖φ‖²`` with ``α = 1e-4``, ``α_w = α_λ = 1e-3``;
Adam with learning rate ``5e-3``, minibatches of 128 drawn without replacement, float32. An epoch
is ``EPOCH_STEPS = 32`` steps (4,096 samples of the 4,000). Every contender starts from
controlnet's initial weights and computes the same ``J`` (checked on one minibatch before timing).

- ``controlnet``: ``solvers.GradientDescent(optax.adam(5e-3), batch_size=128)`` (adjoint
  gradient), as ``solvers.solve`` compiles and runs it: the epoch's 32 steps in one device-side
  loop per call (the minibatch drawn inside);
- ``controlnet (autodiff)``: the same with ``gradient="autodiff"``;
- ``equinox, epoch in one scan``: an ``eqx.Module`` holding the stacked layer weights, the layers
  a ``lax.scan``, ``eqx.filter_value_and_grad``, optax Adam, the epoch's 32 steps a ``lax.scan``
  inside one ``eqx.filter_jit`` (each step draws its minibatch with ``jax.random.choice``, as
  controlnet does): the fastest way we know to write it;
- ``equinox, step per call``: the same step, one ``eqx.filter_jit`` call per minibatch from a
  Python loop (how the equinox examples train; the minibatches indexed on the device);
- ``flax.linen, epoch in one scan``: ``nn.Module`` with ``nn.Conv`` lift and stacked layer
  parameters scanned, ``jax.value_and_grad``, optax Adam, the epoch in one ``jax.jit``'d scan.

Protocol as in ``benchmarks/peers.py``: compile timed apart; then ``rounds`` rounds, each one
epoch of every contender in an order shuffled every round; the median epoch time, and ratios
``t_peer / t_controlnet`` (> 1: controlnet is faster). Writes ``benchmarks/results.json`` key
``"conv"``.

    python -m benchmarks.conv_peers [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results.json")
BATCH = 128
LR = 5e-3
EPOCH_STEPS = 32


def _block(x):
    import jax

    return jax.block_until_ready(x)


def task():
    import problems

    return problems.make("mnist1d", test_samples=0)


def controlnet_epoch(problem, controls, gradient="adjoint"):
    """``(run, compile_s)``: one epoch per call through the driver's compiled loop."""
    import optax

    import solvers

    from .peers import driver_calls

    gd = solvers.GradientDescent(optax.adam(LR), batch_size=BATCH, gradient=gradient)
    run, compile_s, _ = driver_calls(gd, problem, per_call=EPOCH_STEPS, controls=controls)
    return run, compile_s


# -- the peers' shared maths (written from the formula, not from controlnet) ------------------

def _conv(z, K):
    import jax

    return jax.lax.conv_general_dilated(z, K, (1,), "SAME", dimension_numbers=("NCH", "OIH", "NCH"))


def _loss_terms(p, x, y, h, l2, rl2, ll2):
    """``J`` of params ``p = {lift_K, lift_b, K, b, A, c}`` on the batch ``(x, y)``."""
    import jax
    import jax.numpy as jnp

    z = _conv(x, p["lift_K"]) + p["lift_b"][:, None]

    def layer(z, kb):
        K, b = kb
        return z + h * jnp.tanh(_conv(z, K) + b[:, None]), None

    z, _ = jax.lax.scan(layer, z, (p["K"], p["b"]))
    logits = z.reshape(z.shape[0], -1) @ p["A"].T + p["c"]
    ce = jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0])
    sq = lambda *a: 0.5 * sum(jnp.sum(t**2) for t in a)  # noqa: E731
    return ce + h * l2 * sq(p["K"], p["b"]) + rl2 * sq(p["A"], p["c"]) + ll2 * sq(p["lift_K"], p["lift_b"])


def _weights(problem, controls):
    c = controls
    return {"lift_K": c.lift["K"], "lift_b": c.lift["b"], "K": c.theta["K"], "b": c.theta["b"],
            "A": c.w["A"], "c": c.w["c"]}


def _costs(problem):
    return float(problem.h), float(problem.l2), float(problem.readout_l2), float(problem.lift_l2)


def _labels(problem):
    import jax.numpy as jnp

    y = jnp.asarray(problem.y)
    return y.astype(jnp.int32) if y.ndim == 1 else jnp.argmax(y, axis=-1).astype(jnp.int32)


def equinox_epoch(problem, controls, one_call):
    """``(run, compile_s)``; ``one_call``: the epoch in one jitted scan, else a call per step."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    h, l2, rl2, ll2 = _costs(problem)
    w = _weights(problem, controls)

    class ConvODENet(eqx.Module):
        lift_K: jax.Array
        lift_b: jax.Array
        K: jax.Array
        b: jax.Array
        A: jax.Array
        c: jax.Array

        def loss(self, x, y):
            return _loss_terms(vars(self), x, y, h, l2, rl2, ll2)

    net = ConvODENet(**w)
    x, y, S = jnp.asarray(problem.x), _labels(problem), problem.S
    opt = optax.adam(LR)

    def step(net, opt_state, key):
        idx = jax.random.choice(key, S, (BATCH,), replace=False)
        J, g = eqx.filter_value_and_grad(lambda n: n.loss(x[idx], y[idx]))(net)
        updates, opt_state = opt.update(g, opt_state, net)
        return eqx.apply_updates(net, updates), opt_state, J

    state = [net, opt.init(eqx.filter(net, eqx.is_array)), jax.random.PRNGKey(0)]
    if one_call:
        @eqx.filter_jit
        def epoch(net, opt_state, key):
            def body(c, k):
                n, o, J = step(c[0], c[1], k)
                return (n, o), J

            (net, opt_state), Js = jax.lax.scan(body, (net, opt_state), jax.random.split(key, EPOCH_STEPS))
            return net, opt_state, Js[0]

        def run():
            state[2], sub = jax.random.split(state[2])
            state[0], state[1], J = epoch(state[0], state[1], sub)
            return _block(J)
    else:
        jstep = eqx.filter_jit(step)

        def run():
            for _ in range(EPOCH_STEPS):
                state[2], sub = jax.random.split(state[2])
                state[0], state[1], J = jstep(state[0], state[1], sub)
            return _block(J)

    t = time.perf_counter()
    run()
    return run, time.perf_counter() - t, net.loss(x[:BATCH], y[:BATCH])


def flax_epoch(problem, controls):
    """``(run, compile_s, J0)``: flax.linen, the epoch in one jitted scan."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    h, l2, rl2, ll2 = _costs(problem)
    w = _weights(problem, controls)
    N, C, _, k = w["K"].shape

    class ConvODENet(nn.Module):
        @nn.compact
        def __call__(self, x):  # x (B, 1, L) in NCH; flax convs are channels-last (NHC)
            lift = nn.Conv(C, (k,), padding="SAME", name="lift")
            z = lift(x.transpose(0, 2, 1))
            K = self.param("K", nn.initializers.zeros, (N, k, C, C))  # HIO per layer
            b = self.param("b", nn.initializers.zeros, (N, C))

            def layer(z, kb):
                Kk, bk = kb
                dz = jax.lax.conv_general_dilated(z, Kk, (1,), "SAME", dimension_numbers=("NHC", "HIO", "NHC"))
                return z + h * jnp.tanh(dz + bk), None

            z, _ = jax.lax.scan(layer, z, (K, b))
            z = z.transpose(0, 2, 1).reshape(z.shape[0], -1)  # flatten in (C, L) order as controlnet
            return nn.Dense(10, name="readout")(z)

    model = ConvODENet()
    # controlnet's weights in flax's layouts: OIH -> HIO, A (10, C·L) -> kernel (C·L, 10).
    params = {"params": {"lift": {"kernel": jnp.transpose(w["lift_K"], (2, 1, 0)), "bias": w["lift_b"]},
                         "K": jnp.transpose(w["K"], (0, 3, 2, 1)), "b": w["b"],
                         "readout": {"kernel": w["A"].T, "bias": w["c"]}}}

    def loss(params, x, y):
        logits = model.apply(params, x)
        ce = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])
        p = params["params"]
        sq = lambda *a: 0.5 * sum(jnp.sum(t**2) for t in a)  # noqa: E731
        return (ce + h * l2 * sq(p["K"], p["b"]) + rl2 * sq(p["readout"]["kernel"], p["readout"]["bias"])
                + ll2 * sq(p["lift"]["kernel"], p["lift"]["bias"]))

    x, y, S = jnp.asarray(problem.x), _labels(problem), problem.S
    opt = optax.adam(LR)

    @jax.jit
    def epoch(params, opt_state, key):
        def body(c, k):
            params, opt_state = c
            idx = jax.random.choice(k, S, (BATCH,), replace=False)
            J, g = jax.value_and_grad(loss)(params, x[idx], y[idx])
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), J

        (params, opt_state), Js = jax.lax.scan(body, (params, opt_state), jax.random.split(key, EPOCH_STEPS))
        return params, opt_state, Js[0]

    state = [params, opt.init(params), jax.random.PRNGKey(0)]

    def run():
        state[2], sub = jax.random.split(state[2])
        state[0], state[1], J = epoch(state[0], state[1], sub)
        return _block(J)

    t = time.perf_counter()
    run()
    return run, time.perf_counter() - t, loss(params, x[:BATCH], y[:BATCH])


def contenders(problem, controls):
    """name -> (run, compile_s, J0 or None); J0 on the first 128 samples (the agreement check)."""
    import controlnet as cn

    out = {}
    for name, gradient in (("controlnet", "adjoint"), ("controlnet (autodiff)", "autodiff")):
        run, compile_s = controlnet_epoch(problem, controls, gradient)
        out[name] = (run, compile_s, None)
    batch = problem.replace_data(problem.x[:BATCH], problem.y[:BATCH])
    J_ref = float(cn.objective_value(batch, controls))
    out["equinox, epoch in one scan"] = equinox_epoch(problem, controls, one_call=True)
    out["equinox, step per call"] = equinox_epoch(problem, controls, one_call=False)
    try:
        out["flax.linen, epoch in one scan"] = flax_epoch(problem, controls)
    except ImportError:
        pass
    return out, J_ref


def time_interleaved(runs: dict, rounds: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    times = {k: [] for k in runs}
    names = list(runs)
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            t = time.perf_counter()
            runs[names[i]]()
            times[names[i]].append(time.perf_counter() - t)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of one epoch each (default: 9)")
    args = ap.parse_args(argv)
    import jax

    t = task()
    problem = t.problem
    controls = problem.init_controls(jax.random.PRNGKey(0))
    built, J_ref = contenders(problem, controls)
    for name, (_, _, J0) in built.items():
        if J0 is not None and not abs(float(J0) - J_ref) <= 1e-5 * abs(J_ref):
            raise SystemExit(f"{name} computes J = {float(J0)!r} on the check batch, controlnet {J_ref!r}: "
                             "not the same objective")
    runs = {k: v[0] for k, v in built.items()}
    for r in runs.values():  # one warm epoch each before timing
        r()
    times = time_interleaved(runs, args.rounds)
    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med["controlnet"]
    rows = {k: {"epoch_seconds": med[k], "min_seconds": float(np.min(times[k])),
                "compile_seconds": float(built[k][1]), "ratio_vs_controlnet": med[k] / base} for k in med}
    print(f"MNIST-1D conv ResNet, one epoch = {EPOCH_STEPS} Adam steps on minibatches of {BATCH} "
          f"(median of {args.rounds} interleaved rounds; ratio = t / t_controlnet)")
    print(f"{'contender':34s} {'epoch s':>9s} {'min s':>8s} {'compile s':>10s} {'ratio':>7s}")
    for k, r in rows.items():
        print(f"{k:34s} {r['epoch_seconds']:9.3f} {r['min_seconds']:8.3f} {r['compile_seconds']:10.2f} "
              f"{r['ratio_vs_controlnet']:7.2f}")
    peers = [k for k in rows if not k.startswith("controlnet")]
    best = min(peers, key=lambda k: med[k])
    import equinox

    versions = {"jax": jax.__version__, "equinox": equinox.__version__, "python": platform.python_version()}
    try:
        import flax

        versions["flax"] = flax.__version__
    except ImportError:
        pass
    result = {
        "problem": "mnist1d: lift 1->32 (k5), 8 layers tanh conv 32->32 (k5), T=2, flatten read-out, "
                   "cross-entropy, l2 1e-4, readout/lift l2 1e-3, float32",
        "protocol": f"one epoch = {EPOCH_STEPS} Adam(5e-3) steps, batch {BATCH}; median of {args.rounds} "
                    "interleaved shuffled rounds after one warm epoch",
        "J_check_batch": J_ref, "rows": rows, "best_peer": best,
        "controlnet_over_best_peer": base / med[best],
        "controlnet_le_1.0x_best_peer": bool(base <= med[best]),
        "versions": versions, "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
    }
    print(f"controlnet / best peer ({best}): {base / med[best]:.2f}x")
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["conv"] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS} (key 'conv')")


if __name__ == "__main__":
    main()
