"""The library's studies as sweeps: the depth study and the comparison over seeds."""

import json

import numpy as np
import pytest

import controlnet as cn
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
