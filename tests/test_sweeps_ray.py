"""Sweeps on Ray: a local Ray in the fast suite; two nodes, killed workers and a killed driver in
the slow one. Every test starts and stops its own Ray, on the loopback address."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import controlnet as cn
import studies
from studies.run import TMP_PREFIX
from ray_nodes import RayNodes

ray = pytest.importorskip("ray")

PROBLEM = {"name": "ring", "samples": 16, "test_samples": 12, "layers": 4}
BASE = {"problem": PROBLEM, "solver": {"name": "gd", "lr": 0.02}, "budget": {"max_iters": 12},
        "precision": "float64"}
SPECS = studies.grid(BASE, {"problem.horizon": [1.0, 2.0], "seed": [0, 1]})
#: Results compared between sweeps: everything but the clock.
COMPARED = ("run", "status", "problem.horizon", "seed", "solver.name") + tuple(
    m for m in studies.summary.METRICS if m not in ("wall_time", "compile_time"))


def results(summary):
    return [{k: r.get(k) for k in COMPARED} for r in summary["runs"]]


def assert_same_runs(out, reference):
    """Every run of ``out`` loads (no torn file) and equals the reference's bit for bit."""
    for folder in sorted((out / "runs").iterdir()):
        if folder.name.startswith("."):
            assert not folder.name.startswith(TMP_PREFIX), f"left over: {folder}"
            continue
        got, want = cn.Result.load(folder), cn.Result.load(reference / "runs" / folder.name)
        for a, b in zip(jax.tree_util.tree_leaves(got.controls), jax.tree_util.tree_leaves(want.controls)):
            assert np.array_equal(a, b), folder.name
        assert np.array_equal(got.history["loss"], want.history["loss"])


def finished_once(out, specs):
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    finished = sorted(e["run"] for e in events if e["event"] == "finished")
    assert finished == sorted(studies.spec_hash(s) for s in specs), "a run trained to completion twice, or never"
    return events


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return out, studies.sweep(SPECS, out, progress=False)


def test_a_local_ray_sweep_equals_the_serial_one(reference, tmp_path):
    out = tmp_path / "ray"
    t0 = time.perf_counter()
    summary = studies.sweep(SPECS, out, executor=studies.RayExecutor(workers=2), progress=False)
    seconds = time.perf_counter() - t0
    assert not ray.is_initialized()  # the executor stopped the Ray it started
    assert results(summary) == results(reference[1])
    assert_same_runs(out, reference[0])
    events = finished_once(out, SPECS)
    assert len({e["pid"] for e in events}) >= 2 and os.getpid() not in {e["pid"] for e in events}  # in workers
    assert seconds < 120


# -- slow: a cluster of two nodes, and faults ------------------------------------------------------
LONG = studies.grid({**BASE, "budget": {"max_iters": 20000}},
                    {"problem.horizon": [1.0, 2.0, 3.0, 4.0], "seed": [0, 1, 2]})


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial_long")
    return out, studies.sweep(LONG, out, progress=False)


@pytest.fixture
def cluster():
    """A head and a worker node started as separate ``ray start`` processes, each with its own
    temp dir (:class:`ray_nodes.RayNodes`); the sweeps join it by address."""
    with RayNodes(nodes=2) as address:
        yield address
        if ray.is_initialized():
            ray.shutdown()


@pytest.mark.slow
def test_two_nodes_joined_by_address_equal_serial(cluster, reference, tmp_path):
    out = tmp_path / "two"
    summary = studies.sweep(SPECS, out, executor=studies.RayExecutor(address=cluster), progress=False)
    assert results(summary) == results(reference[1])
    assert_same_runs(out, reference[0])
    finished_once(out, SPECS)


def _kill_workers(out, kills, stop):
    """SIGKILL, at random moments, the Ray worker processes that are running a run (their pids
    are in the journal's ``started`` lines: processes of the test's own cluster)."""
    rng = random.Random(0)
    while len(kills) < 5 and not stop.is_set():
        time.sleep(rng.uniform(0.1, 0.6))
        path = out / "journal.jsonl"
        if not path.is_file():
            continue
        events = [json.loads(line) for line in path.read_text().splitlines()]
        running = {}
        for e in events:
            if e["event"] == "started":
                running[e["pid"]] = e["run"]
            elif e["event"] in ("finished", "failed"):
                running.pop(e["pid"], None)
        if running:
            pid = rng.choice(sorted(running))
            try:
                os.kill(pid, signal.SIGKILL)
                kills.append((pid, running[pid]))
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_killed_workers_are_retried_to_the_same_summary(cluster, long_reference, tmp_path):
    out = tmp_path / "faults"
    kills, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_workers, args=(out, kills, stop))
    killer.start()
    try:
        summary = studies.sweep(LONG, out, executor=studies.RayExecutor(address=cluster, max_retries=20),
                                progress=False)
    finally:
        stop.set()
        killer.join()
    assert len(kills) >= 5, kills
    assert results(summary) == results(long_reference[1])
    assert_same_runs(out, long_reference[0])
    finished_once(out, LONG)


DRIVER = """
import json, sys
import studies
specs = json.loads(sys.argv[3])
studies.sweep(specs, sys.argv[2], executor=studies.RayExecutor(address=sys.argv[1]), progress=False)
"""


@pytest.mark.slow
def test_a_killed_driver_then_a_rerun_give_the_uninterrupted_summary(cluster, long_reference, tmp_path):
    out = tmp_path / "driver"
    argv = [sys.executable, "-c", DRIVER, cluster, str(out), json.dumps(LONG)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the cluster's (ray_nodes.ENV)
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        journal = out / "journal.jsonl"
        if journal.is_file() and journal.read_text().count('"finished"') >= 3:
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done_before = len(list((out / "runs").glob("[0-9a-f]*/result.json")))
    assert 3 <= done_before < len(LONG)
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert results(studies.summarize(out)) == results(long_reference[1])
    assert_same_runs(out, long_reference[0])
    events = finished_once(out, LONG)
    assert sum(e["event"] == "skipped" for e in events) >= done_before
