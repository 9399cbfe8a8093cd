"""Run specs, runs, sweeps on the serial executor, summaries and the CLI (no Ray here)."""

import fcntl
import json
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import controlnet as cn
import problems
import solvers
import studies
from controlnet_cli.sweep import main as sweep_main
from studies.run import TMP_PREFIX

PROBLEM = {"name": "ring", "samples": 16, "test_samples": 12, "layers": 4}
BASE = {"problem": PROBLEM, "solver": {"name": "gd", "lr": 0.02}, "budget": {"max_iters": 12},
        "precision": "float64"}
SPECS = studies.grid(BASE, {"problem.horizon": [1.0, 2.0], "seed": [0, 1]})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    summary = studies.sweep(SPECS, out, progress=False)
    return out, summary


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_serial_runs_equal_direct_solves(swept):
    out, summary = swept
    assert summary["counts"] == {"max_iters": 4}
    for spec in SPECS:
        task = problems.make("ring", samples=16, test_samples=12, layers=4, horizon=spec["problem"]["horizon"],
                             seed=spec["seed"])
        controls = task.problem.init_controls(jax.random.PRNGKey(spec["seed"]))
        direct = solvers.solve(solvers.GradientDescent(lr=0.02), task.problem, controls, max_iters=12,
                               seed=spec["seed"], test=task.test, progress=False)
        saved = cn.Result.load(studies.run_dir(out, spec))
        assert leaves_equal(saved.controls, direct.controls)  # bitwise, float64
        assert set(saved.history) == set(direct.history)
        for k in ("loss", "accuracy", "grad_norm"):
            assert np.array_equal(saved.history[k], direct.history[k])
        for k in ("loss", "accuracy", "test_accuracy", "test_loss"):
            assert saved.info[k] == direct.info[k]
        assert saved.info["loss"] == next(r["loss"] for r in summary["runs"] if r["run"] == studies.spec_hash(spec))


def test_runs_of_the_same_shapes_compile_once_per_process(swept):
    _, summary = swept
    # four runs, one shape (the horizon is a leaf, the seed only data): the same solver object,
    # so the driver's compiled step is found again after the first run
    times = sorted(r["compile_time"] for r in summary["runs"])
    assert studies.make_solver({"name": "gd", "lr": 0.02}) is studies.make_solver({"lr": 0.02, "name": "gd"})
    assert times[2] < 0.25 * times[3], times


