"""Cost of one E-MSA iteration against one gradient step, and Li et al.'s ``sin x`` toy regression.

Part 1, the reference problem: the ring lifted to width 3, 1,000 points, 50 layers, ``T = 5``,
``σ(Wz+b)`` with ``tanh``, ``l2 = 1e-3``, float32. Times the iterations, in the driver's
compiled calls (as many per call as ``solvers.solve`` runs, and one per call), of gradient
descent (Adam), of E-MSA with a Newton step per layer (the default here), with 10 and with 3
safeguarded gradient inner steps (``inner="optax"``, closed-form inner gradient), of the 10 with
``jax.grad`` inner gradients (the straightforward version), and of basic MSA. The solvers run
interleaved, round after round, so machine load hits all alike, each for a block of consecutive
calls whose first (cache-cold) call is dropped; the minimum and the median of the per-round
medians are reported, and their ratios to the gradient step (also paired per round) are the
result.

Part 2, Li, Chen, Tai & E (JMLR 2018), toy regression: fit ``sin x`` on ``[−π, π]`` with 20
residual ``tanh`` layers of width 5, ``δ = h = 0.25``; E-MSA with ``ρ = 1`` against Adam, loss
per iteration and time per iteration.

Part 3: iterations and wall time for E-MSA and Adam to reach ``J <= 0.05`` on the reference
problem from the same controls.

    python -m benchmarks.msa_cost [--rounds 30] [--iters 200]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import controlnet as cn
import problems
import solvers
from solvers.msa import MSA, ExtendedMSA


def _timed_steps(named, problem, controls, rounds, per_call=None, block=4):
    """Per solver ``(min, median, paired, per_call)``: seconds of one iteration (min and median
    over rounds of the per-round median), the median over rounds of its ratio to the first
    solver, and the iterations per call.

    Each solver runs through the driver's compiled calls (:func:`benchmarks.peers.driver_calls`),
    ``per_call`` iterations each; default as many as ``solvers.solve`` runs per call (about
    ``CALL_SECONDS`` of work), ``1`` for one iteration per call. Every round runs ``block``
    consecutive calls of each solver in turn, and the first call of each block is dropped: it
    pays for the data the other solvers pushed out of the caches. A solver runs back to back in
    a real solve, so that is the cost to compare; timing single steps in turn instead made the
    (small) gradient step pay that price every time and flattered the others by about 1.5x.
    """
    from benchmarks.peers import driver_calls

    runs = {name: driver_calls(solver, problem, per_call, controls)[0] for name, solver in named.items()}
    per_round = {name: [] for name in named}
    for _ in range(rounds):
        for name, run in runs.items():
            times = []
            for _ in range(block):
                t = time.perf_counter()
                run()
                times.append((time.perf_counter() - t) / run.steps)
            per_round[name].append(float(np.median(times[1:])))
    base = np.asarray(per_round[next(iter(named))])
    return {name: (float(np.min(t)), float(np.median(t)), float(np.median(np.asarray(t) / base)), runs[name].steps)
            for name, t in per_round.items()}


def cost(rounds: int):
    task = problems.make("ring", samples=1000, width=3, layers=50, horizon=5.0, l2=1e-3,
                         dynamics="inner", activation="tanh")
    problem = task.problem
    controls = problem.init_controls(jax.random.PRNGKey(0))
    named = {
        "gd (adam)": solvers.GradientDescent(optax.adam(1e-2)),
        "emsa, 10 inner, closed form": ExtendedMSA(rho=5.0, inner="optax", inner_steps=10),
        "emsa, 3 inner": ExtendedMSA(rho=5.0, inner="optax", inner_steps=3),
        "emsa, newton (default)": ExtendedMSA(rho=5.0),
        "emsa, 10 inner, autodiff": ExtendedMSA(rho=5.0, inner="optax", inner_steps=10, inner_gradient="autodiff"),
        "emsa, 3 inner, autodiff": ExtendedMSA(rho=5.0, inner="optax", inner_steps=3, inner_gradient="autodiff"),
        "msa, 10 inner, closed form": MSA(inner_steps=10),
    }
    print(f"reference problem: ring, width 3, S = {problem.S}, N = {problem.N}, T = {float(problem.T)}, "
          f"tanh, l2 = 1e-3, {jax.numpy.result_type(float).name}; {rounds} interleaved rounds")
    out = {}
    for label, per_call in (("as solvers.solve runs them (calls of ~CALL_SECONDS)", None),
                            ("one iteration per call", 1)):
        med = out[label] = _timed_steps(named, problem, controls, rounds, per_call)
        base = med["gd (adam)"]
        print(f" iterations {label}:")
        print(f"  {'':32s} {'per call':>8s} {'min':>8s} {'median':>8s}   ratio to a gradient step (min, median, paired)")
        for name, (lo, mid, paired, k) in med.items():
            print(f"  {name:32s} {k:8d} {1e3 * lo:6.2f}ms {1e3 * mid:6.2f}ms   {lo / base[0]:5.2f} "
                  f"{mid / base[1]:5.2f} {paired:5.2f}")
        for how in ("closed form", "autodiff"):
            print(f"  one inner step, {how}: {inner_step_cost(med, how):.2f} gradient steps")
    return out


def inner_step_cost(med, how):
    """One inner step's cost in gradient steps: ``(cost(10 inner) − cost(3 inner)) / 7`` from the
    paired ratios of :func:`_timed_steps` (the forward and backward passes, the read-out and the
    acceptance test, common to both, cancel)."""
    ten = med[f"emsa, 10 inner, {how}"][2]
    three = med["emsa, 3 inner" + ("" if how == "closed form" else f", {how}")][2]
    return (ten - three) / 7


def time_to_target(target: float = 0.05, max_iters: int = 3000, repeats: int = 7, seeds=(0, 1, 2)):
    """Iterations and wall time (compile excluded) for E-MSA and Adam to reach ``J <= target``
    on the reference problem, from the same controls, for
    the initial controls of each seed (seed 0 is the reference start).

    Each solve is short (a tenth of a second), so the solvers run ``repeats`` times in turn
    (interleaved, as the step timings) and the median wall time of each is reported, with the
    ratio to Adam's as the ratio of the medians, paired (the median over repeats of the ratio
    within a repeat, which load drifting over the run does not bias) and of the minima; the
    iteration counts do not vary between repeats.
    """
    task = problems.make("ring", samples=1000, width=3, layers=50, horizon=5.0, l2=1e-3,
                         dynamics="inner", activation="tanh")
    problem = task.problem
    runs = {"adam (lr 1e-2)": solvers.GradientDescent(optax.adam(1e-2)),
            "emsa (default: newton)": ExtendedMSA(),
            "emsa, 3 inner": ExtendedMSA(inner="optax"),
            "emsa, 10 inner": ExtendedMSA(inner="optax", inner_steps=10),
            "emsa, 2 inner": ExtendedMSA(inner="optax", inner_steps=2)}
    print(f"\nreference problem, time to J <= {target} (compile excluded), from the same controls, "
          f"median of {repeats} interleaved repeats")
    out = {}
    for seed in seeds:
        controls = problem.init_controls(jax.random.PRNGKey(seed))
        walls = {name: [] for name in runs}
        seen = {}
        for _ in range(repeats):
            for name, solver in runs.items():
                res = solvers.solve(solver, problem, controls, max_iters=max_iters, target_loss=target,
                                    progress=False)
                walls[name].append(float(np.sum(res.history["time"])))
                seen[name] = (res.status, res.info["iterations"])
        print(f" initial controls of seed {seed}:")
        here = out[f"seed {seed}"] = {}
        for name in runs:
            status, its = seen[name]
            here[name] = {"status": status, "iterations": its, "median_s": float(np.median(walls[name])),
                          "min_s": min(walls[name]), "max_s": max(walls[name])}
            print(f"  {name:26s} {status:9s} {its:6d} iterations  {here[name]['median_s']:7.3f} s "
                  f"(min {min(walls[name]):.3f}, max {max(walls[name]):.3f})")
        a = here["adam (lr 1e-2)"]
        adam = np.asarray(walls["adam (lr 1e-2)"])
        for name in list(runs)[1:]:
            e = here[name]
            e["iterations_to_adam"] = e["iterations"] / a["iterations"]
            e["wall_to_adam"] = e["median_s"] / a["median_s"]
            e["wall_to_adam_paired"] = float(np.median(np.asarray(walls[name]) / adam))
            e["wall_to_adam_minima"] = e["min_s"] / a["min_s"]
            print(f"  {name} / Adam: iterations {e['iterations_to_adam']:.2f}x, wall time "
                  f"{e['wall_to_adam']:.2f}x (paired {e['wall_to_adam_paired']:.2f}x, of the minima "
                  f"{e['wall_to_adam_minima']:.2f}x)")
    return out


def sin_problem(samples=200, seed=0):
    """``sin x`` on ``[−π, π]``: 20 residual tanh layers of width 5, ``h = 0.25``, squared error."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (samples, 1))
    return cn.ControlProblem(cn.InnerActivation("tanh"), cn.Euler(), 20, 5, cn.SquaredError(1),
                             x, np.sin(x), T=20 * 0.25, l2=0.0, readout_l2=1e-4)


