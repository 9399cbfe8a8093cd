"""The library's studies as sweeps: the depth study and the comparison over seeds."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import controlnet as cn
import problems
import solvers
import studies
from solvers.depth_study import loglog_slope, train_and_measure

OPTIONS = {"samples": 16, "test_samples": 8}


def test_depth_study_is_a_sweep_with_the_turnpike_summary(tmp_path):
    out = tmp_path / "depth"
    summary = studies.depth_study(out, "ring", horizons=[1.0, 2.0], step=0.5, seeds=[0, 1], max_iters=10,
                                  precision="float64", problem_options=OPTIONS, progress=False)
    assert sorted(summary["seeds"]) == ["0", "1"]
    for seed, study in summary["seeds"].items():
        runs = study["runs"]
        assert [(r["T"], r["N"]) for r in runs] == [(1.0, 2), (2.0, 4)]
        assert study["slope"] == loglog_slope([1.0, 2.0], [r["training_error"] for r in runs])
        # the numbers are train_and_measure's on the run's trained controls
        spec = next(s for s in studies.depth_specs("ring", [1.0, 2.0], step=0.5, seeds=[int(seed)], max_iters=10,
                                                   precision="float64", problem_options=OPTIONS)
                    if s["problem"]["horizon"] == 2.0)
        loaded = studies.load_run(studies.run_dir(out, spec))
        direct = train_and_measure(loaded.problem, studies.make_solver(spec["solver"]), max_iters=0,
                                   controls=loaded.controls, eps=0.1)
        assert runs[1]["theta_norm"] == direct["theta_norm"] and runs[1]["mu"] == direct["mu"]
        assert runs[1]["iterations"] == 10 and runs[1]["training_error"] == loaded.result.info["data_loss"]
    assert json.loads((out / "turnpike.json").read_text())["slope_mean"] == pytest.approx(
        np.mean([s["slope"] for s in summary["seeds"].values()]))
    for name in ("error.png", "theta_norm_seed0.png", "speed_seed1.png", "summary.csv"):
        assert (out / name).stat().st_size > 0
    # a second call resumes: nothing is trained again
    before = (out / "journal.jsonl").read_text().count('"finished"')
    studies.depth_study(out, "ring", horizons=[1.0, 2.0], step=0.5, seeds=[0, 1], max_iters=10,
                        precision="float64", problem_options=OPTIONS, progress=False)
    assert (out / "journal.jsonl").read_text().count('"finished"') == before == 4


def test_compare_over_seeds(tmp_path):
    out = tmp_path / "cmp"
    fast = {"name": "gd", "lr": 0.05}
    summary = studies.compare(out, "ring", ["gd", fast], seeds=[0, 1], max_iters=8, precision="float64",
                              problem_options={**OPTIONS, "layers": 3}, progress=False)
    assert list(summary) == ["gd", "gd(lr=0.05)"]
    for label, solver in (("gd", "gd"), ("gd(lr=0.05)", fast)):
        results = [cn.Result.load(studies.run_dir(out, {"problem": {"name": "ring", **OPTIONS, "layers": 3},
                                                        "solver": solver, "seed": seed, "budget": {"max_iters": 8},
                                                        "precision": "float64"})) for seed in (0, 1)]
        losses = [r.info["loss"] for r in results]
        assert summary[label]["loss"] == {"mean": np.mean(losses), "std": np.std(losses), "n": 2}
        assert summary[label]["statuses"] == ["max_iters", "max_iters"]
    # both solvers of a seed start from the same controls: the same initial loss
    first = [cn.Result.load(f).history["loss"][0] for f in sorted((out / "runs").glob("[0-9a-f]*"))]
    assert len(set(first)) == 2
    assert json.loads((out / "compare.json").read_text())["gd"]["loss"]["n"] == 2
    with pytest.raises(ValueError, match="solvers must be distinct"):
        studies.compare(out, "ring", ["gd", "gd"], seeds=[0])


@pytest.mark.slow
def test_the_python_examples_of_docs_sweeps_run_as_written(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "sweeps.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path)
    ns = {}
    for block in blocks:
        exec(compile(block, "sweeps.md", "exec"), ns)
    assert ns["summary"]["counts"] == {"max_iters": 4}
    assert ns["outcome"].status == "max_iters"
    assert ns["labels"].shape == (64,)
    assert sorted(ns["turnpike"]["seeds"]) == ["0", "1"] and ns["table"]["gd"]["loss"]["n"] == 2
    assert not ray_running()


def ray_running():
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


# -- the command line's studies run through the sweep ---------------------------------------------
class _Trained(BaseException):
    """Raised where a run would train: not an Exception, so no failure record swallows it."""


def _no_training(*args, **kwargs):
    raise _Trained


def _cli(argv, capsys):
    from controlnet_cli.app import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_turnpike_rerun_skips_the_finished_runs_and_gives_the_same_summary(tmp_path, capsys, monkeypatch):
    import importlib

    import solvers.depth_study

    run_module = importlib.import_module("studies.run")  # the module; `studies.run` is its function
    out = tmp_path / "tp"
    argv = ["turnpike", "--problem", "ring", "--samples", "8", "--horizons", "0.5,1", "--step", "0.25",
            "--tracking-weight", "0", "--iters", "2", "--float64", "--out", out]
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    first = (out / "summary.json").read_text()
    runs = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))
    assert len(runs) == 2 and json.loads((out / "study.json").read_text()) == {"command": "turnpike"}
    # the run folders hold what the summary says: the trained controls, measured again here
    summary = json.loads(first)
    for r in summary["l2"]["runs"]:
        loaded = studies.load_run(out / "runs" / r["run"])
        assert r["theta_norm"] == solvers.depth_study.measure(loaded.problem, loaded.controls)["theta_norm"]
        assert r["compile_time"] == loaded.result.info["compile_time"] > 0
    # the rerun trains nothing and compiles no solver step: training or solving would raise
    monkeypatch.setattr(run_module, "train", _no_training)
    monkeypatch.setattr(solvers.depth_study, "solve", _no_training)
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("(finished before: 2 iterations in" in line for line in lines), err
    assert (out / "summary.json").read_text() == first
    events = [json.loads(line)["event"] for line in (out / "journal.jsonl").read_text().splitlines()]
    assert events.count("finished") == 2 and events.count("skipped") == 2
    # the generic summary of the runs keeps the command's own summary.json
    code, _, err = _cli(["sweep", "summarize", out], capsys)
    assert code == 0, err
    assert (out / "summary.json").read_text() == first
    assert json.loads((out / "runs_summary.json").read_text())["counts"] == {"max_iters": 2}
    # another command's study is not mixed into this folder without --overwrite
    code, _, err = _cli(["compare", "--problem", "ring", "--samples", "8", "--out", out], capsys)
    assert code == 2 and "holds a study of `controlnet turnpike`; pass --overwrite" in err
    # --overwrite trains every run again, to the same numbers
    monkeypatch.undo()
    code, _, err = _cli(argv + ["--overwrite"], capsys)
    assert code == 0 and "finished before" not in err, err
    events = [json.loads(line)["event"] for line in (out / "journal.jsonl").read_text().splitlines()]
    assert events.count("finished") == 4
    again = json.loads((out / "summary.json").read_text())
    assert [r["theta_norm"] for r in again["l2"]["runs"]] == [r["theta_norm"] for r in summary["l2"]["runs"]]


def test_compare_rerun_skips_the_finished_runs(tmp_path, capsys, monkeypatch):
    import importlib

    run_module = importlib.import_module("studies.run")
    out = tmp_path / "cmp"
    argv = ["compare", "--problem", "ring", "--samples", "8", "--layers", "2", "--solvers", "gd,pgd",
            "--iters", "3", "--float64", "--out", out]
    code, table, err = _cli(argv, capsys)
    assert code == 0, err
    first = json.loads((out / "summary.json").read_text())
    monkeypatch.setattr(run_module, "train", _no_training)
    code, again, err = _cli(argv, capsys)
    assert code == 0 and err.count("(finished before)") == 2, err
    assert json.loads((out / "summary.json").read_text()) == first
    assert again.splitlines()[:4] == table.splitlines()[:4]
    # the numbers are a direct solve's (the run's solver, the command's problem and initial controls)
    task = problems.make("ring", samples=8, layers=2, seed=0)
    controls = task.problem.init_controls(jax.random.PRNGKey(0))
    for folder in (out / "runs").glob("[0-9a-f]*"):
        spec = cn.Result.load(folder).spec
        direct = solvers.solve(studies.make_solver(spec["solver"], 3), task.problem, controls, max_iters=3, seed=0,
                               test=task.test, progress=False)
        assert first[spec["solver"]["name"]]["loss"] == direct.info["loss"]


def test_spec_gd_floor_and_squared_loss():
    spec = {"problem": {"name": "ring", "samples": 8, "layers": 2, "loss": "squared"},
            "solver": {"name": "gd", "lr": 0.1, "schedule": "cosine", "floor": 0.01}, "budget": {"max_iters": 10}}
    solver = studies.make_solver(studies.normalize(spec)["solver"], 10)
    tx = solver.optimizer.build(solver.lr)  # the optax transformation gradient descent runs
    state = tx.init({"w": jnp.zeros(1)})
    updates = {"w": jnp.ones(1)}
    for _ in range(11):  # the 11th step is past the end of the schedule: Adam moves by floor·lr
        step, state = tx.update(updates, state)
    assert float(step["w"][0]) == pytest.approx(-0.1 * 0.01, rel=1e-6)
    built = studies.build(spec)
    assert isinstance(built.task.problem.loss, cn.SquaredError) and built.task.problem.y.shape == (8, 1)
    with pytest.raises(ValueError, match="'problem.loss'.*'squared' regresses"):
        studies.normalize({**spec, "problem": {"name": "digits", "loss": "squared"}})
    with pytest.raises(ValueError, match="floor is the end of the cosine schedule"):
        studies.normalize({**spec, "solver": {"name": "gd", "floor": 0.5}})


def test_robustness_study_as_a_sweep_equals_the_in_process_study(tmp_path):
    from solvers.robustness_study import robustness_study

    small = {"samples": 20, "test_samples": 20, "width": 4, "layers": 4}
    networks = {"resnet": {"name": "two_moons", "dynamics": "inner", **small},
                "lipschitz": {"name": "two_moons", "dynamics": "lipschitz", "integrator": "lie", **small}}
    rows = studies.robustness_study(tmp_path / "rob", networks, [0.0, 0.2], steps=5, max_iters=10,
                                    precision="float64", progress=False)

    def factory():
        tasks = {k: problems.make(v["name"], seed=0, **{o: x for o, x in v.items() if o != "name"})
                 for k, v in networks.items()}
        return {k: (t.problem, t.test) for k, t in tasks.items()}

    direct = robustness_study(factory, studies.make_solver("gd"), [0.0, 0.2], max_iters=10, steps=5)
    for label in networks:
        assert rows[label]["status"] == "max_iters"
        assert {k: v for k, v in rows[label].items() if k not in ("status", "run")} == direct[label]
    assert "certified" in rows["lipschitz"] and "certified" not in rows["resnet"]
    assert json.loads((tmp_path / "rob" / "robustness.json").read_text())["resnet"]["eps"] == [0.0, 0.2]
    with pytest.raises(ValueError, match="radii must be >= 0"):
        studies.robustness_study(tmp_path / "rob2", networks, [-0.1], max_iters=1)
    assert not (tmp_path / "rob2").exists()


def test_depth_specs_at_a_fixed_horizon_vary_the_layers_only():
    specs = studies.depth_specs("ring", [1.0, 2.0, 4.0], step=0.5, fixed_T=3.0, seeds=[0])
    assert [s["problem"]["horizon"] for s in specs] == [3.0, 3.0, 3.0]
    assert [s["problem"]["layers"] for s in specs] == [2, 4, 8]  # N = round(T_j / h)
    assert len({studies.spec_hash(s) for s in specs}) == 3
    with pytest.raises(ValueError, match="fixed_T"):
        studies.depth_specs("ring", [1.0, 2.0], step=0.5, fixed_T=-1.0)
