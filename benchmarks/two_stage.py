"""One MNIST-1D epoch of the two-stage conv net against the one-stage net, in one run.

- one stage (``problems.make("mnist1d")``): a learned lift to 32 channels, 8 residual conv layers
  at length 40, flattened read-out;
- two stages (``problems.make("mnist1d_2stage")``): the lift to 32 channels, 4 layers at length
  40, 2x average pooling and a 1x1 convolution to 64 channels, 2 layers at length 20, flattened
  read-out (the same 1,280 read-out inputs).

Both with gradient descent as ``controlnet train`` runs them (Adam, learning rate 5e-3,
minibatches of 128, adjoint gradient, float32); an epoch is 32 steps (4,096 samples) in one
compiled ``lax.scan``. Compile timed apart; then ``rounds`` rounds of one epoch each, the order
alternating; the median epoch time and the ratio two-stage / one-stage (< 1: the two-stage net is
faster), with the load average beside them.

    python -m benchmarks.two_stage [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax

import problems
import solvers

EPOCH_STEPS = 32


def _epoch_fn(solver):
    @jax.jit
    def epoch(problem, state):
        def body(s, _):
            s, info = solver.step(problem, s)
            return s, info["loss"]

        return jax.lax.scan(body, state, None, length=EPOCH_STEPS)

    return epoch


def main(rounds: int = 5) -> dict:
    solver = solvers.GradientDescent(lr=5e-3, batch_size=128)
    nets = {}
    for name in ("mnist1d", "mnist1d_2stage"):
        p = problems.make(name, test_samples=0).problem
        c = jax.jit(lambda p, k: p.init_controls(k))(p, jax.random.PRNGKey(0))
        state, epoch = solver.init(p, c, key=jax.random.PRNGKey(0)), _epoch_fn(solver)
        t = time.perf_counter()
        state = jax.block_until_ready(epoch(p, state)[0])
        print(f"{name}: compile + first epoch {time.perf_counter() - t:.1f} s, load {os.getloadavg()}", flush=True)
        nets[name] = [p, state, epoch, []]
    for r in range(rounds):
        for name in (list(nets) if r % 2 == 0 else list(nets)[::-1]):
            p, state, epoch, times = nets[name]
            t = time.perf_counter()
            nets[name][1] = jax.block_until_ready(epoch(p, state)[0])
            times.append(time.perf_counter() - t)
        print(f"round {r}: " + ", ".join(f"{n} {v[3][-1]:.2f} s" for n, v in nets.items())
              + f", load {os.getloadavg()}", flush=True)
    med = {n: statistics.median(v[3]) for n, v in nets.items()}
    out = {"epoch_seconds": med, "ratio_two_over_one": med["mnist1d_2stage"] / med["mnist1d"],
           "rounds": rounds, "load": os.getloadavg()}
    print(out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    main(ap.parse_args().rounds)