def test_the_compile_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("CONTROLNET_NO_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("CONTROLNET_COMPILE_CACHE", str(tmp_path / "jit"))
    assert studies.compile_cache_dir() == tmp_path / "jit"
    monkeypatch.delenv("CONTROLNET_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert studies.compile_cache_dir() == tmp_path / "controlnet" / "jax"
    monkeypatch.setenv("CONTROLNET_NO_COMPILE_CACHE", "1")
    assert studies.compile_cache_dir() is None and studies.enable_compile_cache() is None


def test_rerun_skips_finished_runs(swept):
    out, _ = swept
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    assert len(stamps) == 4
    outcomes = studies.sweep(SPECS, out, progress=False, summary=False)["outcomes"]
    assert sorted(o.trained for o in outcomes) == [False] * 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    events = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    finished = [e["run"] for e in events if e["event"] == "finished"]
    assert sorted(finished) == sorted(studies.spec_hash(s) for s in SPECS)  # each trained once
    assert sum(e["event"] == "skipped" for e in events) >= 4


def test_result_stores_spec_and_versions(swept):
    out, _ = swept
    saved = cn.Result.load(studies.run_dir(out, SPECS[0]))
    assert saved.spec == studies.normalize(SPECS[0])
    assert studies.spec_hash(saved.spec) == studies.run_dir(out, SPECS[0]).name
    assert set(saved.versions) == {"controlnet", "jax", "jaxlib", "numpy", "python"}
    assert saved.versions["jax"] == jax.__version__


REBUILD = """
import json, sys
import numpy as np
import solvers, studies
from controlnet.predict import predict
run = studies.load_run(sys.argv[1])
ev = solvers.evaluate(run.problem, run.controls, run.test)
labels = np.asarray(predict(run.problem, run.controls, run.test[0]).labels)
print(json.dumps({**ev, "x64": str(run.problem.x.dtype), "correct": int(np.sum(labels == np.asarray(run.test[1]))),
                  "n_test": len(run.test[1])}))
"""


def test_a_run_rebuilds_from_its_folder_in_a_fresh_process(swept):
    out, _ = swept
    folder = studies.run_dir(out, SPECS[3])
    proc = subprocess.run([sys.executable, "-c", REBUILD, str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    info = cn.Result.load(folder).info
    assert got["x64"] == "float64"
    for k in ("loss", "data_loss", "accuracy", "test_loss", "test_accuracy"):
        assert got[k] == info[k], k  # the same problem, data and controls: the same numbers
    assert got["correct"] == round(info["test_accuracy"] * got["n_test"])


@pytest.mark.parametrize("bad, fragment", [
    ({**BASE, "sed": 1}, r"key 'sed': unknown key; a run spec has \['problem'"),
    ({**BASE, "problem": {"name": "rng"}}, r"key 'problem.name': unknown problem 'rng'; choose one of \[.*'ring'"),
    ({**BASE, "problem": {**PROBLEM, "hozizon": 2}}, r"key 'problem.hozizon': problems.make has no option"),
    ({**BASE, "solver": "sgd"}, r"key 'solver.name': unknown solver 'sgd'; choose one of \[.*'gd'"),
    ({**BASE, "solver": {"name": "gd", "lr": -1.0}}, r"key 'solver': GradientDescent lr must be a finite number > 0"),
    ({**BASE, "solver": {"name": "emsa", "rhoo": 1.0}}, r"key 'solver': .*no option 'rhoo'; its options are"),
    ({**BASE, "budget": {"iters": 5}}, r"key 'budget.iters': unknown budget key; choose from \['max_iters'"),
    ({**BASE, "budget": {"max_iters": -5}}, r"key 'budget': max_iters must be an integer >= 0"),
    ({**BASE, "seed": -1}, r"key 'seed': expected an integer >= 0"),
    ({**BASE, "precision": "half"}, r"key 'precision': unknown precision 'half'; choose one of"),
])
def test_a_bad_spec_is_refused_before_any_run_starts(tmp_path, bad, fragment):
    with pytest.raises(ValueError, match=r"spec 1 of the sweep: run spec, " + fragment):
        studies.sweep([SPECS[0], bad], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_the_hash_is_of_the_normalized_spec():
    spelled = {"problem": {"name": "ring", "horizon": 2, "samples": 16, "test_samples": 12, "layers": 4},
               "solver": {"name": "gd", "lr": 0.02}, "budget": {"max_iters": 12}, "precision": "float64"}
    assert studies.spec_hash(spelled) == studies.spec_hash(SPECS[2])  # 2 == 2.0, seed 0 by default
    assert studies.spec_hash(SPECS[0]) != studies.spec_hash(SPECS[1])
    assert len(studies.spec_hash(SPECS[0])) == 16


def test_grid_products_and_zipped_axes():
    specs = studies.grid(BASE, {("problem.horizon", "problem.layers"): [(1.0, 4), (2.0, 8)],
                                "solver": ["gd", "emsa"]})
    assert [(s["problem"]["horizon"], s["problem"]["layers"], s["solver"]) for s in specs] == [
        (1.0, 4, "gd"), (1.0, 4, "emsa"), (2.0, 8, "gd"), (2.0, 8, "emsa")]
    assert BASE["problem"] == PROBLEM and "horizon" not in PROBLEM  # the base is not changed
    with pytest.raises(ValueError, match="axis 'seed' must be a non-empty list"):
        studies.grid(BASE, {"seed": []})
    with pytest.raises(ValueError, match="moves 2 keys together"):
        studies.grid(BASE, {("problem.horizon", "problem.layers"): [1.0]})


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(swept, tmp_path):
    bad = {**BASE, "problem": {**PROBLEM, "samples": 1}}  # problems.make refuses one sample
    out = tmp_path / "out"
    summary = studies.sweep([bad, SPECS[0]], out, progress=False)
    assert summary["counts"] == {"failed": 1, "max_iters": 1}
    failed = json.loads((studies.run_dir(out, bad) / "failed.json").read_text())
    assert failed["error"].startswith("ValueError: ") and "samples" in failed["error"]
    row = next(r for r in summary["runs"] if r["status"] == "failed")
    assert row["error"] == failed["error"]
    again = studies.sweep([bad, SPECS[0]], out, progress=False, summary=False)["outcomes"]
    assert {o.run: o.trained for o in again} == {studies.spec_hash(bad): True, studies.spec_hash(SPECS[0]): False}


def test_a_second_process_waits_for_the_runs_lock_then_skips(swept, tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    h = studies.spec_hash(SPECS[0])
    outcome = {}
    with open(out / "runs" / f".{h}.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another holder of this run's lock
        worker = threading.Thread(target=lambda: outcome.update(first=studies.run(SPECS[0], out)))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not (out / "runs" / h).exists()  # it waits, trains nothing
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    worker.join(120)
    assert outcome["first"].trained and outcome["first"].status == "max_iters"
    assert not studies.run(SPECS[0], out).trained


def test_a_killed_sweep_is_summarized_and_resumed(swept, tmp_path):
    out = tmp_path / "out"
    studies.sweep(SPECS[:1], out, progress=False)
    h = studies.spec_hash(SPECS[1])
    # What a sweep killed during SPECS[1] leaves: the spec listed, a half-written temporary folder.
    (out / "sweep.json").write_text(json.dumps({**json.loads((out / "sweep.json").read_text()),
                                                h: studies.normalize(SPECS[1])}))
    torn = out / "runs" / f"{TMP_PREFIX}{h}-x1"
    torn.mkdir()
    (torn / "controls.npz").write_bytes(b"PK\x03")
    summary = studies.summarize(out)
    assert {r["run"]: r["status"] for r in summary["runs"]} == {studies.spec_hash(SPECS[0]): "max_iters", h: "pending"}
    assert (out / "summary.csv").read_text().count("\n") == 3
    studies.sweep(SPECS[:2], out, progress=False)
    assert not torn.exists()  # the library's own leftover of that run, removed under its lock
    assert cn.Result.load(out / "runs" / h).status == "max_iters"


def test_cli_sweep_and_summarize(swept, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--problem", "ring", "--samples", "16", "--layers", "4", "--horizons", "1,2", "--seeds", "0",
            "--solvers", "gd", "--lr", "0.02", "--iters", "12", "--float64", "--out", str(out), "--serial", "--quiet"]
    assert sweep_main(argv) == 0
    text = capsys.readouterr().out
    assert "2 runs: 2 max_iters" in text and f"wrote {out / 'summary.json'}" in text
    rows = json.loads((out / "summary.json").read_text())["runs"]
    # the CLI's grid is the same specs as the library's (test_samples aside): same hashes and numbers
    assert sorted(r["problem.horizon"] for r in rows) == [1.0, 2.0]
    assert sweep_main(["summarize", str(out)]) == 0
    assert "2 runs: 2 max_iters" in capsys.readouterr().out
    assert sweep_main(["--solvers", "gd,foo", "--out", str(tmp_path / "no"), "--serial"]) == 2
    assert "unknown solver 'foo'" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    assert sweep_main(["summarize", str(tmp_path / "none")]) == 2


def test_without_ray_the_cli_says_what_to_install_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find(name, *a))
    assert sweep_main(["--out", str(tmp_path / "out")]) == 2
    assert "pip install 'controlnet-oc[cluster]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ImportError, match="SerialExecutor"):
        studies.RayExecutor()
