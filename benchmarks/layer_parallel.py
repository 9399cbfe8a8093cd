"""Layer-parallel gradients by MGRIT (:mod:`controlnet.layer_parallel`): convergence, training,
time per step on 1, 2 and 4 host devices, and a work/communication model of the speedup.

    PYTHONPATH=. python -m benchmarks.layer_parallel            # full (ring N = 256; N up to 1024)
    PYTHONPATH=. python -m benchmarks.layer_parallel --quick    # small sizes, a smoke run

Writes ``benchmarks/results.json`` key ``"layer_parallel"`` (the other keys are kept):

- ``convergence``: ring, ``N`` layers, coarsening ``c``: the state and co-state residual per
  FCF iteration, and the relative gradient error ``‖g_MGRIT − g_adjoint‖/‖g_adjoint‖`` after 1,
  2 and 4 iterations;
- ``curves``: the true loss ``J`` (serial forward pass) every few steps of Adam with the serial
  adjoint gradient and with 2 MGRIT iterations, equal steps and learning rate;
- ``timing``: per device count ``P`` (``XLA_FLAGS=--xla_force_host_platform_device_count=P``,
  a subprocess each), per ``N``: seconds per gradient, serial adjoint and MGRIT with the layers
  over ``P`` devices, side by side in one process; and the unit costs the model needs: one fine
  layer forward+backward ``t_f``, one coarse step forward+backward ``t_c``, one transfer of a
  state between two devices ``t_x``, and ``t_fb(P)``, one fine layer as MGRIT's F-sweep runs it
  on one of ``P`` devices (``c`` layers over its batch of ``N/(cP)`` intervals at once: for small
  states a batch costs little more than one, so ``t_fb`` falls with the batch);
- ``curves_mnist1d`` (``--mnist1d``): the same on MNIST-1D, ``N = 64``, a convolutional ResNet;
- ``model``: the predicted speedup at ``P = 1..64`` and the crossover device count, from

      T_serial   = N t_f
      T_MGRIT(P) = (2 s + 1) (N/P) t_fb(P) + (s + 1) (N/c) t_c + s (N/(cP)) t_c
                   + 2 s (2 + ⌈log₂ P⌉) t_x

  per gradient (state + co-state solves): ``s`` iterations, each with ``s_F = 2`` fine sweeps
  (FCF) over a device's ``N/P`` layers plus the final sweep, a serial coarse solve over all
  ``N/c`` intervals (and the initial guess), the parallel coarse steps ``G(U_j)``, and in each of
  the two solves two neighbour transfers and a gather of the ``N/c`` coarse values (``⌈log₂ P⌉``
  rounds, latency-bound for these small states). Assumptions: one device per core, ``t_f``, ``t_c``,
  ``t_x`` independent of ``P`` (``t_x`` measured between 2 simulated devices), no overlap of
  communication and work. Checked against the measured 1-, 2- and 4-device ratios.

Every timing has the load average beside it. This machine has 2 cores: the 4-device numbers run
4 simulated devices on 2 cores, so they measure overhead, not parallel speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results.json")
KEY = "layer_parallel"


def _setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _timeit(f, *args, repeats=5):
    import jax

    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _rel(a, b):
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(np.asarray(y) ** 2)) for y in lb)
    return (num / den) ** 0.5


def convergence(N, c, samples):
    jax = _setup()
    import controlnet as cn
    import problems
    from controlnet.layer_parallel import MGRIT, mgrit_gradient

    p = problems.make("ring", samples=samples, layers=N, test_samples=0).problem
    ctl = p.init_controls(jax.random.PRNGKey(0))
    _, g, _ = jax.jit(lambda c_: cn.value_and_gradient(p, c_))(ctl)
    out = {"problem": f"ring N={N} S={samples}", "coarsening": c, "relaxation": "FCF", "gradient_error": {}}
    for it in (1, 2, 4, 8):
        _, g2, _, info = jax.jit(lambda c_: mgrit_gradient(p, c_, MGRIT(iterations=it, coarsening=c)))(ctl)
        if it in (1, 2, 4):
            out["gradient_error"][str(it)] = _rel(g2, g)
    out["state_residuals"] = np.asarray(info.state_residuals).tolist()
    out["costate_residuals"] = np.asarray(info.costate_residuals).tolist()
    print("convergence", json.dumps(out), flush=True)
    return out


def curves(N, c, samples, steps, every, name="ring", **make):
    jax = _setup()
    import controlnet as cn
    import problems
    import solvers
    from solvers.layer_parallel import LayerParallel

    p = problems.make(name, samples=samples, layers=N, test_samples=0, **make).problem
    c0 = p.init_controls(jax.random.PRNGKey(0))

    def train(solver):
        state = solver.init(p, c0, key=jax.random.PRNGKey(0))

        def block(s, _):
            s = jax.lax.fori_loop(0, every, lambda i, s: solver.step(p, s)[0], s)
            return s, cn.objective_value(p, s.controls)

        return jax.lax.scan(block, state, None, length=steps // every)[1]

    out = {"problem": f"{name} N={N} S={samples} {make}", "optimizer": "Adam lr=2e-2", "every": every,
           "mgrit": {"iterations": 2, "coarsening": c, "relaxation": "FCF"}}
    out["serial"] = np.asarray(jax.jit(lambda: train(solvers.GradientDescent(lr=2e-2)))()).tolist()
    lp = LayerParallel(iterations=2, coarsening=c)
    out["layer_parallel"] = np.asarray(jax.jit(lambda: train(solvers.GradientDescent(lr=2e-2, gradient=lp)))()).tolist()
    out["final_ratio"] = out["layer_parallel"][-1] / out["serial"][-1]
    print("curves", json.dumps(out), flush=True)
    return out


def timing(Ns, c, samples, iterations):
    """In a process with its own device count: seconds per gradient and the unit costs."""
    jax = _setup()
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import controlnet as cn
    import problems
    from controlnet.layer_parallel import MGRIT, coarse_step, mgrit_gradient
    from controlnet.state import scan_step

    P = len(jax.devices())
    mesh = None if P == 1 else Mesh(np.asarray(jax.devices()), ("layers",))
    out = {"devices": P, "samples": samples, "coarsening": c, "iterations": iterations, "N": {}}
    for N in Ns:
        p = problems.make("ring", samples=samples, layers=N, test_samples=0).problem
        ctl = p.init_controls(jax.random.PRNGKey(0))
        opts = MGRIT(iterations=iterations, coarsening=c, mesh=mesh)
        serial = jax.jit(lambda c_: cn.value_and_gradient(p, c_, block=None)[1])
        lp = jax.jit(lambda c_: mgrit_gradient(p, c_, opts)[1])
        row = {"loadavg_before": os.getloadavg()[0]}
        row["serial_s"] = _timeit(serial, ctl)
        row["mgrit_s"] = _timeit(lp, ctl)
        row["ratio_mgrit_over_serial"] = row["mgrit_s"] / row["serial_s"]
        row["loadavg_after"] = os.getloadavg()[0]
        out["N"][str(N)] = row
        print("timing", P, N, json.dumps(row), flush=True)
    # Unit costs, from long scans of one map (one device): fine and coarse step, forward+backward.
    N = max(Ns)
    p = problems.make("ring", samples=samples, layers=N, test_samples=0).problem
    ctl = p.init_controls(jax.random.PRNGKey(0))
    z0T = cn.to_scan(p, p.z0())

    def chain(step):
        def run(th):
            zN = jax.lax.scan(lambda z, t: (step(z, t), None), z0T, th)[0]
            return jnp.sum(zN)
        return jax.jit(jax.grad(run))

    out["t_f"] = _timeit(chain(lambda z, t: scan_step(p, z, t)), ctl.theta) / N
    out["t_c"] = _timeit(chain(lambda z, t: coarse_step(p, z, t, c * p.h)), ctl.theta) / N
    out["t_f_batch"] = _batched_sweep_costs(jax, p, ctl.theta, z0T, c)
    if P > 1:
        out["t_x"] = _transfer_cost(jax, mesh, z0T)
    out["loadavg"] = os.getloadavg()[0]
    print("units", json.dumps({k: out[k] for k in ("t_f", "t_c", "t_x") if k in out}), flush=True)
    return out


def _batched_sweep_costs(jax, p, theta, z0T, c):
    """Seconds per layer (forward+backward) of an F-sweep as MGRIT runs it on one device:
    ``c`` layers over a batch of ``b`` intervals at once, for ``b = N/c, N/(2c), .., 1``."""
    import jax.numpy as jnp

    from controlnet.state import scan_step

    N = jax.tree_util.tree_leaves(theta)[0].shape[0]
    out, b = {}, N // c
    while b >= 1:
        th = jax.tree_util.tree_map(lambda a: a[: b * c].reshape((b, c) + a.shape[1:]), theta)
        zs = jnp.broadcast_to(z0T, (b,) + z0T.shape)

        def sweep(th, zs):
            one = lambda z, t: jax.lax.scan(lambda u, tk: (scan_step(p, u, tk), None), z, t)[0]  # noqa: E731
            return jnp.sum(jax.vmap(one)(zs, th))

        out[str(b)] = _timeit(jax.jit(jax.grad(sweep)), th, zs) / (b * c)
        b //= 2
    return out


def _transfer_cost(jax, mesh, z):
    """Seconds for one neighbour ``ppermute`` of a state, from a loop of 200 of them."""
    from jax.sharding import PartitionSpec as P

    n = mesh.shape["layers"]
    pairs = [(i, (i + 1) % n) for i in range(n)]
    reps = 200

    def body(a):
        return jax.lax.fori_loop(0, reps, lambda i, b: jax.lax.ppermute(b, "layers", pairs) * 1.0000001, a)

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("layers"), out_specs=P("layers"), check_vma=False))
    stacked = np.broadcast_to(np.asarray(z), (n,) + z.shape).reshape((n * z.shape[0],) + z.shape[1:])
    return _timeit(f, stacked) / reps


def model(units, N, c, s, Ps):
    """Predicted speedup ``T_serial / T_MGRIT(P)`` (module doc) for each ``P``; the fine layers
    of MGRIT at the batched cost ``t_f_batch[b]`` of a device's ``b = N/(cP)`` intervals (the
    nearest measured batch)."""
    t_f, t_c, t_x = units["t_f"], units["t_c"], units.get("t_x", 0.0)
    batch = units["t_f_batch"]
    m = N / c
    out = {}
    for P in Ps:
        b = max(1.0, m / P)
        t_fb = batch[min(batch, key=lambda k: abs(np.log(int(k) / b)))]
        comm = 2 * s * (2 + np.ceil(np.log2(P))) * t_x if P > 1 else 0.0
        t = (2 * s + 1) * (N / P) * t_fb + (s + 1) * m * t_c + s * (m / P) * t_c + comm
        out[str(P)] = N * t_f / t
    return out


def summarize(res, Ns, c, s=2):
    """The model's unit costs (one device's ``t_f, t_c, t_fb``; ``t_x`` between 2 devices), its
    predicted speedups and crossover device counts, beside the measured ones."""
    one = res["timing"]["1"]
    units = {"t_f": one["t_f"], "t_c": one["t_c"], "t_f_batch": one["t_f_batch"],
             "t_x": res["timing"].get("2", {}).get("t_x", 0.0)}
    Ps = [1, 2, 4, 8, 16, 32, 64]
    out = {"units": units, "iterations": s, "coarsening": c,
           "note": "4 simulated devices share this machine's 2 cores", "speedup": {},
           "crossover_devices": {}, "measured_speedup": {}}
    for N in Ns:
        out["speedup"][str(N)] = model(units, N, c, s, Ps)
        out["crossover_devices"][str(N)] = next(
            (P for P in range(1, 4097) if model(units, N, c, s, [P])[str(P)] > 1), None)
        out["measured_speedup"][str(N)] = {
            P: 1 / t["N"][str(N)]["ratio_mgrit_over_serial"] for P, t in res["timing"].items()}
    return out


def _sub(P, args):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={P}", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "benchmarks.layer_parallel", "--timing-only", "--Ns", *map(str, args.Ns),
           "--coarsening", str(args.coarsening), "--samples", str(args.samples)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--Ns", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--coarsening", type=int, default=8)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--remodel", action="store_true", help="recompute the model from the stored timings")
    ap.add_argument("--mnist1d", action="store_true", help="only the MNIST-1D loss curves (N = 64), "
                    "added to the existing entry")
    args = ap.parse_args(argv)
    if args.remodel:
        data = json.loads(RESULTS.read_text())
        data[KEY]["model"] = summarize(data[KEY], args.Ns, args.coarsening)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(data[KEY]["model"], indent=1))
        return
    if args.mnist1d:
        data = json.loads(RESULTS.read_text())
        data[KEY]["curves_mnist1d"] = curves(64, 4, 256, steps=100, every=10, name="mnist1d", width=4)
        data[KEY]["curves_mnist1d"]["loadavg"] = os.getloadavg()
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
        return
    if args.timing_only:
        print(json.dumps(timing(args.Ns, args.coarsening, args.samples, iterations=2)))
        return
    if args.quick:
        args.Ns = [32, 64]
    N_ring = 64 if args.quick else 256
    res = {"machine": f"{os.cpu_count()} cores, shared; load averages beside each timing",
           "loadavg_at_start": os.getloadavg()}
    res["convergence"] = convergence(N_ring, 4, args.samples)
    res["curves"] = curves(N_ring, 4, args.samples, steps=40 if args.quick else 200, every=10)
    res["timing"] = {str(P): _sub(P, args) for P in args.devices}
    res["model"] = summarize(res, args.Ns, args.coarsening)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[KEY] = res
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(res["model"], indent=1))
    print(f"wrote {RESULTS} (key {KEY!r})")


if __name__ == "__main__":
    main()
