"""The direct solve (CasADi + IPOPT) as the reference optimum on small rings.

For each size (samples × layers; ring, width 3, ``σ(Wz+b)`` with ``tanh``, ``T = 5``,
``l2 = 1e-3``, float64): gradient descent (Adam, 1e-2) and, if present, E-MSA (``ρ = 5``) from
the same random controls; then IPOPT warm-started from each of them (multiple shooting), from
gradient descent with single shooting, and cold from the random controls. Printed: final ``J``,
accuracy, iterations, build and solve times, and the relative gap ``(J_solver − J*)/J*`` to the
best direct optimum ``J*``. Times are wall times on whatever machine runs it; compare them only
within one run.

    python benchmarks/direct_reference.py [--sizes 100x10,200x20] [--gd-iters 500] [--msa-iters 100]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import optax  # noqa: E402

import problems  # noqa: E402
import solvers  # noqa: E402
from solvers.direct import Direct  # noqa: E402


def _row(name, J, acc, iters, build, seconds):
    return {"run": name, "J": J, "accuracy": acc, "iters": iters, "build": build, "seconds": seconds}


def run_size(S, N, gd_iters, msa_iters):
    p = problems.make("ring", samples=S, layers=N, test_samples=0).problem
    c0 = p.init_controls(jax.random.PRNGKey(0))
    rows, starts = [], {}
    gd = solvers.solve(solvers.GradientDescent(optax.adam(1e-2)), p, c0, max_iters=gd_iters, progress=False)
    rows.append(_row(f"gd ({gd_iters} Adam steps)", gd.info["loss"], gd.info["accuracy"], gd.info["iterations"],
                     gd.info["compile_time"], gd.info["wall_time"]))
    starts["gd"] = gd.controls
    try:
        from solvers.msa import ExtendedMSA
    except ImportError:
        ExtendedMSA = None
    if ExtendedMSA is not None:
        em = solvers.solve(ExtendedMSA(rho=5.0), p, c0, max_iters=msa_iters, progress=False)
        rows.append(_row(f"emsa ({msa_iters} its, rho 5)", em.info["loss"], em.info["accuracy"],
                         em.info["iterations"], em.info["compile_time"], em.info["wall_time"]))
        starts["emsa"] = em.controls
    runs = [(f"direct multiple <- {k}", Direct(), c) for k, c in starts.items()]
    runs += [("direct single <- gd", Direct(shooting="single"), starts["gd"]),
             ("direct multiple <- random", Direct(), c0)]
    direct = []
    for name, solver, start in runs:
        t = time.perf_counter()
        r = solvers.solve(solver, p, start, max_iters=3000)
        row = _row(name, r.info["loss"], r.info["accuracy"], r.info["ipopt_iterations"],
                   r.info["compile_time"], r.info["ipopt_time"])
        row["status"] = r.info["ipopt_status"]
        row["total"] = time.perf_counter() - t
        rows.append(row)
        direct.append(r.info["loss"])
    best = min(direct)
    print(f"\nring, {S} points x {N} layers: {Direct().size(p)['variables']:,} variables (multiple "
          f"shooting), {Direct(shooting='single').size(p)['variables']:,} (single)")
    print(f"{'run':30s} {'J':>12s} {'gap to J*':>10s} {'acc':>6s} {'iters':>6s} {'build s':>8s} {'solve s':>8s}  status")
    for r in rows:
        gap = (r["J"] - best) / best
        print(f"{r['run']:30s} {r['J']:12.6g} {gap:10.2%} {r['accuracy']:6.3f} {r['iters']:6d} "
              f"{r['build']:8.2f} {r['seconds']:8.2f}  {r.get('status', '')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100x10,200x20", help="samples x layers, comma-separated")
    ap.add_argument("--gd-iters", type=int, default=500)
    ap.add_argument("--msa-iters", type=int, default=100)
    args = ap.parse_args()
    for size in args.sizes.split(","):
        S, N = (int(v) for v in size.lower().split("x"))
        run_size(S, N, args.gd_iters, args.msa_iters)


if __name__ == "__main__":
    main()
