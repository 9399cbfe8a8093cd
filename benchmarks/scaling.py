"""Time per gradient step against the number of samples ``S`` and of layers ``N``, and memory.

- ``S`` sweep (``N = 50``) and ``N`` sweep (``S = 1,000``) on the ring at width 3 (the reference
  problem of :mod:`benchmarks.peers` otherwise): the gradient-descent step exactly as
  ``solvers.solve`` runs it, median per step, all sizes interleaved; the log-log slope of time
  against ``S`` and against ``N`` (least squares over the sweep; 1 is linear).
- Memory at ``S = 1e5``, ``N = 1,000``, each in a fresh process (its peak resident set, which
  includes the ~0.3 GB of the Python + JAX runtime): the full path
  (``GradientDescent(checkpoint_block=None)``: every residual of the forward pass kept) and the
  checkpointed one, ``checkpoint_block=B`` (the same Adam step), which keeps only every ``B``-th
  state and recomputes the rest in the backward pass (what the default ``"auto"`` picks there). Both take
  a few Adam steps (their losses are reported) and XLA's own accounting of the compiled step
  (``memory_analysis``) is given too.

    python -m benchmarks.scaling [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.peers import RESULTS, merge_results

S_SWEEP = (1_000, 3_000, 10_000, 30_000, 100_000)
N_SWEEP = (10, 30, 100, 300, 1_000)
BIG = dict(S=100_000, N=1_000)
MEMORY_LIMIT_GB = 2.0


def _problem(S, N):
    import problems

    return problems.make("ring", samples=S, test_samples=0, width=3, layers=N, horizon=5.0,
                         l2=1e-3).problem


def gd_step(problem, block=None, per_call=None):
    """The driver's compiled GD call on ``problem``: ``(run, compile_s, executable)``; ``run()``
    takes ``run.steps`` Adam steps (default: as many per call as ``solvers.solve`` runs) and
    returns the first loss (:func:`benchmarks.peers.driver_calls`).

    ``block`` sets ``GradientDescent(checkpoint_block=block)``: the checkpointed adjoint pass.
    """
    import optax

    import solvers
    from benchmarks.peers import driver_calls

    gd = solvers.GradientDescent(optax.adam(1e-2), checkpoint_block=block or None)
    return driver_calls(gd, problem, per_call)


def _slope(xs, ts):
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def _affine(xs, ts):
    """``t ≈ a + b x`` fitted in relative error: is the cost linear once a fixed per-step cost
    ``a`` is set apart? (A log-log slope below 1 over a range that starts where ``a``
    dominates says only that ``a`` is large against ``b x`` there.)"""
    xs, ts = np.asarray(xs, float), np.asarray(ts, float)
    b, a = np.polyfit(xs, ts, 1, w=1.0 / ts)
    return {"fixed_ms": 1e3 * float(a), "per_unit_us": 1e6 * float(b),
            "max_rel_residual": float(np.max(np.abs(a + b * xs - ts) / ts)),
            "slope_top_three": _slope(xs[-3:], ts[-3:])}


def sweep(rounds=5, per_round=3, log=print) -> dict:
    """Both sweeps, all sizes interleaved; per-step medians and the log-log slopes."""
    configs = [("S", S, 50) for S in S_SWEEP] + [("N", 1_000, N) for N in N_SWEEP]
    runs, compile_s = {}, {}
    for axis, S, N in configs:
        key = (S, N)
        if key not in runs:
            run, compile_s[key], _ = gd_step(_problem(S, N))
            run()  # first execution outside the timings
            runs[key] = run
            log(f"  compiled S={S} N={N} in {compile_s[key]:.1f}s")
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            for _ in range(per_round):
                t = time.perf_counter()
                run()
                times[k].append((time.perf_counter() - t) / run.steps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    s_t = [med[(S, 50)] for S in S_SWEEP]
    n_t = [med[(1_000, N)] for N in N_SWEEP]
    return {
        "S_sweep": {"N": 50, "S": list(S_SWEEP), "median_ms": [1e3 * t for t in s_t],
                    "slope": _slope(S_SWEEP, s_t), "affine": _affine(S_SWEEP, s_t)},
        "N_sweep": {"S": 1_000, "N": list(N_SWEEP), "median_ms": [1e3 * t for t in n_t],
                    "slope": _slope(N_SWEEP, n_t), "affine": _affine(N_SWEEP, n_t)},
        "compile_s": {f"S={S},N={N}": c for (S, N), c in compile_s.items()},
        "steps_per_call": {f"S={S},N={N}": run.steps for (S, N), run in runs.items()},
        "steps_per_size": rounds * per_round,
    }


def one(S, N, block, steps) -> dict:
    """Run ``steps`` Adam steps at ``(S, N)`` in this process; report times, losses, peak memory."""
    problem = _problem(S, N)
    run, compile_s, compiled = gd_step(problem, block, per_call=1)
    losses, times = [], []
    for _ in range(steps):
        t = time.perf_counter()
        losses.append(run())
        times.append(time.perf_counter() - t)
    ma = compiled.memory_analysis()
    xla = None
    if ma is not None:
        xla = {k: getattr(ma, k) / 2**30 for k in
               ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
               if hasattr(ma, k)}
    return {
        "S": S, "N": N, "block": block, "steps": steps,
        "compile_s": compile_s,
        "first_step_s": times[0], "median_step_s": float(np.median(times[1:] or times)),
        "losses": losses,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "xla_memory_gb": xla,
    }


def big(steps=4, log=print) -> dict:
    """``S = 1e5``, ``N = 1,000`` in fresh processes: checkpointed (``B = 40``) and default."""
    out = {}
    for name, block in (("checkpointed_block_40", 40), ("default", 0)):
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--one", str(BIG["S"]), str(BIG["N"]),
               str(block), str(steps)]
        log(f"  {' '.join(cmd[2:])} ...")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            out[name] = {"status": f"failed (exit {p.returncode})", "stderr": p.stderr[-2000:]}
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["within_2GB"] = r["peak_rss_gb"] <= MEMORY_LIMIT_GB
        out[name] = r
        log(f"    peak RSS {r['peak_rss_gb']:.2f} GB, step {r['median_step_s']:.2f} s, "
            f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    ap.add_argument("--skip-big", action="store_true", help="no S=1e5, N=1,000 memory runs")
    ap.add_argument("--one", nargs=4, type=int, metavar=("S", "N", "BLOCK", "STEPS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    res = sweep(rounds=2 if a.quick else 5, per_round=2 if a.quick else 3)
    for axis in ("S_sweep", "N_sweep"):
        r = res[axis]
        xs = r["S"] if axis == "S_sweep" else r["N"]
        print(f"{axis}: " + ", ".join(f"{x}: {t:.2f} ms" for x, t in zip(xs, r["median_ms"]))
              + f"   log-log slope {r['slope']:.2f}")
        f = r["affine"]
        print(f"  affine fit: {f['fixed_ms']:.3f} ms + {f['per_unit_us']:.4g} us per "
              f"{'sample' if axis == 'S_sweep' else 'layer'} (max relative residual "
              f"{f['max_rel_residual']:.0%}); slope over the three largest {f['slope_top_three']:.2f}")
    if not a.skip_big:
        res["big"] = big(steps=3 if a.quick else 4)
    res["targets"] = {
        "slope_S_in_[0.8,1.2]": 0.8 <= res["S_sweep"]["slope"] <= 1.2,
        "slope_N_in_[0.8,1.2]": 0.8 <= res["N_sweep"]["slope"] <= 1.2,
    }
    if "big" in res and "peak_rss_gb" in res["big"].get("checkpointed_block_40", {}):
        res["targets"]["S=1e5_N=1000_within_2GB"] = res["big"]["checkpointed_block_40"]["within_2GB"]
    print("targets:", json.dumps(res["targets"]))
    from pathlib import Path

    merge_results("scaling", res, Path(a.out))
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
