"""Start-up and compiles: what a small run pays before its first iteration, and what JAX's
persistent compilation cache saves.

    python -m benchmarks.compile            # prints the tables, writes results.json "compile"
    python -m benchmarks.compile --quick    # the ring only, one repeat of the command line

Side by side in one run, every number from fresh processes (nothing compiled in this one):

1. **Compiles.** For gradient descent, MSA, extended MSA and proximal gradient (their defaults;
   on MNIST-1D minibatches of 128, as its training defaults, except for proximal gradient,
   which takes the full batch), on the ring (``problems.make``'s
   defaults: 500 points, 20 layers) and on MNIST-1D (4,000 signals, 32 channels, 8 conv
   layers): the seconds ``solvers.solve`` reports as ``compile_time`` (tracing, lowering and
   XLA's compile of the driver's loop) in a process whose persistent cache directory is empty
   ("first"), then in a second process reading that directory ("cached"). The ratio of
   each solver's first compile to gradient descent's on the same problem is printed beside it.
2. **The command line.** ``controlnet train --problem ring --iters 500`` (wall time of the
   whole process: imports, data, compiles, 500 iterations, pictures, files) with an empty cache
   directory ("cold"), the same command again ("second", reading the cache) and with
   ``--no-compile-cache``; ``--repeats`` rounds, each with a new directory, medians reported.
3. **Imports.** The wall time of ``controlnet train --help`` and of importing ``controlnet``,
   ``solvers``, ``problems`` and ``controlnet_cli`` in fresh processes.

Every number is written with the 1-minute load average beside it: on a shared machine the
ratios (measured in one run) are what compares.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .sweep import RESULTS, merge_results

SOLVERS = ["gd", "msa", "emsa", "pgd"]
PROBLEMS = {"ring": {}, "mnist1d": {"batch_size": 128}}
CLI = ["train", "--problem", "ring", "--iters", "500", "--quiet", "--overwrite"]
IMPORTS = ["controlnet", "solvers", "problems", "controlnet_cli"]

# One fresh process: the problem, the solver, one iteration; prints the driver's compile seconds.
CHILD = """
import json, os, sys
import studies
studies.enable_compile_cache()
import jax
import problems, solvers
name, solver, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
task = problems.make(name)
s = solvers.make_solver(solver, **options)
controls = task.problem.init_controls(jax.random.PRNGKey(0))
result = solvers.solve(s, task.problem, controls, max_iters=1, progress=False)
print(json.dumps({"compile_s": result.info["compile_time"], "load": os.getloadavg()[0]}))
"""


def _env(cache: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    env.pop("CONTROLNET_NO_COMPILE_CACHE", None)
    env["CONTROLNET_COMPILE_CACHE"] = str(cache) if cache is not None else "0"
    return env


def _child_compile(problem: str, solver: str, cache: Path) -> dict:
    options = PROBLEMS[problem] if solver != "pgd" or "batch_size" not in PROBLEMS[problem] else {}
    proc = subprocess.run([sys.executable, "-c", CHILD, problem, solver, json.dumps(options)],
                          capture_output=True, text=True, env=_env(cache), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{solver} on {problem} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compiles(problems: list[str], tmp: Path) -> dict:
    """Per problem and solver: the first and the cached compile seconds (module doc, 1)."""
    out = {}
    for problem in problems:
        rows = {}
        for solver in SOLVERS:
            cache = tmp / f"cache-{problem}-{solver}"
            first = _child_compile(problem, solver, cache)
            cached = _child_compile(problem, solver, cache)
            rows[solver] = {"first_s": first["compile_s"], "cached_s": cached["compile_s"],
                            "load": [first["load"], cached["load"]]}
            print(f"  {problem:8s} {solver:5s} first {first['compile_s']:6.2f} s   cached {cached['compile_s']:6.2f} s"
                  f"   (load {first['load']:.1f}, {cached['load']:.1f})", flush=True)
        for r in rows.values():
            r["first_vs_gd"] = r["first_s"] / rows["gd"]["first_s"]
        out[problem] = rows
    return out


def _wall(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{proc.stderr[-3000:]}")
    return seconds


def command_line(repeats: int, tmp: Path) -> dict:
    """Cold, second and cache-off wall times of ``controlnet train`` (module doc, 2)."""
    runs = {"cold_s": [], "second_s": [], "no_cache_s": [], "load": []}
    for r in range(repeats):
        cache, out = tmp / f"cli-cache-{r}", tmp / f"cli-out-{r}"
        argv = ["-m", "controlnet_cli", *CLI, "--out", str(out)]
        runs["cold_s"].append(_wall(argv, _env(cache)))
        runs["second_s"].append(_wall(argv, _env(cache)))
        runs["no_cache_s"].append(_wall(argv + ["--no-compile-cache"], _env(cache)))
        runs["load"].append(os.getloadavg()[0])
        print(f"  round {r}: cold {runs['cold_s'][-1]:.2f} s, second {runs['second_s'][-1]:.2f} s, "
              f"--no-compile-cache {runs['no_cache_s'][-1]:.2f} s (load {runs['load'][-1]:.1f})", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items() if k != "load"}
    return {"command": "controlnet " + " ".join(CLI[:-2]), "runs": runs, **{f"median_{k}": v for k, v in med.items()},
            "second_vs_cold": med["second_s"] / med["cold_s"], "target_second_vs_cold": 0.4}


def imports(tmp: Path) -> dict:
    """Wall seconds of ``train --help`` and of each package's import, fresh processes (module doc, 3)."""
    env = _env(tmp / "unused")
    res = {"train --help": _wall(["-m", "controlnet_cli", "train", "--help"], env)}
    for m in IMPORTS:
        res[f"import {m}"] = _wall(["-c", f"import {m}"], env)
    res["python alone"] = _wall(["-c", "pass"], env)
    for k, v in res.items():
        print(f"  {k:24s} {v:6.2f} s", flush=True)
    return {"seconds": res, "load": os.getloadavg()[0]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the ring only, one round of the command line")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the command line (default 3)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-save", action="store_true", help="print only")
    a = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="controlnet-compile-bench-") as tmp:
        tmp = Path(tmp)
        print("imports (fresh processes):")
        imp = imports(tmp)
        print("compile seconds of the driver's loop, first (empty cache) and cached (fresh processes):")
        comp = compiles(["ring"] if a.quick else list(PROBLEMS), tmp)
        print(f"the command line: controlnet {' '.join(CLI)}")
        cli = command_line(1 if a.quick else a.repeats, tmp)
    print("first compile against gradient descent's (target for emsa <= 1.5):")
    for problem, rows in comp.items():
        print(f"  {problem:8s} " + "   ".join(f"{s} {r['first_vs_gd']:.2f}" for s, r in rows.items()))
    print(f"second identical command / cold: {cli['second_vs_cold']:.2f} (target <= 0.4); "
          f"--no-compile-cache / cold: {cli['median_no_cache_s'] / cli['median_cold_s']:.2f}")
    load_after = os.getloadavg()[0]
    print(f"load average (1 min) before and after: {load_before:.1f}, {load_after:.1f} on {os.cpu_count()} cores")
    res = {"compiles": comp, "command_line": cli, "imports": imp,
           "solver_options": {p: o for p, o in PROBLEMS.items()}, "target_emsa_vs_gd": 1.5,
           "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                       "load_average_1min": [load_before, load_after]}}
    if not a.no_save:
        merge_results("compile", res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
