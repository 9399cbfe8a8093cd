"""One epoch of the convolutional ResNets (MNIST-1D, digits as images), controlnet against
equinox, flax and hand-written JAX, in one run, with the epoch's GFLOP/s against the machine's
float32 matrix-product rate measured in the same run.

The network (``problems.make("mnist1d")``): a learned lift ``z_0 = K_0 ∗ x + b_0`` from 1 to 32
channels (kernel 5), 8 residual layers ``z_{k+1} = z_k + h tanh(K_k ∗ z_k + b_k)`` (32 → 32
channels, kernel 5, same padding, ``h = T/N = 0.25``), the state ``(32, 40)`` flattened into a
linear read-out to 10 classes, softmax cross-entropy;
``J = mean ℓ + h Σ_k ½α‖θ_k‖² + ½α_w‖w‖² + ½α_λ‖φ‖²`` with ``α = 1e-4``, ``α_w = α_λ = 1e-3``;
Adam with learning rate ``5e-3``, minibatches of 128 drawn without replacement, float32. An epoch
is ``EPOCH_STEPS = 32`` steps (4,096 samples of the 4,000). Every contender starts from
controlnet's initial weights and computes the same ``J`` (checked on one minibatch before timing).
The second task, digits as images (``problems.make("digits_image")``): 1,347 images ``(1, 8, 8)``,
a 3 × 3 lift to 16 channels, 6 layers of 3 × 3 convolutions, the same losses; an epoch is 11
steps of 128.

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
  parameters scanned (flax's channels-last layout), ``jax.value_and_grad``, optax Adam, the epoch
  in one ``jax.jit``'d scan;
- ``hand-written JAX, matmul conv``: the equinox row's program in plain JAX with the convolution
  written as controlnet's CPU formulation is (the windows gathered channels-last, one GEMM,
  rematerialized in the backward pass): what a user gets by writing that convolution by hand,
  so the row says where controlnet's speed comes from.

Rates: the epoch's floating-point work is ``3 ×`` the forward pass's multiply-adds (the backward
pass costs two forward passes) counted as 2 flops each, over the lift, the layers and the read-out;
GFLOP/s is that work over the epoch's median time, and the fraction is against a float32
``1024 × 1024`` matrix product timed in the same rounds.

Protocol as in ``benchmarks/peers.py``: compile timed apart; then ``rounds`` rounds, each one
epoch of every contender in an order shuffled every round; the median epoch time, and ratios
``t_peer / t_controlnet`` (> 1: controlnet is faster). Writes ``benchmarks/results.json`` key
``"conv"`` (the MNIST-1D numbers at its top level, each task under ``"tasks"``).

    python -m benchmarks.conv_peers [--rounds 9] [--tasks mnist1d digits_image]
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


#: The tasks: ``problems.make`` options, and the epoch's steps of ``BATCH``.
TASKS = {"mnist1d": (dict(test_samples=0), EPOCH_STEPS), "digits_image": ({}, 11)}


def task(name="mnist1d"):
    import problems

    return problems.make(name, **TASKS[name][0])


def epoch_flops(problem, steps) -> float:
    """``3 ×`` the forward pass's multiply-adds (2 flops each) over ``steps × BATCH`` samples."""
    space = int(np.prod(problem.state_shape[1:]))
    C, c_in = problem.state_shape[0], problem.x.shape[1]
    k = problem.dynamics.kernel ** problem.dynamics.ndim
    lift_k = problem.lift.kernel ** problem.dynamics.ndim
    n_out = problem.init_controls(__import__("jax").random.PRNGKey(0)).w["A"].shape[0]
    per_sample = space * (c_in * C * lift_k + problem.N * C * C * k) + C * space * n_out
    return 3 * 2 * per_sample * steps * BATCH


