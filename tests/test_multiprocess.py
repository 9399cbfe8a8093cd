"""Several processes (``jax.distributed``) training one data-parallel problem equal one device.

Two processes, each with two simulated CPU devices (four in the global mesh), talk through
JAX's CPU collectives (gloo) over localhost: each builds its own half of the rows, the driver
assembles the global arrays (:func:`solvers.sharding.shard_problem`), and gradient descent and
extended MSA run on the four devices. Every process also runs the same solve on one local
device; the histories and final controls must agree to round-off (float64), both processes must
see the same global data (the driver's fingerprint hashes the gathered arrays), and the
checkpoint is written by process 0 alone. A time budget spent on one process only stops both
after the same call.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(r"""
    import json, sys
    pid, nproc, port, ckdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc,
                               process_id=pid, initialization_timeout=120)
    import numpy as np
    import optax
    import problems, solvers
    from solvers.checkpointing import fingerprint
    from solvers.msa import ExtendedMSA
    from solvers.sharding import data_mesh, replicate, shard_problem

    p = problems.make("ring", samples=200, layers=10, test_samples=0).problem
    c0 = p.init_controls(jax.random.PRNGKey(0))
    rows = p.S // nproc
    mine = p.replace_data(p.x[pid * rows:(pid + 1) * rows], p.y[pid * rows:(pid + 1) * rows])
    mesh = data_mesh()
    ps, cs = shard_problem(mine, mesh), replicate(c0, mesh)
    out = {"process": jax.process_index(), "global_devices": len(jax.devices()),
           "local_devices": len(jax.local_devices()), "global_rows": int(ps.x.shape[0]),
           "fingerprint_global": fingerprint(ps)["data_sha256"],
           "fingerprint_single": fingerprint(p)["data_sha256"]}
    for name, solver, iters in [("gd", solvers.GradientDescent(optax.adam(2e-2)), 30),
                                ("emsa", ExtendedMSA(), 10)]:
        with jax.default_device(jax.local_devices()[0]):
            r1 = solvers.solve(solver, p, c0, max_iters=iters, progress=False)
        ck = f"{ckdir}/{name}.ckpt"
        rN = solvers.solve(solver, ps, cs, max_iters=iters, progress=False, checkpoint=ck,
                           checkpoint_every=5)
        l1, lN = r1.history["loss"], rN.history["loss"]
        diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree_util.tree_leaves(r1.controls),
                                 jax.tree_util.tree_leaves(rN.controls))]
        out[name] = {"loss_max_rel_diff": float(np.max(np.abs(l1 - lN) / np.abs(l1))),
                     "controls_max_diff": max(diffs), "loss_drop": float(l1[0] - l1[-1]),
                     "iters": len(lN), "status": rN.status,
                     "devices_of_x": len(ps.x.sharding.device_set)}
    # Each process has its own clock: here process 1's budget is spent at once, process 0's
    # never. They must still stop together (after the first call), or the next call would wait
    # forever for the process that left.
    gd = solvers.GradientDescent(optax.adam(2e-2))
    r = solvers.solve(gd, ps, cs, max_iters=50, max_seconds=1e-9 if pid == 1 else 1e6, progress=False)
    out["budget"] = {"status": r.status, "iters": len(r.history["loss"])}
    print("RESULT " + json.dumps(out), flush=True)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    ckdir = tmp_path_factory.mktemp("ck")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), "2", port, str(ckdir)], env=env,
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert proc.returncode == 0, stderr[-3000:]
        line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1]
        outs.append(json.loads(line[len("RESULT "):]))
    return outs, ckdir


def test_global_mesh_spans_both_processes(two_processes):
    outs, _ = two_processes
    assert [o["process"] for o in outs] == [0, 1]
    for o in outs:
        assert o["global_devices"] == 4 and o["local_devices"] == 2
        assert o["global_rows"] == 200  # each process gave 100 rows
        # The driver hashes the gathered global data: the same on both processes, and the
        # same as the single-process problem's.
        assert o["fingerprint_global"] == o["fingerprint_single"]


@pytest.mark.parametrize("solver", ["gd", "emsa"])
def test_two_processes_equal_one_device(two_processes, solver):
    outs, ckdir = two_processes
    for o in outs:
        r = o[solver]
        assert r["devices_of_x"] == 4 and r["status"] == "max_iters"
        assert r["loss_drop"] > 0
        assert r["loss_max_rel_diff"] < 1e-10, r
        assert r["controls_max_diff"] < 1e-9, r
    assert (ckdir / f"{solver}.ckpt").exists()  # written (by process 0) at the end


def test_a_stop_on_one_process_stops_both_after_the_same_call(two_processes):
    outs, _ = two_processes
    assert [o["budget"] for o in outs] == [{"status": "max_seconds", "iters": 1}] * 2