def sin_regression(iters: int):
    problem = sin_problem()
    controls = problem.init_controls(jax.random.PRNGKey(0))
    runs = {
        "emsa (rho = 1)": ExtendedMSA(rho=1.0),
        "adam (lr 1e-2)": solvers.GradientDescent(optax.adam(1e-2)),
    }
    print(f"\nsin x on [-pi, pi]: S = {problem.S}, 20 residual tanh layers of width 5, h = 0.25")
    marks = [m for m in (0, 10, 25, 50, 100, 200, 500, 1000) if m < iters] + [iters - 1]
    print("  " + " " * 16 + "".join(f"{'it ' + str(m):>10s}" for m in marks) + "   ms/it")
    out = {}
    for name, solver in runs.items():
        res = solvers.solve(solver, problem, controls, max_iters=iters, progress=False)
        loss = res.history["loss"]
        cells = "".join(f"{loss[m]:10.2e}" if m < len(loss) else f"{'-':>10s}" for m in marks)
        ms = 1e3 * float(np.mean(res.history["time"]))
        print(f"  {name:16s}{cells}   {ms:6.2f}  ({res.status})")
        out[name] = {"loss_at": {m: float(loss[m]) for m in marks if m < len(loss)}, "ms_per_iteration": ms,
                     "status": res.status}
    return out


