"""One Adam step of the reference problem, timed side by side against the peers in one run.

Reference problem (``REFERENCE``): the ring, lifted to width 3, 1,000 points, 50 layers,
``T = 5``, ``f(z, θ) = tanh(W z + b)``, forward Euler, L² weight ``1e-3`` on ``θ`` (``h Σ_k ½α‖θ_k‖²``)
and ``1e-3`` on the read-out, logistic loss, Adam with learning rate ``1e-2``, float32. Every
contender computes the same ``J`` (checked: their initial losses agree) and takes the same step:

- ``controlnet``: ``solvers.GradientDescent`` (adjoint gradient), exactly as ``solvers.solve``
  compiles and runs it: calls of ``PER_CALL`` iterations in one device-side loop (what solve
  reaches on this problem), the time per iteration;
- ``controlnet, 1 per call``: the same driver call, one iteration per call (like for like with
  the hand scans below, which take one step per call);
- ``controlnet (autodiff)``: the first with ``gradient="autodiff"``;
- ``jax scan (S,d)``: a minimal hand-written ``lax.scan`` + ``jax.value_and_grad`` + optax Adam,
  states sample-major ``z @ W.T``, as one usually writes it;
- ``jax scan (d,S)``: the same, states feature-major ``W @ z`` (the layout question);
- ``jax scan (d,S), data as args``: the same, with the data passed to the jitted step as
  arguments (as controlnet takes them: one compile serves every data set) instead of closed over
  as compile-time constants; the like-for-like baseline. The 1.1× target is checked against
  the closed-over scan above;
- ``jax scan (d,S), 64 per call``: the closed-over ``(d,S)`` scan, ``PER_CALL`` steps in one
  ``fori_loop`` per call: the hand-written counterpart of the ``controlnet`` row;
- ``diffrax``: ``diffeqsolve`` with fixed-step ``Euler`` (``dt0 = h``), the piecewise-constant
  control looked up by step index, an equinox module, ``eqx.filter_value_and_grad``, three
  ways: as a first attempt writes it (states ``(S, d)``, diffrax's default adjoint, binomial
  checkpointing); as a careful user configures it (states ``(d, S)``,
  ``RecursiveCheckpointAdjoint(checkpoints=N+1)``: every step kept), one step per call; and
  that, ``PER_CALL`` steps in one ``fori_loop`` per call, as controlnet's driver runs;
- ``pytorch``: a plain Python loop over layers, ``torch.optim.Adam``;
- ``torchdiffeq``: ``odeint(method="euler", step_size=h)``, and ``odeint_adjoint`` (its
  continuous adjoint, also Euler).

Protocol: compile (or first step) timed separately; then ``rounds`` rounds, each running
``per_round`` steps of every contender in turn, in an order shuffled every round (interleaved,
so load on the shared machine hits all alike); the median per-step time is reported, with ratios ``t_peer / t_controlnet``
(> 1: controlnet is faster). Results go to ``benchmarks/results.json`` (key ``"peers"``), with
the E-MSA (``benchmarks/msa_cost.py``) and direct-solver (``benchmarks/direct_reference.py``)
numbers when those benchmarks exist.

    python -m benchmarks.peers [--rounds 60] [--per-round 5] [--skip-others]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("results.json")
TORCH_THREADS = 1
# Iterations per compiled call of the "controlnet" row and of the looped hand scan: what
# solvers.solve reaches on the reference problem (calls of up to about CALL_SECONDS).
PER_CALL = 64
#: The rows that are other libraries (the hand-written scans are baselines, not peers), and
#: diffrax at its best: feature-major states, every step kept, looped like the driver.
PEERS = ("diffrax", "pytorch", "torchdiffeq")
DIFFRAX_BEST = f"diffrax (d,S), checkpoints=N+1, {PER_CALL} per call"
REFERENCE = dict(samples=1000, width=3, layers=50, horizon=5.0, l2=1e-3, readout_l2=1e-3, lr=1e-2)


def reference_task(samples=None, layers=None):
    """The reference problem as a ``problems.Task`` (no test split); ``samples``, ``layers``
    change its size, the rest as :data:`REFERENCE`."""
    import problems

    r = REFERENCE
    return problems.make("ring", samples=samples or r["samples"], test_samples=0, width=r["width"],
                         layers=layers or r["layers"], horizon=r["horizon"], l2=r["l2"],
                         readout_l2=r["readout_l2"])


def initial_arrays(problem, seed=0):
    """The controlnet initial controls as numpy arrays ``W (N,d,d), b (N,d), A (1,d), c (1,)``,
    so every contender starts from the same point."""
    import jax

    c = problem.init_controls(jax.random.PRNGKey(seed))
    return {k: np.asarray(v, np.float32) for k, v in
            dict(W=c.theta["W"], b=c.theta["b"], A=c.w["A"], c=c.w["c"]).items()}


# -- contenders: each returns (step() -> loss-like, compile_seconds, initial J) ---------------

def _block(x):
    import jax

    return jax.block_until_ready(x)


def driver_calls(solver, problem, per_call=None, controls=None):
    """The driver's compiled call of ``per_call`` iterations, as ``solvers.solve`` runs it:
    ``(run, compile_s, program)``; ``program()`` compiles the call again ahead of time and returns
    the executable (its ``as_text()`` is the optimized program); ``run()`` takes the iterations (one transfer of all their
    logged numbers) and returns the loss of the first; ``run.steps`` is the count.

    ``per_call=None`` sizes the calls as ``solvers.solve`` does once warm: about
    ``CALL_SECONDS`` of work at the fastest of five timed iterations, at most
    ``MAX_STEPS_PER_CALL``.
    ``controls``: the start (default the problem's ``init_controls`` of key 0).
    """
    import jax

    from solvers.driver import MAX_STEPS_PER_CALL, _call_args, _compile, _next_call, _run_jit, _unpack
    from solvers.protocol import as_argument

    if controls is None:
        controls = problem.init_controls(jax.random.PRNGKey(0))
    state = solver.init(problem, controls, key=jax.random.PRNGKey(0))
    arg = as_argument(solver)
    call, names, compile_s = _compile(arg, problem, state)

    def program():
        return _run_jit.lower(arg, problem, state, *_call_args(1)).compile()
    held = [state]

    def make(n):
        args = _call_args(n)

        def run():
            held[0], rows = call(problem, held[0], *args)
            return _unpack(names, rows)[0][0]["loss"]

        run.steps = n
        return run

    if per_call is None:  # from the fastest of five timed single calls (one can be slowed by load)
        run = make(1)
        run()  # the first execution outside the estimate
        times = []
        for _ in range(5):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        per_call = _next_call(None, MAX_STEPS_PER_CALL, min(times))  # solve's rule, once warm
    return make(per_call), compile_s, program


def controlnet_gd(problem, gradient="adjoint", per_call=1):
    import optax

    import solvers

    gd = solvers.GradientDescent(optax.adam(REFERENCE["lr"]), gradient=gradient)
    return driver_calls(gd, problem, per_call)[:2]


def _hand_loss(feature_major, h, l2, rl2):
    import jax
    import jax.numpy as jnp

    def loss(params, x, y):
        W, b, A, c = params
        if feature_major:  # x: (d, S)
            layer = lambda z, th: (z + h * jnp.tanh(th[0] @ z + th[1][:, None]), None)  # noqa: E731
        else:  # x: (S, d)
            layer = lambda z, th: (z + h * jnp.tanh(z @ th[0].T + th[1]), None)  # noqa: E731
        zN, _ = jax.lax.scan(layer, x, (W, b))
        s = (A @ zN)[0] + c[0] if feature_major else (zN @ A.T)[:, 0] + c[0]
        data = jnp.mean(jax.nn.softplus(s) - y * s)
        return (data + h * 0.5 * l2 * (jnp.sum(W**2) + jnp.sum(b**2))
                + 0.5 * rl2 * (jnp.sum(A**2) + jnp.sum(c**2)))

    return loss


def jax_scan(problem, arrays, feature_major, data_as_args=False, per_call=1):
    import jax
    import jax.numpy as jnp
    import optax

    h = REFERENCE["horizon"] / REFERENCE["layers"]
    loss = _hand_loss(feature_major, h, REFERENCE["l2"], REFERENCE["readout_l2"])
    opt = optax.adam(REFERENCE["lr"])
    x = jnp.asarray(np.asarray(problem.z0()))
    x = x.T if feature_major else x
    y = jnp.asarray(np.asarray(problem.y), jnp.float32)
    params = tuple(jnp.asarray(arrays[k]) for k in "WbAc")

    def one(params, opt_state, data):
        J, g = jax.value_and_grad(loss)(params, *(data if data_as_args else (x, y)))
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, J

    @jax.jit
    def step(params, opt_state, data):
        if per_call == 1:
            return one(params, opt_state, data)

        def body(i, c):  # per_call steps in one fori_loop; J of the first
            p, s, J0 = c
            p, s, J = one(p, s, data)
            return p, s, jnp.where(i == 0, J, J0)

        return jax.lax.fori_loop(0, per_call, body, (params, opt_state, jnp.zeros((), jnp.float32)))

    data = (x, y) if data_as_args else ()
    state = [params, opt.init(params)]
    t0 = time.perf_counter()
    step.lower(*state, data).compile()  # the jit cache keeps it: calls below take jit's fast path
    compile_s = time.perf_counter() - t0

    def run():
        state[0], state[1], J = step(*state, data)
        return _block(J)

    run.steps = per_call
    return run, compile_s


def diffrax_euler(problem, arrays, feature_major=False, checkpoints=None, per_call=1):
    """diffrax's ``diffeqsolve`` with fixed-step Euler, the control looked up by step index.

    ``feature_major``: states ``(d, S)`` (``W @ z``, the layout controlnet's scans use) instead
    of ``(S, d)``; ``checkpoints``: ``RecursiveCheckpointAdjoint(checkpoints=...)`` (``N + 1``
    keeps every step, no recomputation) instead of diffrax's default (binomial checkpointing
    with about ``log N`` checkpoints); ``per_call``: steps per jitted call, in one ``fori_loop``.
    """
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    r = REFERENCE
    N, T = problem.N, float(problem.T)  # any depth; the weights and the optimizer as REFERENCE's
    h = T / N
    adjoint = (diffrax.RecursiveCheckpointAdjoint() if checkpoints is None
               else diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints))

    class Net(eqx.Module):
        W: jax.Array
        b: jax.Array
        A: jax.Array
        c: jax.Array

        def field(self, t, z, args):
            k = jnp.clip(jnp.round(t / h).astype(jnp.int32), 0, N - 1)  # control piecewise constant
            if feature_major:
                return jnp.tanh(self.W[k] @ z + self.b[k][:, None])
            return jnp.tanh(z @ self.W[k].T + self.b[k])

        def __call__(self, z0):
            sol = diffrax.diffeqsolve(diffrax.ODETerm(self.field), diffrax.Euler(), t0=0.0, t1=T,
                                      dt0=h, y0=z0, max_steps=N + 1, adjoint=adjoint,
                                      saveat=diffrax.SaveAt(t1=True))
            zN = sol.ys[-1]
            return (self.A @ zN + self.c[:, None])[0] if feature_major else (zN @ self.A.T + self.c)[:, 0]

    def loss(net, x, y):
        s = net(x)
        data = jnp.mean(jax.nn.softplus(s) - y * s)
        return (data + h * 0.5 * r["l2"] * (jnp.sum(net.W**2) + jnp.sum(net.b**2))
                + 0.5 * r["readout_l2"] * (jnp.sum(net.A**2) + jnp.sum(net.c**2)))

    net = Net(*(jnp.asarray(arrays[k]) for k in "WbAc"))
    x = jnp.asarray(np.asarray(problem.z0()))
    x = x.T if feature_major else x
    y = jnp.asarray(np.asarray(problem.y), jnp.float32)
    opt = optax.adam(r["lr"])

    def one(net, opt_state):
        J, g = eqx.filter_value_and_grad(loss)(net, x, y)
        updates, opt_state = opt.update(g, opt_state, net)
        return eqx.apply_updates(net, updates), opt_state, J

    @eqx.filter_jit
    def step(net, opt_state):
        if per_call == 1:
            return one(net, opt_state)

        def body(i, c):  # per_call steps in one fori_loop; J of the first
            n, s, J0 = c
            n, s, J = one(n, s)
            return n, s, jnp.where(i == 0, J, J0)

        return jax.lax.fori_loop(0, per_call, body, (net, opt_state, jnp.zeros((), jnp.float32)))

    state = [net, opt.init(eqx.filter(net, eqx.is_array))]
    t0 = time.perf_counter()
    _block(step(*state))  # equinox compiles on the first call
    compile_s = time.perf_counter() - t0

    def run():
        state[0], state[1], J = step(*state)
        return _block(J)

    run.steps = per_call
    return run, compile_s


def _torch_setup(problem, arrays):
    import torch

    # One thread: for a problem this small more threads only add contention (measured: with 2
    # threads on the shared 2-core machine a step took ~18x longer than with 1).
    torch.set_num_threads(TORCH_THREADS)

    x = torch.tensor(np.asarray(problem.z0()), dtype=torch.float32)
    y = torch.tensor(np.asarray(problem.y), dtype=torch.float32)
    params = {k: torch.tensor(arrays[k], requires_grad=True) for k in "WbAc"}
    return torch, x, y, params


def _torch_loss(torch, zN, y, params, h):
    r = REFERENCE
    s = (zN @ params["A"].T)[:, 0] + params["c"][0]
    data = torch.mean(torch.nn.functional.softplus(s) - y * s)
    return (data + h * 0.5 * r["l2"] * (params["W"].pow(2).sum() + params["b"].pow(2).sum())
            + 0.5 * r["readout_l2"] * (params["A"].pow(2).sum() + params["c"].pow(2).sum()))


def pytorch_loop(problem, arrays):
    torch, x, y, params = _torch_setup(problem, arrays)
    N = REFERENCE["layers"]
    h = REFERENCE["horizon"] / N
    opt = torch.optim.Adam(params.values(), lr=REFERENCE["lr"])
    W, b = params["W"], params["b"]

    def run():
        opt.zero_grad()
        z = x
        for k in range(N):
            z = z + h * torch.tanh(z @ W[k].T + b[k])
        J = _torch_loss(torch, z, y, params, h)
        J.backward()
        opt.step()
        return J.item()

    t0 = time.perf_counter()
    J0 = run()
    return run, time.perf_counter() - t0, J0


def torchdiffeq_euler(problem, arrays, adjoint):
    import torchdiffeq

    torch, x, y, params = _torch_setup(problem, arrays)
    N, T = REFERENCE["layers"], REFERENCE["horizon"]
    h = T / N

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(params["W"].detach().clone())
            self.b = torch.nn.Parameter(params["b"].detach().clone())

        def forward(self, t, z):
            k = min(max(int(round(float(t) / h)), 0), N - 1)  # control piecewise constant
            return torch.tanh(z @ self.W[k].T + self.b[k])

    field = Field()
    params["W"], params["b"] = field.W, field.b
    opt = torch.optim.Adam(params.values(), lr=REFERENCE["lr"])
    ts = torch.tensor([0.0, T])
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    extra = dict(adjoint_params=tuple(field.parameters())) if adjoint else {}

    def run():
        opt.zero_grad()
        zN = solve(field, x, ts, method="euler", options=dict(step_size=h), **extra)[-1]
        J = _torch_loss(torch, zN, y, params, h)
        J.backward()
        opt.step()
        return J.item()

    t0 = time.perf_counter()
    J0 = run()
    return run, time.perf_counter() - t0, J0


# -- the run ---------------------------------------------------------------------------------

def contenders(problem, arrays, include_peers=True):
    """``{name: thunk}``; a thunk builds the contender and returns ``(run, compile_s[, J0])``;
    ``run()`` takes one step and returns the loss of the incoming iterate."""
    k, N = PER_CALL, REFERENCE["layers"]
    out = {
        "controlnet": lambda: controlnet_gd(problem, per_call=k),
        "controlnet, 1 per call": lambda: controlnet_gd(problem),
        "controlnet (autodiff)": lambda: controlnet_gd(problem, gradient="autodiff", per_call=k),
        "jax scan (S,d)": lambda: jax_scan(problem, arrays, feature_major=False),
        "jax scan (d,S)": lambda: jax_scan(problem, arrays, feature_major=True),
        "jax scan (d,S), data as args": lambda: jax_scan(problem, arrays, True, data_as_args=True),
        f"jax scan (d,S), {k} per call": lambda: jax_scan(problem, arrays, True, per_call=k),
    }
    if include_peers:
        out.update({
            "diffrax (S,d), default adjoint": lambda: diffrax_euler(problem, arrays),
            "diffrax (d,S), checkpoints=N+1": lambda: diffrax_euler(problem, arrays, True, N + 1),
            f"diffrax (d,S), checkpoints=N+1, {k} per call":
                lambda: diffrax_euler(problem, arrays, True, N + 1, per_call=k),
            "pytorch": lambda: pytorch_loop(problem, arrays),
            "torchdiffeq (euler)": lambda: torchdiffeq_euler(problem, arrays, adjoint=False),
            "torchdiffeq (euler, adjoint)": lambda: torchdiffeq_euler(problem, arrays, adjoint=True),
        })
    return out


def time_interleaved(runs: dict, rounds: int, per_round: int, seed: int = 0) -> dict:
    """Per-step wall times (seconds), ``rounds × per_round`` per contender, interleaved.

    The order of the contenders is shuffled every round (seeded): whoever runs right after a
    PyTorch contender pays for the switch (caches, thread pools), and a fixed order would bill
    that to one contender every round.
    """
    times = {name: [] for name in runs}
    rng = np.random.default_rng(seed)
    names = list(runs)
    for _ in range(rounds):
        for name in rng.permutation(names):
            run = runs[name]
            steps = getattr(run, "steps", 1)  # a call of several steps: its time per step
            for _ in range(per_round):
                t = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t) / steps)
    return times


def run_peers(rounds=60, per_round=5, include_peers=True, log=print) -> dict:
    import jax

    task = reference_task()
    problem = task.problem
    arrays = initial_arrays(problem)
    runs, compile_s, first_loss, missing = {}, {}, {}, {}
    for name, make in contenders(problem, arrays, include_peers).items():
        try:
            built = make()
        except ImportError as e:  # a peer not installed: say so, time the rest
            missing[name] = f"not installed ({e.name}); use `make bench`"
            log(f"  {name}: {missing[name]}")
            continue
        if len(built) == 3:  # eager contenders: the timed warm-up step gave J at the start
            run, compile_s[name], first_loss[name] = built
        else:
            run, compile_s[name] = built
            first_loss[name] = float(run())
        runs[name] = run
    times = time_interleaved(runs, rounds, per_round)
    base = float(np.median(times["controlnet"]))
    base10 = float(np.percentile(times["controlnet"], 10))
    table = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        table[name] = {
            "median_ms": 1e3 * med,
            "p10_ms": 1e3 * float(np.percentile(ts, 10)),
            "p90_ms": 1e3 * float(np.percentile(ts, 90)),
            "compile_s": compile_s[name],
            "ratio_to_controlnet": med / base,
            # The fast tail, less sensitive to other jobs on a shared machine.
            "ratio_p10_to_controlnet": float(np.percentile(ts, 10)) / base10,
            # Paired: each round's median against controlnet's in the same round, then the
            # median over rounds; load that drifts over the run cancels in each pair.
            "ratio_paired": paired_ratio(ts, times["controlnet"], rounds, per_round),
            "initial_loss": first_loss[name],
            "steps_timed": len(ts),
        }
    ratio = lambda n: table[n]["ratio_paired"] if n in table else None  # noqa: E731
    peers = [n for n in table if n.startswith(PEERS)]
    best = min(peers, key=lambda n: table[n]["ratio_paired"]) if peers else None
    targets = {
        "gd_le_1.0x_best_peer": None if best is None else table[best]["ratio_paired"] >= 1.0,
        # The moonshot: twice as fast as diffrax configured at its best and looped like the driver.
        "gd_ge_2x_diffrax_best_looped": None if ratio(DIFFRAX_BEST) is None else ratio(DIFFRAX_BEST) >= 2.0,
        "gd_le_1.1x_hand_scan_(S,d)": ratio("jax scan (S,d)") >= 1 / 1.1,
        "gd_le_1.1x_hand_scan_(d,S)": ratio("jax scan (d,S)") >= 1 / 1.1,
        "gd_le_1.1x_hand_scan_(d,S)_data_as_args": ratio("jax scan (d,S), data as args") >= 1 / 1.1,
        # Like for like: one step per call on both sides, and PER_CALL steps per call on both.
        "gd_1_per_call_le_1.1x_hand_scan_(d,S)":
            ratio("jax scan (d,S)") / ratio("controlnet, 1 per call") >= 1 / 1.1,
        f"gd_le_1.1x_hand_scan_(d,S)_{PER_CALL}_per_call": ratio(f"jax scan (d,S), {PER_CALL} per call") >= 1 / 1.1,
        "gd_ge_10x_faster_than_torchdiffeq_euler":
            None if ratio("torchdiffeq (euler)") is None else ratio("torchdiffeq (euler)") >= 10.0,
    }
    return {
        "reference": REFERENCE,
        "protocol": {"rounds": rounds, "per_round": per_round, "statistic": "median per step",
                     "ratio": "t_peer / t_controlnet (> 1: controlnet faster): of the medians, of the 10th "
                              "percentiles, and paired (median over rounds of the ratio of the "
                              "round medians; the targets use it)"},
        "machine": _machine(),
        "steps": table,
        "best_peer": best,
        "best_peer_ratio": None if best is None else table[best]["ratio_paired"],
        "missing": missing,
        "targets": targets,
        "jax_version": jax.__version__,
    }


def paired_ratio(ts, base_ts, rounds: int, per_round: int) -> float:
    """The median over rounds of ``median(ts in round) / median(base_ts in round)``: the load that
    drifts over a run cancels in each pair (the times of :func:`time_interleaved`)."""
    def rounds_median(t):
        return np.median(np.reshape(t, (rounds, per_round)), axis=1)

    return float(np.median(rounds_median(ts) / rounds_median(base_ts)))


def _machine():
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


OTHERS = {  # key: (module, its command-line arguments when it has no run())
    "msa": ("benchmarks.msa_cost", ["--rounds", "20", "--iters", "200"]),
    "direct": ("benchmarks.direct_reference", ["--sizes", "100x10"]),
}

_RUN_ONE = """
import importlib, json, sys
mod = importlib.import_module(sys.argv[1])
print("RESULT-JSON " + json.dumps(mod.run(), default=float))
"""


def run_others(log=print) -> dict:
    """The E-MSA and direct-solver benchmarks of the other modules, when they exist.

    Each runs in its own process (one of them switches JAX to float64 on import): its ``run()``
    if it has one (a JSON-able dict), otherwise its command line, whose printed table is kept
    verbatim. A missing module is recorded as such; a failure does not stop this run.
    """
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = {}
    for key, (module, args) in OTHERS.items():
        if importlib.util.find_spec(module) is None:
            out[key] = {"status": f"{module} does not exist yet"}
            continue
        src = Path(importlib.util.find_spec(module).origin).read_text()
        has_run = "\ndef run(" in src
        cmd = ([sys.executable, "-c", _RUN_ONE, module] if has_run
               else [sys.executable, "-m", module, *args])
        log(f"running {module} {'run()' if has_run else ' '.join(args)} ...")
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        entry = {"command": " ".join(cmd[1:]) if not has_run else f"{module}.run()",
                 "wall_s": time.perf_counter() - t0, "exit": p.returncode}
        lines = p.stdout.splitlines()
        js = [ln for ln in lines if ln.startswith("RESULT-JSON ")]
        if js:
            entry["result"] = json.loads(js[-1][len("RESULT-JSON "):])
        entry["output"] = [ln for ln in lines if not ln.startswith("RESULT-JSON ")]
        if p.returncode:
            entry["stderr"] = p.stderr[-2000:]
        out[key] = entry
    return out


def merge_results(key: str, value, path: Path = RESULTS) -> None:
    """Write ``value`` under ``key`` in ``results.json``, keeping the other benchmarks' entries."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def print_table(res: dict, out=sys.stdout) -> None:
    steps = res["steps"]
    print(f"\nOne Adam step, reference problem ({REFERENCE['samples']} points, width "
          f"{REFERENCE['width']}, {REFERENCE['layers']} layers), median of "
          f"{res['protocol']['rounds'] * res['protocol']['per_round']} interleaved steps:", file=out)
    print(f"{'contender':46s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s} {'compile s':>10s}"
          f" {'x controlnet':>13s} {'x (p10)':>8s} {'x paired':>9s} {'J0':>9s}", file=out)
    for name, r in steps.items():
        print(f"{name:46s} {r['median_ms']:10.3f} {r['p10_ms']:8.3f} {r['p90_ms']:8.3f} "
              f"{r['compile_s']:10.2f} {r['ratio_to_controlnet']:13.2f} {r['ratio_p10_to_controlnet']:8.2f} "
              f"{r['ratio_paired']:9.2f} "
              f"{r['initial_loss']:9.5f}", file=out)
    for name, why in res["missing"].items():
        print(f"{name:46s} {why}", file=out)
    print("targets:", json.dumps(res["targets"]), file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true", help="only the JAX contenders")
    ap.add_argument("--skip-others", action="store_true", help="do not run the MSA/direct benchmarks")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--torch-threads", type=int, default=1)
    a = ap.parse_args(argv)
    global TORCH_THREADS
    TORCH_THREADS = a.torch_threads
    res = run_peers(a.rounds, a.per_round, include_peers=not a.no_peers)
    print_table(res)
    merge_results("peers", res, a.out)
    if not a.skip_others:
        for key, value in run_others().items():
            merge_results(key, value, a.out)
            body = "\n".join(value.get("output", [])) or value  # the module's own tables
            print(f"\n{key} ({value.get('command', '')}):\n{body}")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
