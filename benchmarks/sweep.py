"""A 12-run sweep on Ray with 2 workers against the same runs in a serial loop.

    python -m benchmarks.sweep            # prints the times and ratios, writes results.json "sweep"

The sweep: the ring problem (its defaults: 500 points, 20 layers), ``T = 1, 2, 4, 8`` × seeds
0, 1, 2, gradient descent (Adam, 0.01), 300 iterations, float64; ``--long-iters`` repeats it
with longer runs. Side by side in one run, after a warm-up run that fills JAX's persistent
compilation cache for both contenders alike:

1. serial: one fresh process runs ``studies.sweep(specs, executor=SerialExecutor())`` (imports
   and compiles included, as a Ray worker pays them), then the same specs again into a second
   folder (programs compiled, imports done: "warm");
2. Ray: ``ray.init(num_cpus=2)`` in this process (timed apart), the same two sweeps with
   ``RayExecutor()`` (it uses the Ray already up: the first sweep's workers start fresh, the
   second's are the same processes, programs compiled), then ``ray.shutdown()`` (timed apart).

Three ratios Ray / serial are printed: *cold* (a local Ray started and stopped for one sweep, as
``RayExecutor()`` alone does: ``init + first sweep + shutdown`` against the fresh serial process),
*cluster up* (a sweep joining a running Ray, as with ``--address``: its first sweep against the
fresh serial process) and *warm* (second sweeps against each other); and whether every run's
controls and history are equal bit for bit between the serial and the Ray folders. Both
contenders run the sweeps with ``summary=False``: the runs are timed, not the summary and its
figure, which are built the same way from the folders afterwards whichever executor ran them.
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
specs = json.loads(sys.argv[1])
studies.sweep(specs, sys.argv[2] + "/first", progress=False, summary=False)
t1 = time.perf_counter()
studies.sweep(specs, sys.argv[2] + "/second", progress=False, summary=False)
print(t1 - t0, time.perf_counter() - t1)
"""


def specs(iters: int) -> list[dict]:
    import studies

    return studies.grid({**BASE, "budget": {"max_iters": iters}}, {"problem.horizon": HORIZONS, "seed": SEEDS})


def _serial(runs, out) -> tuple[float, float]:
    """(first sweep, second sweep) seconds of one fresh process, the first counting from its start."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", SERIAL, json.dumps(runs), str(out)], capture_output=True, text=True,
                       check=True)
    first, second = map(float, p.stdout.strip().splitlines()[-1].split())
    return time.perf_counter() - t0 - second, second


def _ray(runs, out, workers) -> dict:
    import ray

    import studies

    t = [time.perf_counter()]
    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        t.append(time.perf_counter())
        studies.sweep(runs, out / "first", executor=studies.RayExecutor(), progress=False, summary=False)
        t.append(time.perf_counter())
        studies.sweep(runs, out / "second", executor=studies.RayExecutor(), progress=False, summary=False)
        t.append(time.perf_counter())
    finally:
        ray.shutdown()
    t.append(time.perf_counter())
    init, first, second, shutdown = (b - a for a, b in zip(t, t[1:]))
    return {"init_s": init, "first_s": first, "second_s": second, "shutdown_s": shutdown}


def measure(runs, workers: int) -> dict:
    """Serial and Ray side by side for ``runs``; every time and the three ratios."""
    with tempfile.TemporaryDirectory(prefix="controlnet-sweep-bench-") as tmp:
        tmp = Path(tmp)
        _serial(runs[:1], tmp / "warmup")
        serial_first, serial_second = _serial(runs, tmp / "serial")
        ray_t = _ray(runs, tmp / "ray", workers)
        equal = all(_equal(tmp / "serial" / k, tmp / "ray" / k, runs) for k in ("first", "second"))
    cold = ray_t["init_s"] + ray_t["first_s"] + ray_t["shutdown_s"]
    return {"serial_s": serial_first, "serial_warm_s": serial_second, "ray": ray_t, "ray_cold_s": cold,
            "ratio_cold": cold / serial_first, "ratio_cluster_up": ray_t["first_s"] / serial_first,
            "ratio_warm": ray_t["second_s"] / serial_second, "equal_bitwise": equal}


def _print(res: dict, iters: int) -> None:
    r = res["ray"]
    print(f"{len(HORIZONS) * len(SEEDS)} runs x {iters} iterations (ring, T = {HORIZONS} x seeds {SEEDS}, float64)")
    print(f"  serial, fresh process      {res['serial_s']:7.2f} s   then warm {res['serial_warm_s']:7.2f} s")
    print(f"  Ray: init {r['init_s']:.2f} s, first sweep {r['first_s']:.2f} s, second (warm) {r['second_s']:.2f} s,"
          f" shutdown {r['shutdown_s']:.2f} s")
    print(f"  ratio Ray / serial: cold {res['ratio_cold']:.2f}   cluster up {res['ratio_cluster_up']:.2f}"
          f"   warm {res['ratio_warm']:.2f}   (target <= 0.6)")
    print(f"  results equal bit for bit: {res['equal_bitwise']}")


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
    ap.add_argument("--long-iters", type=int, default=3000, help="the same sweep with longer runs (0: skip)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-save", action="store_true", help="print only")
    a = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    res = {"runs": len(HORIZONS) * len(SEEDS), "iters": a.iters, "workers": a.workers,
           "problem": "ring (defaults)", "horizons": HORIZONS, "seeds": SEEDS, "precision": "float64",
           **measure(specs(a.iters), a.workers), "target_ratio": 0.6}
    _print(res, a.iters)
    if a.long_iters:
        res["long"] = {"iters": a.long_iters, **measure(specs(a.long_iters), a.workers)}
        _print(res["long"], a.long_iters)
    load_after = os.getloadavg()[0]
    res["machine"] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                      "load_average_1min": [load_before, load_after]}
    print(f"load average (1 min) before and after: {load_before:.1f}, {load_after:.1f} on {os.cpu_count()} cores")
    if not a.no_save:
        merge_results("sweep", res, a.out)
    return 0 if res["equal_bitwise"] and res.get("long", res)["equal_bitwise"] else 1


if __name__ == "__main__":
    sys.exit(main())
