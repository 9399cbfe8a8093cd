"""``docs/benchmarks.md`` from ``benchmarks/results.json``: the protocol, the machine, the tables.

    python -m benchmarks.report          # rewrites docs/benchmarks.md and README.md's speed table
    python -m benchmarks.report --check  # exit 1 if either is not what it would write

Every number on the page and in the README's table comes from ``results.json``, the last
``make bench`` run (which runs this too); each row says its configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")
PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
README = PAGE.parent.parent / "README.md"
#: The README's speed table sits between these two lines; this module writes it.
BEGIN, END = "<!-- speed table: python -m benchmarks.report -->", "<!-- end of speed table -->"

#: What each row of the reference step is, written beside its number.
CONFIG = {
    "controlnet": "`solve(GradientDescent(optax.adam(1e-2)))`: the adjoint gradient, many steps per device call",
    "controlnet, 1 per call": "controlnet with `solve(steps_per_call=1)`",
    "controlnet (autodiff)": "controlnet with `GradientDescent(gradient=\"autodiff\")`",
    "jax scan (S,d)": "hand-written `lax.scan` + `jax.value_and_grad` + optax, states `(S, d)`, one step per call",
    "jax scan (d,S)": "hand-written `lax.scan` + `jax.value_and_grad` + optax, states `(d, S)`, one step per call",
    "jax scan (d,S), data as args": "hand-written scan, states `(d, S)`, the data passed as arguments, not closed over",
    "diffrax (S,d), default adjoint": "`diffeqsolve(Euler(), dt0=h)`, states `(S, d)`, default `RecursiveCheckpointAdjoint()`",
    "diffrax (d,S), checkpoints=N+1": "`diffeqsolve(Euler(), dt0=h)`, states `(d, S)`, "
                                      "`RecursiveCheckpointAdjoint(checkpoints=N+1)` (every step kept)",
    "pytorch": "a Python loop over the layers, `torch.optim.Adam`, one thread",
    "torchdiffeq (euler)": "`odeint(method=\"euler\", step_size=h)`, one thread",
    "torchdiffeq (euler, adjoint)": "`odeint_adjoint`, Euler, one thread",
}

#: The convolutional rows (``benchmarks/conv_peers.py``), for the README's table.
CONV_CONFIG = {
    "equinox, epoch in one scan": "the same conv ResNet as an `eqx.Module`, layers a `lax.scan`, "
                                  "`eqx.filter_value_and_grad` + optax, the epoch's 32 steps in one call",
    "equinox, step per call": "the same in equinox, one `eqx.filter_jit` call per minibatch",
    "flax.linen, epoch in one scan": "the same as an `nn.Module`, stacked layers scanned, the epoch in one call",
    "hand-written JAX, matmul conv": "the equinox row in plain JAX, the convolution written by hand as controlnet's "
                                     "CPU formulation (windows gathered, one GEMM)",
}


#: What each lever of ``benchmarks/levers.py`` changes (``unroll k`` is described by its name).
LEVER_CONFIG = {
    "controlnet": "the library as it is: one `dot` per layer, each layer rematerialized in the backward scan",
    "multiply-adds": "`W z` as `d` broadcast multiply-adds `Σ_j W[:, j] z[j]` instead of one `dot`",
    "keep residuals": "the forward pass keeps each layer's linearization (`rematerialize = False`)",
}


def _config(name: str) -> str:
    if name in CONFIG:
        return CONFIG[name]
    if name.endswith(" per call"):  # a looped row: the same as its one-call row, in one fori_loop
        base, k = name.rsplit(", ", 1)
        return CONFIG.get(base, base).replace(", one step per call", "") + f"; {k.split()[0]} steps in one " \
            "`fori_loop` per call"
    return ""


def _peers(p) -> list[str]:
    ref = p["reference"]
    lines = [
        "## One gradient step against the peers",
        "",
        f"The reference problem: the ring lifted to width {ref['width']}, {ref['samples']:,} points, "
        f"{ref['layers']} layers, `T = {ref['horizon']}`, `tanh(Wz + b)`, forward Euler, L² weights "
        f"{ref['l2']:g} (controls) and {ref['readout_l2']:g} (read-out), logistic loss, Adam "
        f"{ref['lr']:g}, float32. Every contender computes the same `J` (their initial losses agree "
        "to the digits shown) and takes the same step. Protocol (`benchmarks/peers.py`): compile "
        f"timed apart; then {p['protocol']['rounds']} rounds of {p['protocol']['per_round']} steps of "
        "every contender, in an order shuffled every round; the ratio is paired (each round's "
        "median against controlnet's in the same round, then the median over rounds; > 1: "
        "controlnet is faster).",
        "",
        "| contender | configuration | median ms | time / controlnet's |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, r in p["steps"].items():
        lines.append(f"| {name} | {_config(name)} | {r['median_ms']:.3f} | {r['ratio_paired']:.2f} |")
    for name, why in p.get("missing", {}).items():
        lines.append(f"| {name} | {why} | | |")
    if p.get("best_peer"):
        lines += ["", f"Best peer: **{p['best_peer']}**, {p['best_peer_ratio']:.2f}× controlnet's time."]
    return lines


def _conv(c) -> list[str]:
    lines = [
        "## One epoch of a convolutional ResNet",
        "",
        "`benchmarks/conv_peers.py`. GFLOP/s: the epoch's work (three times the forward pass's "
        "multiply-adds, two flops each) over its median time; the last column is that rate as a "
        "fraction of a float32 `1024 × 1024` matrix product timed in the same rounds.",
    ]
    for name, t in c.get("tasks", {"mnist1d": c}).items():
        lines += ["", f"### {name}", "", f"{t['problem']}. {t['protocol']}.", ""]
        if "matmul_gflops" in t:
            lines += [f"Epoch: {t['epoch_gflop']:.2f} GFLOP; the matrix product ran at {t['matmul_gflops']:.0f} GFLOP/s "
                      f"(load average up to {t['load_average_max'][0]:.1f} during the rounds).", ""]
        lines += ["| contender | epoch s | time / controlnet's | GFLOP/s | of the matmul rate |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for row, r in t["rows"].items():
            rate = f"{r['gflops']:.1f} | {r['fraction_of_matmul']:.0%}" if "gflops" in r else " | "
            lines.append(f"| {row} | {r['epoch_seconds']:.2f} | {r['ratio_vs_controlnet']:.2f} | {rate} |")
        lines += ["", f"Best peer: **{t['best_peer']}**; controlnet takes {t['controlnet_over_best_peer']:.2f}× its time."]
    return lines


def _levers(v) -> list[str]:
    sizes = v["sizes"]
    lines = [
        "## Levers tried for the gradient step (`benchmarks/levers.py`)",
        "",
        f"controlnet's gradient step on the reference problem ({v['per_call']} iterations per call), "
        "compiled once as the library builds it and once with each lever applied, at three sizes; "
        "the best-configured diffrax row beside them. "
        f"{v['protocol']['rounds']} interleaved rounds of {v['protocol']['per_round']} calls per size; "
        "time / controlnet's at each size, below 1 the lever is faster. The library keeps a lever "
        "only if it wins at every size.",
        "",
        "| lever | what it changes | " + " | ".join(sizes) + " |",
        "| --- | --- |" + " ---: |" * len(sizes),
    ]
    names = list(next(iter(sizes.values()))["rows"])
    for name in names:
        cells = " | ".join(f"{s['rows'][name]['ratio_paired']:.2f}" if name in s["rows"] else "" for s in sizes.values())
        lines.append(f"| {name} | {_lever_config(name)} | {cells} |")
    lines += ["", "controlnet's step: " + ", ".join(f"{k} {s['rows']['controlnet']['median_ms']:.2f} ms"
                                                    for k, s in sizes.items()) + "."]
    won = set.intersection(*(set(s["winning"]) for s in sizes.values()))
    lines += ["", f"Levers that win at every size: {', '.join(sorted(won)) or 'none'}."]
    return lines


def _lever_config(name: str) -> str:
    if name.startswith("unroll "):
        return f"the layer scans as `lax.scan(..., unroll={name.split()[1]})`"
    return LEVER_CONFIG.get(name, _config(name))


def _scaling(s) -> list[str]:
    lines = ["## Scaling of the gradient step (`benchmarks/scaling.py`)", ""]
    for key, axis, fixed in (("S_sweep", "S", "N"), ("N_sweep", "N", "S")):
        sw = s[key]
        cells = ", ".join(f"{v:,}: {t:.2f} ms" for v, t in zip(sw[axis], sw["median_ms"]))
        lines.append(f"- over {axis} at {fixed} = {sw[fixed]:,}: {cells}; log-log slope {sw['slope']:.2f}.")
    for name, b in s.get("big", {}).items():
        lines.append(f"- S = {b['S']:,}, N = {b['N']:,}, {name.replace('_', ' ')}: {b['median_step_s']:.2f} s "
                     f"per step, peak RSS {b['peak_rss_gb']:.2f} GB.")
    return lines


def _msa(m) -> list[str]:
    r = m["result"]
    cost = r["iteration_cost"]["as solvers.solve runs them (calls of ~CALL_SECONDS)"]
    lines = [
        "## Extended MSA against gradient descent (`benchmarks/msa_cost.py`)",
        "",
        "Cost of one iteration on the reference problem, in gradient steps (paired ratio, as "
        "`solvers.solve` runs them):",
        "",
        "| iteration | gradient steps |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {v['ratio_paired']:.2f} |" for name, v in cost.items()]
    if "inner_step_in_gd_steps" in r:
        per = r["inner_step_in_gd_steps"]
        lines += ["", "One inner step: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()) + " gradient steps."]
    lines += ["", "Iterations and wall time to `J ≤ 0.05` from the same controls (median of interleaved repeats):",
              "", "| start | solver | iterations | wall time / Adam's |", "| --- | --- | ---: | ---: |"]
    for seed, rows in r["time_to_target"].items():
        for name, v in rows.items():
            ratio = v.get("wall_to_adam_paired")
            lines.append(f"| {seed} | {name} | {v['iterations']} | {'1.00' if ratio is None else f'{ratio:.2f}'} |")
    return lines


def render(results: dict) -> str:
    p = results.get("peers", {})
    machine = p.get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m benchmarks.report` from `benchmarks/results.json`, which `make bench` "
        "rewrites. The peers (diffrax, equinox, flax, torch, torchdiffeq) are installed only in the "
        "benchmark environment (`.venv-bench`), never as dependencies of the library. Machines are "
        "shared and noisy, so every number is a ratio against controlnet measured in the same run.",
        "",
        f"Machine: {machine.get('cpus', '?')} CPUs, {machine.get('platform', '?')}, Python "
        f"{machine.get('python', '?')}, JAX {p.get('jax_version', '?')}.",
        "",
        "Reproduce: `make bench` (the peers, the scaling, the conv epoch), `make bench-inner` (E-MSA's "
        "inner steps against wall time), then `python -m benchmarks.report`.",
        "",
    ]
    for key, section in (("peers", _peers), ("levers", _levers), ("conv", _conv), ("scaling", _scaling),
                         ("msa", _msa)):
        if key in results:
            lines += section(results[key]) + [""]
    return "\n".join(lines)


def readme_table(results: dict) -> str:
    """The README's speed table: controlnet, the best peer row and the looped hand-written scan."""
    p = results["peers"]
    steps = p["steps"]
    rows = [("controlnet", "controlnet")]
    if p.get("best_peer"):
        rows.append((f"{p['best_peer']} (the best peer row)", p["best_peer"]))
    rows += [(n, n) for n in steps if n.startswith("jax scan") and n.endswith("per call")]
    lines = ["| contender | configuration | time / controlnet's |", "| --- | --- | ---: |"]
    lines += [f"| {label} | {_config(name)} | {steps[name]['ratio_paired']:.2f} |" for label, name in rows]
    c = results.get("conv")
    for name, t in (c.get("tasks", {"mnist1d": c}) if c else {}).items():  # the convolutional ResNets' epochs
        if t.get("best_peer"):
            best = t["best_peer"]
            lines.append(f"| {best} ({name} epoch) | {CONV_CONFIG.get(best, best)} | "
                         f"{t['rows'][best]['ratio_vs_controlnet']:.2f} |")
    return "\n".join([BEGIN, *lines, END])


def _with_readme_table(readme: str, table: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md has no speed table between {BEGIN!r} and {END!r}")
    head, rest = readme.split(BEGIN, 1)
    return head + table + rest.split(END, 1)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with docs/benchmarks.md")
    a = ap.parse_args(argv)
    results = json.loads(RESULTS.read_text())
    text = render(results)
    readme = _with_readme_table(README.read_text(), readme_table(results))
    if a.check:
        stale = [f.name for f, want in ((PAGE, text), (README, readme)) if not f.exists() or f.read_text() != want]
        print(("stale: " + ", ".join(stale) + "; run python -m benchmarks.report") if stale else "up to date")
        return 1 if stale else 0
    PAGE.write_text(text)
    README.write_text(readme)
    print(f"wrote {PAGE} and the speed table of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