def run(rounds: int = 20, iters: int = 200) -> dict:
    """All three parts, with the E-MSA targets checked (``benchmarks.peers`` stores it)."""
    steps = cost(rounds)
    ttt = time_to_target()
    sin = sin_regression(iters)
    in_solve = steps["as solvers.solve runs them (calls of ~CALL_SECONDS)"]
    targets = {
        # Paired ratio to a gradient step, both as solvers.solve runs them.
        "emsa_iteration_le_4_gd_steps_at_10_inner": in_solve["emsa, 10 inner, closed form"][2] <= 4.0,
        "emsa_newton_iteration_le_4_gd_steps": in_solve["emsa, newton (default)"][2] <= 4.0,
        "autodiff_inner_step_le_2_gd_steps": inner_step_cost(in_solve, "autodiff") <= 2.0,
    }
    for label, emsa in (("emsa", "emsa (default: newton)"), ("emsa_3_inner", "emsa, 3 inner")):
        targets[f"{label}_fewer_iterations_than_adam"] = {
            s: r[emsa]["iterations"] < r["adam (lr 1e-2)"]["iterations"] for s, r in ttt.items()}
        targets[f"{label}_le_2x_adam_wall_time"] = {
            s: r[emsa]["wall_to_adam_paired"] <= 2.0 for s, r in ttt.items()}
    print("targets:", targets)
    per_inner = {how: inner_step_cost(in_solve, how) for how in ("closed form", "autodiff")}
    steps = {label: {name: dict(zip(("min_s", "median_s", "ratio_paired", "per_call"), v))
                     for name, v in tab.items()} for label, tab in steps.items()}
    return {"iteration_cost": steps, "inner_step_in_gd_steps": per_inner, "time_to_target": ttt,
            "sin_regression": sin, "targets": targets}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="timing rounds (default 30)")
    ap.add_argument("--iters", type=int, default=200, help="iterations of the sin x runs (default 200)")
    args = ap.parse_args()
    run(args.rounds, args.iters)
