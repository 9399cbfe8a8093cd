"""Data-parallel solves over 4 (simulated CPU) devices equal single-device solves to round-off.

XLA fixes the number of host devices at start-up, so the comparison runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (float64). It checks that the data really
are split (each device holds S/4 rows, the controls are whole on every device) and that the
histories and final controls of gradient descent and extended MSA agree with one device's, on
the ring and on a convolutional ResNet (MNIST-1D signals, learned lift; full batch and minibatch).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r"""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import optax
    import problems, solvers
    from solvers.sharding import data_mesh, replicate, shard_problem

    out = {"devices": len(jax.devices())}
    task = problems.make("ring", samples=200, layers=10, test_samples=0)
    p = task.problem
    c0 = p.init_controls(jax.random.PRNGKey(0))
    mesh = data_mesh()
    ps = shard_problem(p, mesh)
    cs = replicate(c0, mesh)
    out["rows_per_device"] = sorted({s.data.shape[0] for s in ps.x.addressable_shards})
    out["x_devices"] = len(ps.x.sharding.device_set)
    out["controls_whole_on_each"] = all(
        s.data.shape == c0.theta["W"].shape for s in cs.theta["W"].addressable_shards)
    try:
        ps_bad = shard_problem(problems.make("ring", samples=202, layers=2, test_samples=0).problem, mesh)
        out["uneven_error"] = None
    except ValueError as e:
        out["uneven_error"] = str(e)

    runs = {"gd": (solvers.GradientDescent(optax.adam(2e-2)), 30)}
    from solvers.msa import ExtendedMSA
    runs["emsa"] = (ExtendedMSA(), 10)
    # A convolutional ResNet on (S, C, L) states with a learned lift: the same sharding.
    conv = problems.make("mnist1d", samples=64, test_samples=0, width=4, layers=3).problem
    cc0 = conv.init_controls(jax.random.PRNGKey(0))
    cases = [(name, p, ps, c0, cs, solver, iters) for name, (solver, iters) in runs.items()]
    cases += [("conv_" + name, conv, shard_problem(conv, mesh), cc0, replicate(cc0, mesh), solver, it)
              for name, (solver, it) in [("gd", (solvers.GradientDescent(optax.adam(1e-2)), 10)),
                                          ("emsa", (ExtendedMSA(inner_optimizer=optax.adam(1e-2)), 5)),
                                          ("gd_minibatch", (solvers.GradientDescent(optax.adam(1e-2), batch_size=32), 10))]]
    for name, p, ps, c0, cs, solver, iters in cases:
        r1 = solvers.solve(solver, p, c0, max_iters=iters, seed=0)
        r4 = solvers.solve(solver, ps, cs, max_iters=iters, seed=0)
        l1, l4 = r1.history["loss"], r4.history["loss"]
        diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree_util.tree_leaves(r1.controls), jax.tree_util.tree_leaves(r4.controls))]
        scale = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree_util.tree_leaves(r1.controls))
        out[name] = {"loss_max_rel_diff": float(np.max(np.abs(l1 - l4) / np.abs(l1))),
                     "controls_max_diff": max(diffs), "controls_scale": scale,
                     "loss_drop": float(l1[0] - l1[-1]), "iters": len(l1),
                     "final_x_devices": len(jax.tree_util.tree_leaves(r4.controls.theta)[0].sharding.device_set)}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded_run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_data_are_split_and_controls_replicated(sharded_run):
    r = sharded_run
    assert r["devices"] == 4
    assert r["x_devices"] == 4 and r["rows_per_device"] == [50]
    assert r["controls_whole_on_each"]
    assert r["uneven_error"] and "multiple of 4" in r["uneven_error"]


@pytest.mark.parametrize("solver", ["gd", "emsa", "conv_gd", "conv_emsa", "conv_gd_minibatch"])
def test_sharded_equals_single_device(sharded_run, solver):
    r = sharded_run[solver]
    assert r["loss_drop"] > 0  # the runs compared actually train
    assert r["final_x_devices"] == 4  # and the sharded one stayed on the 4 devices
    # Only the order of the sums over samples differs: round-off in float64.
    assert r["loss_max_rel_diff"] < 1e-10, r
    assert r["controls_max_diff"] < 1e-9 * max(1.0, r["controls_scale"]), r