def controlnet_epoch(problem, controls, gradient="adjoint", steps=EPOCH_STEPS):
    """``(run, compile_s)``: one epoch per call of the driver's compiled loop, as ``solvers.solve``
    compiles and calls it (``steps`` iterations per call)."""
    import jax
    import optax

    import solvers
    from solvers.driver import _call_args, _compile, _unpack
    from solvers.protocol import as_argument

    gd = solvers.GradientDescent(optax.adam(LR), batch_size=BATCH, gradient=gradient)
    held = [gd.init(problem, controls, key=jax.random.PRNGKey(0))]
    call, names, compile_s = _compile(as_argument(gd), problem, held[0])
    args = _call_args(steps)

    def run():
        held[0], rows = call(problem, held[0], *args)
        return _unpack(names, rows)[0][0]["loss"]

    return run, compile_s


# -- the peers' shared maths (written from the formula, not from controlnet) ------------------

def _conv(z, K):
    import jax

    specs = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW")}[K.ndim - 2]
    return jax.lax.conv_general_dilated(z, K, (1,) * (K.ndim - 2), "SAME", dimension_numbers=specs)


def _conv_gemm(z, K):
    """``K ∗ z`` by hand: the ``wⁿ`` shifted windows stacked channels-last, one GEMM; the windows
    gathered again in the backward pass (``jax.checkpoint``) instead of kept."""
    import itertools

    import jax
    import jax.numpy as jnp

    def f(z, K):
        B, space, window = z.shape[0], z.shape[2:], K.shape[2:]
        zp = jnp.pad(jnp.moveaxis(z, 1, -1), [(0, 0)] + [(w // 2, w // 2) for w in window] + [(0, 0)])
        P = jnp.stack([zp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(off, space))]
                       for off in itertools.product(*(range(w) for w in window))], axis=-2)
        Kt = jnp.moveaxis(K, (0, 1), (-1, -2)).reshape(-1, K.shape[0])
        out = P.reshape(B * int(np.prod(space)), -1) @ Kt
        return jnp.moveaxis(out.reshape((B,) + space + (K.shape[0],)), -1, 1)

    return jax.checkpoint(f, policy=jax.checkpoint_policies.nothing_saveable)(z, K)


def _loss_terms(p, x, y, h, l2, rl2, ll2, conv=_conv):
    """``J`` of params ``p = {lift_K, lift_b, K, b, A, c}`` on the batch ``(x, y)``."""
    import jax
    import jax.numpy as jnp

    nd = x.ndim - 2
    z = conv(x, p["lift_K"]) + p["lift_b"].reshape((-1,) + (1,) * nd)

    def layer(z, kb):
        K, b = kb
        return z + h * jnp.tanh(conv(z, K) + b.reshape((-1,) + (1,) * nd)), None

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


def equinox_epoch(problem, controls, one_call, steps=EPOCH_STEPS, conv=_conv):
    """``(run, compile_s, J0)``; ``one_call``: the epoch in one jitted scan, else a call per step."""
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
            return _loss_terms(vars(self), x, y, h, l2, rl2, ll2, conv)

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

            (net, opt_state), Js = jax.lax.scan(body, (net, opt_state), jax.random.split(key, steps))
            return net, opt_state, Js[0]

        def run():
            state[2], sub = jax.random.split(state[2])
            state[0], state[1], J = epoch(state[0], state[1], sub)
            return _block(J)
    else:
        jstep = eqx.filter_jit(step)

        def run():
            for _ in range(steps):
                state[2], sub = jax.random.split(state[2])
                state[0], state[1], J = jstep(state[0], state[1], sub)
            return _block(J)

    t = time.perf_counter()
    run()
    return run, time.perf_counter() - t, net.loss(x[:BATCH], y[:BATCH])


def flax_epoch(problem, controls, steps=EPOCH_STEPS):
    """``(run, compile_s, J0)``: flax.linen, the epoch in one jitted scan, channels-last."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    h, l2, rl2, ll2 = _costs(problem)
    w = _weights(problem, controls)
    N, C = w["K"].shape[:2]
    window, lift_window = w["K"].shape[3:], w["lift_K"].shape[2:]
    nd = len(window)
    specs = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC")}[nd]
    n_out = w["A"].shape[0]

    class ConvODENet(nn.Module):
        @nn.compact
        def __call__(self, x):  # x (B, 1, *space) channels-first; flax convs are channels-last
            lift = nn.Conv(C, lift_window, padding="SAME", name="lift")
            z = lift(jnp.moveaxis(x, 1, -1))
            K = self.param("K", nn.initializers.zeros, (N,) + window + (C, C))  # (H, W,) I, O per layer
            b = self.param("b", nn.initializers.zeros, (N, C))

            def layer(z, kb):
                Kk, bk = kb
                dz = jax.lax.conv_general_dilated(z, Kk, (1,) * nd, "SAME", dimension_numbers=specs)
                return z + h * jnp.tanh(dz + bk), None

            z, _ = jax.lax.scan(layer, z, (K, b))
            z = jnp.moveaxis(z, -1, 1).reshape(z.shape[0], -1)  # flatten in (C, *space) order as controlnet
            return nn.Dense(n_out, name="readout")(z)

    model = ConvODENet()
    # controlnet's weights in flax's layouts: O I *window -> *window I O, A (n, C·|space|) -> kernel (C·|space|, n).
    to_flax = lambda K: jnp.moveaxis(K, (0, 1), (-1, -2))  # noqa: E731
    params = {"params": {"lift": {"kernel": to_flax(w["lift_K"]), "bias": w["lift_b"]},
                         "K": jax.vmap(to_flax)(w["K"]), "b": w["b"],
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

        (params, opt_state), Js = jax.lax.scan(body, (params, opt_state), jax.random.split(key, steps))
        return params, opt_state, Js[0]

    state = [params, opt.init(params), jax.random.PRNGKey(0)]

    def run():
        state[2], sub = jax.random.split(state[2])
        state[0], state[1], J = epoch(state[0], state[1], sub)
        return _block(J)

    t = time.perf_counter()
    run()
    return run, time.perf_counter() - t, loss(params, x[:BATCH], y[:BATCH])


def contenders(problem, controls, steps=EPOCH_STEPS):
    """name -> (run, compile_s, J0 or None); J0 on the first 128 samples (the agreement check)."""
    import controlnet as cn

    out = {}
    for name, gradient in (("controlnet", "adjoint"), ("controlnet (autodiff)", "autodiff")):
        run, compile_s = controlnet_epoch(problem, controls, gradient, steps)
        out[name] = (run, compile_s, None)
    batch = problem.replace_data(problem.x[:BATCH], problem.y[:BATCH])
    J_ref = float(cn.objective_value(batch, controls))
    out["equinox, epoch in one scan"] = equinox_epoch(problem, controls, True, steps)
    out["equinox, step per call"] = equinox_epoch(problem, controls, False, steps)
    try:
        out["flax.linen, epoch in one scan"] = flax_epoch(problem, controls, steps)
    except ImportError:
        pass
    out["hand-written JAX, matmul conv"] = equinox_epoch(problem, controls, True, steps, conv=_conv_gemm)
    return out, J_ref


def matmul_run(n: int = 1024):
    """``(run, flops)``: one float32 ``n × n × n`` matrix product per call, ten per run."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    _block(f(a))

    def run():
        for _ in range(10):
            out = f(a)
        return _block(out)

    return run, 10 * 2.0 * n**3


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


def measure(name: str, rounds: int) -> dict:
    """One task's rows: compile, median epoch, ratio, GFLOP/s and fraction of the matmul rate."""
    import os

    import jax

    opts, steps = TASKS[name]
    problem = task(name).problem
    controls = problem.init_controls(jax.random.PRNGKey(0))
    built, J_ref = contenders(problem, controls, steps)
    for k, (_, _, J0) in built.items():
        if J0 is not None and not abs(float(J0) - J_ref) <= 1e-5 * abs(J_ref):
            raise SystemExit(f"{k} computes J = {float(J0)!r} on the check batch, controlnet {J_ref!r}: "
                             "not the same objective")
    runs = {k: v[0] for k, v in built.items()}
    mm, mm_flops = matmul_run()
    runs["float32 matmul 1024^3 x10"] = mm
    for r in runs.values():  # one warm call each before timing
        r()
    load = os.getloadavg()
    times = time_interleaved(runs, rounds)
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    mm_rate = mm_flops / float(np.median(times.pop("float32 matmul 1024^3 x10"))) / 1e9
    flops = epoch_flops(problem, steps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    base = med["controlnet"]
    rows = {k: {"epoch_seconds": med[k], "min_seconds": float(np.min(times[k])),
                "compile_seconds": float(built[k][1]), "ratio_vs_controlnet": med[k] / base,
                "gflops": flops / med[k] / 1e9, "fraction_of_matmul": flops / med[k] / 1e9 / mm_rate}
            for k in med}
    peers = [k for k in rows if not k.startswith(("controlnet", "hand-written"))]
    best = min(peers, key=lambda k: med[k])
    print(f"{name}: one epoch = {steps} Adam steps on minibatches of {BATCH}, {flops / 1e9:.2f} GFLOP "
          f"(median of {rounds} interleaved rounds; ratio = t / t_controlnet); matmul {mm_rate:.1f} GFLOP/s; "
          f"load average {load[0]:.1f}")
    print(f"{'contender':34s} {'epoch s':>9s} {'compile s':>10s} {'ratio':>7s} {'GFLOP/s':>8s} {'of matmul':>9s}")
    for k, r in rows.items():
        print(f"{k:34s} {r['epoch_seconds']:9.3f} {r['compile_seconds']:10.2f} {r['ratio_vs_controlnet']:7.2f} "
              f"{r['gflops']:8.1f} {r['fraction_of_matmul']:9.1%}")
    print(f"controlnet / best peer ({best}): {base / med[best]:.2f}x")
    p = problem
    return {
        "problem": f"{name}: lift 1->{p.width} (k{p.lift.kernel}), {p.N} layers tanh conv {p.width}->{p.width} "
                   f"(k{p.dynamics.kernel}, {p.dynamics.ndim}-D), flatten read-out, cross-entropy, "
                   f"l2 {p.l2:g}, readout/lift l2 {p.readout_l2:g}/{p.lift_l2:g}, float32",
        "protocol": f"one epoch = {steps} Adam(5e-3) steps, batch {BATCH}; median of {rounds} "
                    "interleaved shuffled rounds after one warm epoch",
        "J_check_batch": J_ref, "rows": rows, "best_peer": best,
        "controlnet_over_best_peer": base / med[best], "epoch_gflop": flops / 1e9,
        "matmul_gflops": mm_rate, "matmul": "float32 1024 x 1024 x 1024, timed in the same rounds",
        "controlnet_fraction_of_matmul": rows["controlnet"]["fraction_of_matmul"],
        "load_average_max": load,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds of one epoch each (default: 9)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                    help="which conv nets (default: all)")
    args = ap.parse_args(argv)
    import equinox
    import jax

    versions = {"jax": jax.__version__, "equinox": equinox.__version__, "python": platform.python_version()}
    try:
        import flax

        versions["flax"] = flax.__version__
    except ImportError:
        pass
    for name in args.tasks:  # each task merged as soon as it is measured (the other tasks' rows kept)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        old = data.get("conv", {})
        tasks = dict(old.get("tasks", {}))
        tasks[name] = measure(name, args.rounds)
        result = dict(tasks.get("mnist1d") or tasks[name])
        result.update(tasks=tasks, versions=versions, machine=platform.machine(), cpus=__import__("os").cpu_count())
        data["conv"] = result
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS} (key 'conv')")


if __name__ == "__main__":
    main()
