"""A 12-run sweep on a local Ray with 2 workers against the same runs in a serial loop.

    python -m benchmarks.sweep            # prints the times and ratios, writes results.json "sweep"

The sweep: the ring problem (its defaults: 500 points, 20 layers), ``T = 1, 2, 4, 8`` × seeds
0, 1, 2, gradient descent (Adam, 0.01), 300 iterations, float64. Side by side in one run:

1. a warm-up run in a fresh process, so that JAX's persistent compilation cache holds the
   programs for both contenders alike;
2. the serial loop: ``studies.sweep(specs, executor=SerialExecutor())`` in a fresh process
   (imports and compiles included, as a Ray worker pays them);
3. Ray: ``ray.init(num_cpus=2)`` (timed apart), then ``studies.sweep(specs,
   executor=RayExecutor())``, then ``ray.shutdown()``.

Printed: both wall times, the ratio Ray / serial with Ray's start-up counted and without it
(a cluster already up, as with ``--address``), and whether every run's controls and history are
equal bit for bit between the two folders.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).with_name("results.json")
BASE = {"problem": {"name": "ring"}, "solver": {"name": "gd", "lr": 0.01}, "budget": {"max_iters": 300},
        "precision": "float64"}
HORIZONS, SEEDS = [1.0, 2.0, 4.0, 8.0], [0, 1, 2]
SERIAL = """
import json, sys, time
t0 = time.perf_counter()
import studies
studies.sweep(json.loads(sys.argv[1]), sys.argv[2], progress=False)
print(time.perf_counter() - t0)
"""


def specs(iters: int) -> list[dict]:
    import studies

    return studies.grid({**BASE, "budget": {"max_iters": iters}}, {"problem.horizon": HORIZONS, "seed": SEEDS})


def _serial(runs, out) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", SERIAL, json.dumps(runs), str(out)], capture_output=True, text=True,
                       check=True)
    inner = float(p.stdout.strip().splitlines()[-1])
    return time.perf_counter() - t0, inner


def _ray(runs, out, workers) -> tuple[float, float]:
    import ray

    import studies

    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    started = time.perf_counter() - t0
    try:
        studies.sweep(runs, out, executor=studies.RayExecutor(), progress=False)
    finally:
        ray.shutdown()
    return time.perf_counter() - t0, started


def _equal(a: Path, b: Path, runs) -> bool:
    import controlnet as cn
    import studies

    for spec in runs:
        ra, rb = cn.Result.load(studies.run_dir(a, spec)), cn.Result.load(studies.run_dir(b, spec))
        leaves = zip(jax.tree_util.tree_leaves(ra.controls), jax.tree_util.tree_leaves(rb.controls))
        if ra.status != rb.status or not all(np.array_equal(x, y) for x, y in leaves):
            return False
        if not all(np.array_equal(ra.history[k], rb.history[k]) for k in ("loss", "grad_norm")):
            return False
    return True


def merge_results(key: str, value, path: Path = RESULTS) -> None:
    """Write ``value`` under ``key`` in ``results.json``, keeping the other benchmarks' entries."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-save", action="store_true", help="print only")
    a = ap.parse_args(argv)
    runs = specs(a.iters)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="controlnet-sweep-bench-") as tmp:
        tmp = Path(tmp)
        _serial(runs[:1], tmp / "warmup")
        serial, serial_inner = _serial(runs, tmp / "serial")
        ray_wall, ray_start = _ray(runs, tmp / "ray", a.workers)
        equal = _equal(tmp / "serial", tmp / "ray", runs)
    load_after = os.getloadavg()[0]
    res = {
        "runs": len(runs), "iters": a.iters, "workers": a.workers, "problem": "ring (defaults)",
        "horizons": HORIZONS, "seeds": SEEDS, "precision": "float64",
        "serial_s": serial, "serial_inside_s": serial_inner, "ray_s": ray_wall, "ray_start_s": ray_start,
        "ratio": ray_wall / serial, "ratio_ray_up": (ray_wall - ray_start) / serial,
        "equal_bitwise": equal, "target_ratio": 0.6,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1min": [load_before, load_after]},
    }
    print(f"{len(runs)} runs x {a.iters} iterations (ring, T = {HORIZONS} x seeds {SEEDS}, float64)")
    print(f"serial loop (fresh process) {serial:8.2f} s")
    print(f"Ray, {a.workers} workers        {ray_wall:8.2f} s  (of which ray.init {ray_start:.2f} s)")
    print(f"ratio Ray / serial          {res['ratio']:8.2f}   without Ray's start-up {res['ratio_ray_up']:.2f}"
          f"   (target <= 0.6)")
    print(f"results equal bit for bit: {equal}")
    print(f"load average (1 min) before and after: {load_before:.1f}, {load_after:.1f} on {os.cpu_count()} cores")
    if not a.no_save:
        merge_results("sweep", res, a.out)
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
